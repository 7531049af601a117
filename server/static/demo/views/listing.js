// One listing: photos, live price, stock and likes; the seller edits price and adds photos,
// anyone else likes, chats with the seller or buys from the wallet.
import { busy, clear, formatWon, h, toast, uuid4 } from '../dom.js';
import { applyEvent, needsReload, newer, priceLine, statusChip, STATUS_LABELS, thumb } from '../listings.js';

function describe({ type, data }) {
  switch (type) {
    case 'listing.price_changed': return `Price ${formatWon(data.old_price)} → ${formatWon(data.price)}`;
    case 'listing.stock_changed': return `Stock ${data.old_quantity} → ${data.quantity}`;
    case 'listing.status_changed': return `Now ${STATUS_LABELS[data.status] ?? data.status}`;
    case 'listing.liked': return `${data.liked ? 'Liked' : 'Unliked'} (♥ ${data.like_count})`;
    case 'listing.updated': return `Updated: ${(data.changed ?? []).join(', ')}`;
    default: return type;
  }
}

export async function render(root, ctx, id) {
  const { api, rt, user } = ctx;
  let listing = null;
  let liked = false;
  const head = h('div', { class: 'listing-head' });
  const gallery = h('div', { class: 'gallery' });
  const actions = h('div', { class: 'actions' });
  const description = h('p', { class: 'description' });
  const activity = h('ul', { class: 'activity', 'aria-label': 'Live activity' });
  const activityBox = h('section', { class: 'card', hidden: true }, h('h2', {}, 'Live activity'), activity);

  const mine = () => listing.seller_id === user.id;

  function draw() {
    clear(gallery, listing.photos.length
      ? listing.photos.map((photo) => h('img', { src: photo.url, alt: listing.title }))
      : thumb(listing, 'thumb large'));
    const likeButton = h('button', { type: 'button', class: `like ${liked ? 'on' : ''}`, 'aria-pressed': String(liked) },
      `♥ ${listing.like_count}`);
    likeButton.addEventListener('click', () => busy(likeButton, async () => {
      await api.request(`/listings/${id}/like`, { method: liked ? 'DELETE' : 'PUT' });
      liked = !liked;
      likeButton.classList.toggle('on', liked);
    }));
    clear(head,
      h('h1', { class: 'title' }, listing.title),
      priceLine(listing),
      h('p', { class: 'stats' }, statusChip(listing),
        h('span', { class: 'stock' }, `${listing.quantity} left`), likeButton),
      h('p', { class: 'muted small' }, `${listing.region} · ${listing.category} · `,
        mine() ? 'your listing' : `seller #${listing.seller_id}`));
    description.textContent = listing.description || 'No description.';
  }

  function log(frame) {
    activity.prepend(h('li', { dataset: { type: frame.type } },
      h('time', {}, new Date(frame.ts).toLocaleTimeString()), ' ', describe(frame)));
    activityBox.hidden = false;
  }

  async function reload() {
    listing = newer(listing, await api.get(`/listings/${id}`));
    draw();
  }

  function sellerActions() {
    const price = h('input', { type: 'number', name: 'price', min: 0, step: 100, value: listing.price, 'aria-label': 'New price' });
    const priceForm = h('form', { class: 'inline' }, price, h('button', { type: 'submit' }, 'Update price'));
    priceForm.addEventListener('submit', (event) => {
      event.preventDefault();
      busy(priceForm.querySelector('button'), async () => {
        const fresh = await api.get(`/listings/${id}`); // its ETag names the version we change
        const updated = await api.request(`/listings/${id}`, {
          method: 'PATCH', body: { price: Number(price.value) }, headers: { 'If-Match': fresh.etag },
        });
        listing = newer(listing, updated);
        draw();
        toast('Price updated', 'good');
      });
    });
    const file = h('input', { type: 'file', accept: 'image/png,image/jpeg,image/webp', 'aria-label': 'Add a photo' });
    file.addEventListener('change', () => busy(file, async () => {
      for (const photo of file.files) await api.uploadPhoto(id, photo);
      file.value = '';
      await reload();
      toast('Photo added', 'good');
    }));
    return [h('h2', {}, 'Manage'), priceForm, h('label', { class: 'file' }, 'Add photo ', file)];
  }

  function buyerActions() {
    const quantity = h('input', { type: 'number', min: 1, max: Math.max(1, listing.quantity), value: 1, 'aria-label': 'Quantity' });
    const buy = h('button', { type: 'button', class: 'primary', disabled: listing.status === 'sold' }, 'Buy now');
    buy.addEventListener('click', () => busy(buy, async () => {
      const order = await api.post(`/listings/${id}/purchase`, { quantity: Number(quantity.value) },
        { 'Idempotency-Key': uuid4() });
      await ctx.refreshWallet();
      toast(`Paid ${formatWon(order.amount)}: order #${order.id}`, 'good');
      ctx.navigate('#/orders');
    }));
    const chat = h('button', { type: 'button' }, 'Chat with seller');
    chat.addEventListener('click', () => busy(chat, async () => {
      const room = await api.post(`/listings/${id}/chats`);
      ctx.navigate(`#/chat/${room.id}`);
    }));
    return [h('div', { class: 'inline' }, quantity, buy), chat];
  }

  const sub = rt.subscribe(`listing:${id}`, {
    event: (frame) => {
      log(frame);
      if (frame.type === 'listing.liked' && frame.data.user_id === user.id) liked = frame.data.liked;
      const next = listing && applyEvent(listing, frame);
      if (next) {
        const soldNow = next.status !== listing.status;
        listing = next;
        draw();
        if (soldNow) clear(actions, mine() ? sellerActions() : buyerActions());
      }
      if (needsReload(frame)) reload().catch(() => {});
    },
    resync: () => ctx.reloading(reload()),
  });

  try {
    listing = await api.get(`/listings/${id}`);
  } catch (error) {
    sub.unsubscribe();
    throw error;
  }
  draw();
  clear(actions, mine() ? sellerActions() : buyerActions());
  clear(root,
    h('a', { class: 'back', href: '#/feed' }, '← Feed'),
    h('article', { class: 'listing', dataset: { listingId: id } },
      gallery, h('div', { class: 'card' }, head, actions), h('section', { class: 'card' }, description), activityBox));
  sub.ready.then(reload).catch(() => {}); // subscribed after the first read: read again
  return () => sub.unsubscribe();
}
