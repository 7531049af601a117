// The demo app shell: session, router, realtime status, and the app-wide `user:{me}` channel.
import * as api from './api.js';
import { RealtimeClient } from '../clients/js/jangteo.js';
import { clear, formatWon, h, toast } from './dom.js';
import * as auth from './views/auth.js';
import * as feed from './views/feed.js';
import * as listing from './views/listing.js';
import * as sell from './views/sell.js';
import * as orders from './views/orders.js';
import * as chats from './views/chats.js';
import * as chat from './views/chat.js';
import * as me from './views/me.js';

const ROUTES = [
  [/^#\/feed$/, feed, 'feed'],
  [/^#\/listing\/(\d+)$/, listing, 'feed'],
  [/^#\/sell$/, sell, 'sell'],
  [/^#\/orders$/, orders, 'orders'],
  [/^#\/chats$/, chats, 'chats'],
  [/^#\/chat\/(\d+)$/, chat, 'chats'],
  [/^#\/me$/, me, 'me'],
];
const STATE_LABELS = {
  connecting: 'Connecting…',
  live: 'Live',
  'catching-up': 'Catching up…',
  reconnecting: 'Reconnecting…',
  closed: 'Offline',
  offline: 'Offline',
};

const view = document.getElementById('view');
const bus = new EventTarget(); // 'user-event': events of user:{me}; 'wallet': balance changed
const ctx = { api, bus, user: null, rt: null, refreshWallet, refreshChatBadge, navigate, reloading };
let cleanup = null;
let rendering = 0;
let reloads = 0; // reloads after `resync` still running: the page is catching up

function match(hash) {
  for (const [pattern, module, tab] of ROUTES) {
    const found = hash.match(pattern);
    if (found) return { module, tab, params: found.slice(1) };
  }
  return { module: feed, tab: 'feed', params: [] };
}

function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function route() {
  const turn = ++rendering;
  cleanup?.();
  cleanup = null;
  document.getElementById('status').hidden = !ctx.user;
  if (!ctx.user) {
    document.getElementById('tabs').hidden = true;
    cleanup = await auth.render(view, { ...ctx, signedIn });
    return;
  }
  const { module, tab, params } = match(location.hash);
  for (const link of document.querySelectorAll('#tabs a')) {
    link.classList.toggle('active', link.dataset.tab === tab);
  }
  clear(view, h('p', { class: 'muted loading' }, 'Loading…'));
  try {
    const done = await module.render(view, ctx, ...params);
    if (turn === rendering) cleanup = done ?? null;
    else done?.(); // the user moved on while this view was loading
  } catch (error) {
    if (turn === rendering) clear(view, h('p', { class: 'error' }, error.message));
  }
}

async function refreshWallet() {
  const { balance } = await api.get('/wallet');
  const wallet = document.getElementById('wallet');
  wallet.textContent = formatWon(balance).replace('Free', '₩0');
  wallet.hidden = false;
  bus.dispatchEvent(new CustomEvent('wallet', { detail: balance }));
  return balance;
}

async function refreshChatBadge() {
  const { items } = await api.get('/chats?limit=100');
  const unread = items.reduce((sum, room) => sum + room.unread, 0);
  setBadge('chat-badge', unread);
  return items;
}

function setBadge(id, count) {
  const badge = document.getElementById(id);
  badge.textContent = count > 99 ? '99+' : String(count);
  badge.hidden = count === 0;
}

/** A view's reload after `resync`: the status says "Catching up…" until it is done. */
function reloading(promise) {
  reloads += 1;
  showStatus();
  return promise.catch(() => {}).finally(() => {
    reloads -= 1;
    showStatus();
  });
}

function showStatus() {
  const rt = ctx.rt;
  if (!rt) return showState('offline');
  // Live, but a resumed channel is still replaying what it missed, or a reload runs.
  const behind = rt.state === 'live' && (rt.catchingUp || reloads > 0);
  return showState(behind ? 'catching-up' : rt.state, rt.transport);
}

function showState(state, transport = null) {
  const pill = document.getElementById('status');
  pill.dataset.state = state;
  pill.dataset.transport = transport ?? '';
  // Server-Sent Events when WebSockets cannot get through: receiving works the same.
  const via = (state === 'live' || state === 'catching-up') && transport === 'sse' ? ' (SSE)' : '';
  pill.querySelector('.label').textContent = (STATE_LABELS[state] ?? state) + via;
}

function onUserEvent(event) {
  bus.dispatchEvent(new CustomEvent('user-event', { detail: event }));
  if (event.type.startsWith('order.')) {
    refreshWallet().catch(() => {});
    if (event.type === 'order.paid' && event.data.seller_id === ctx.user.id) {
      const badge = document.getElementById('order-badge');
      if (!location.hash.startsWith('#/orders')) setBadge('order-badge', Number(badge.textContent || 0) + 1);
      toast(`New order: ${formatWon(event.data.amount)} (×${event.data.quantity})`, 'good');
    }
  } else if (event.type === 'chat.message' && event.data.sender_id !== ctx.user.id) {
    refreshChatBadge().catch(() => {});
    if (location.hash !== `#/chat/${event.data.room_id}`) toast(`New message: ${event.data.body}`);
  } else if (event.type === 'listing.liked' && event.data.liked) {
    toast(`Someone liked your listing #${event.data.listing_id}`);
  }
}

async function signedIn() {
  ctx.user = await api.get('/me');
  document.getElementById('tabs').hidden = false;
  ctx.rt = new RealtimeClient({ ticket: api.realtimeTicket });
  ctx.rt.addEventListener('state', showStatus);
  ctx.rt.addEventListener('catching-up', showStatus);
  ctx.rt.addEventListener('closed', (e) => {
    if (e.detail.kind === 'sessionEnded') api.forget();
    else if (e.detail.kind === 'fatal') toast(`Realtime stopped: ${e.detail.message}. Tap the status to retry.`, 'error');
  });
  ctx.rt.subscribe(`user:${ctx.user.id}`, {
    event: onUserEvent,
    resync: () => reloading(Promise.all([refreshWallet(), refreshChatBadge()])),
  });
  ctx.rt.connect();
  await Promise.all([refreshWallet(), refreshChatBadge()]).catch(() => {});
  if (!location.hash || location.hash === '#/login') location.hash = '#/feed';
  else route();
}

function signedOut() {
  ctx.rt?.close();
  ctx.rt = null;
  ctx.user = null;
  document.getElementById('wallet').hidden = true;
  showState('offline');
  navigate('#/login');
}

document.getElementById('status').addEventListener('click', () => ctx.rt?.reconnectNow());
window.addEventListener('online', () => ctx.rt?.reconnectNow());
window.addEventListener('hashchange', () => {
  if (location.hash.startsWith('#/orders')) setBadge('order-badge', 0);
  route();
});
api.onSignedOut(signedOut);

if (api.hasSession()) {
  signedIn().catch(() => signedOut());
} else {
  route();
}
