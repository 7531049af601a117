// One chat room: messages live on room:{id}, typing and online status from presence frames,
// read markers moved as messages are seen.
import { clear, formatTime, formatWon, h, toast, uuid4 } from '../dom.js';

const TYPING_EVERY_MS = 1000; // the server counts at most two a second

export async function render(root, ctx, roomId) {
  const { api, rt, user } = ctx;
  const messages = new Map(); // id or client_id -> element
  const list = h('ol', { class: 'messages', 'aria-label': 'Messages' });
  const typing = h('p', { class: 'typing muted small', hidden: true });
  const online = h('span', { class: 'presence muted small' });
  let otherRead = 0;
  let lastSeenId = 0;
  let lastTyping = 0;
  let loading = false;
  let other = { nickname: 'them' };

  function bubble(message, pending = false) {
    const mineNow = message.sender_id === user.id;
    const key = message.id ?? message.client_id;
    const el = h('li', {
      class: `message ${mineNow ? 'mine' : 'theirs'} ${pending ? 'pending' : ''}`,
      dataset: { id: message.id ?? '', clientId: message.client_id },
    },
    h('p', { class: 'body' }, message.body),
    h('span', { class: 'meta' }, pending ? 'sending…' : formatTime(message.created_at)));
    messages.set(key, el);
    return el;
  }

  function add(message) {
    if (messages.has(message.id)) return;
    const pending = messages.get(message.client_id);
    const el = bubble(message);
    if (pending) pending.replaceWith(el);
    else list.append(el);
    messages.delete(message.client_id);
    el.scrollIntoView({ block: 'end' });
    if (message.sender_id !== user.id && !loading) markRead(message.id);
    drawRead();
  }

  function drawRead() {
    for (const el of list.querySelectorAll('.message.mine')) {
      el.classList.toggle('read', Number(el.dataset.id) <= otherRead && el.dataset.id !== '');
    }
  }

  function markRead(id) {
    if (id <= lastSeenId || document.hidden) return;
    lastSeenId = id;
    api.post(`/chats/${roomId}/read`, { up_to: id }).then(() => ctx.refreshChatBadge()).catch(() => {});
  }

  function showPresence(frame) {
    const others = frame.typing.filter((id) => id !== user.id);
    typing.hidden = others.length === 0;
    typing.textContent = `${other.nickname} is typing…`;
    online.textContent = frame.online.some((id) => id !== user.id) ? '● online' : '○ away';
    online.classList.toggle('on', frame.online.some((id) => id !== user.id));
  }

  async function loadMessages() {
    const page = await api.get(`/chats/${roomId}/messages?limit=50`);
    loading = true; // one read marker for the whole page, not one per message
    try {
      page.items.slice().reverse().forEach(add);
    } finally {
      loading = false;
    }
    const theirs = page.items.filter((m) => m.sender_id !== user.id).map((m) => m.id);
    if (theirs.length) markRead(Math.max(...theirs));
  }

  const sub = rt.subscribe(`room:${roomId}`, {
    event: (frame) => {
      if (frame.type === 'chat.message') add(frame.data);
      else if (frame.type === 'chat.read' && frame.data.user_id !== user.id) {
        otherRead = Math.max(otherRead, frame.data.up_to);
        drawRead();
      }
    },
    presence: showPresence,
    resync: () => ctx.reloading(loadMessages()),
  });

  const input = h('input', { name: 'body', maxlength: 1000, autocomplete: 'off', placeholder: 'Message', 'aria-label': 'Message' });
  const form = h('form', { class: 'composer' }, input, h('button', { type: 'submit', class: 'primary' }, 'Send'));
  input.addEventListener('input', () => {
    const now = Date.now();
    // A hint over the WebSocket only; on Server-Sent Events the page just does not send it.
    if (now - lastTyping >= TYPING_EVERY_MS && rt.transport === 'websocket' && rt.typing(Number(roomId))) lastTyping = now;
  });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = input.value.trim();
    if (!body) return;
    input.value = '';
    const message = { body, client_id: uuid4(), sender_id: user.id };
    list.append(bubble(message, true));
    try {
      // The client_id makes a retry safe: the server stores it once.
      add(await api.post(`/chats/${roomId}/messages`, { body, client_id: message.client_id }));
    } catch (error) {
      messages.get(message.client_id)?.classList.add('failed');
      toast(`Not sent: ${error.message}`, 'error');
    }
  });

  const title = h('div', { class: 'chat-title' });
  try {
    const rooms = await ctx.refreshChatBadge();
    const room = rooms.find((r) => String(r.id) === String(roomId));
    if (room) {
      other = room.other;
      clear(title, h('strong', {}, other.nickname), ' ', online,
        h('a', { class: 'muted small', href: `#/listing/${room.listing.id}` },
          `${room.listing.title} · ${formatWon(room.listing.price)}`));
    }
    await loadMessages();
  } catch (error) {
    sub.unsubscribe();
    throw error;
  }
  clear(root,
    h('a', { class: 'back', href: '#/chats' }, '← Chats'),
    h('section', { class: 'chat card', dataset: { roomId } }, title, list, typing, form));
  sub.ready.then(loadMessages).catch(() => {});
  const onVisible = () => {
    const last = [...messages.keys()].filter(Number.isInteger).pop();
    if (last) markRead(last);
  };
  document.addEventListener('visibilitychange', onVisible);
  return () => {
    sub.unsubscribe();
    document.removeEventListener('visibilitychange', onVisible);
  };
}
