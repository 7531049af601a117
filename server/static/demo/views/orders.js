// Orders I bought and sold; a new sale arrives live on user:{me}.
import { busy, clear, formatTime, formatWon, h } from '../dom.js';

const titles = new Map(); // listing id -> title, read once per tab

async function titleOf(api, listingId) {
  if (!titles.has(listingId)) {
    titles.set(listingId, api.get(`/listings/${listingId}`).then((l) => l.title, () => `Listing #${listingId}`));
  }
  return titles.get(listingId);
}

let role = 'buyer';

export async function render(root, ctx) {
  const { api, bus } = ctx;
  const list = h('ul', { class: 'orders', 'aria-label': 'Orders' });
  const tabs = h('div', { class: 'segmented', role: 'tablist' },
    ['buyer', 'seller'].map((r) => {
      const tab = h('button', { type: 'button', role: 'tab', class: r === role ? 'on' : '', dataset: { role: r } },
        r === 'buyer' ? 'Bought' : 'Sold');
      tab.addEventListener('click', () => {
        role = r;
        ctx.navigate('#/orders');
      });
      return tab;
    }));

  async function act(button, order, verb) {
    await busy(button, async () => {
      await api.post(`/orders/${order.id}/${verb}`);
      await Promise.all([load(), ctx.refreshWallet()]);
    });
  }

  async function row(order) {
    const buttons = [];
    if (order.status === 'paid') {
      if (role === 'buyer') {
        const complete = h('button', { type: 'button', class: 'small' }, 'Received');
        complete.addEventListener('click', () => act(complete, order, 'complete'));
        buttons.push(complete);
      }
      const cancel = h('button', { type: 'button', class: 'small ghost' }, 'Cancel');
      cancel.addEventListener('click', () => act(cancel, order, 'cancel'));
      buttons.push(cancel);
    }
    return h('li', { class: 'card order', dataset: { orderId: order.id, status: order.status } },
      h('div', {},
        h('a', { href: `#/listing/${order.listing_id}` }, await titleOf(api, order.listing_id)),
        h('p', { class: 'muted small' }, `#${order.id} · ${formatTime(order.created_at)} · ×${order.quantity}`)),
      h('div', { class: 'right' },
        h('strong', {}, formatWon(order.amount)),
        h('span', { class: `chip ${order.status}` }, order.status), buttons));
  }

  async function load() {
    const { items } = await api.get(`/orders?role=${role}&limit=50`);
    const rows = await Promise.all(items.map(row));
    clear(list, rows.length ? rows : h('li', { class: 'empty muted' }, role === 'buyer' ? 'Nothing bought yet.' : 'Nothing sold yet.'));
  }

  const onUserEvent = (event) => {
    if (event.detail.type.startsWith('order.')) load().catch(() => {});
  };
  bus.addEventListener('user-event', onUserEvent);
  clear(root, h('div', { class: 'view-head' }, h('h1', {}, 'Orders'), tabs), list);
  await load();
  return () => bus.removeEventListener('user-event', onUserEvent);
}
