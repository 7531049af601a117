// The neighbourhood feed: new listings arrive on feed:{region}; each card follows its own
// listing:{id} channel, so price drops, stock and likes change in place.
import { clear, h, REGIONS } from '../dom.js';
import { applyEvent, needsReload, newer, priceLine, statusChip, thumb } from '../listings.js';

let chosenRegion = null; // kept while the tab lives, so coming back shows the same feed

export async function render(root, ctx) {
  const { api, rt } = ctx;
  const region = chosenRegion ?? ctx.user.region;
  const cards = new Map(); // id -> {listing, el, sub}
  const list = h('ul', { class: 'cards', 'aria-label': 'Listings' });
  const more = h('button', { type: 'button', class: 'ghost', hidden: true }, 'Load more');
  let cursor = null;

  function draw(card) {
    const { listing } = card;
    clear(card.el, h('a', { href: `#/listing/${listing.id}` },
      thumb(listing),
      h('div', { class: 'body' },
        h('h3', { class: 'title' }, listing.title),
        priceLine(listing),
        h('p', { class: 'stats' }, statusChip(listing),
          h('span', { class: 'stock' }, `${listing.quantity} left`),
          h('span', { class: 'likes' }, `♥ ${listing.like_count}`)))));
    card.el.classList.toggle('is-sold', listing.status === 'sold');
  }

  const empty = h('li', { class: 'empty muted' }, 'Nothing for sale here yet. Be the first!');
  function showEmpty() {
    if (cards.size) empty.remove();
    else list.append(empty);
  }

  function flash(el) {
    el.classList.remove('changed');
    void el.offsetWidth; // restart the animation
    el.classList.add('changed');
  }

  function forget(id) {
    const card = cards.get(id);
    if (!card) return;
    card.sub.unsubscribe();
    card.el.remove();
    cards.delete(id);
    showEmpty();
  }

  async function reload(id) {
    try {
      put(await api.get(`/listings/${id}`), { flashIt: true });
    } catch (error) {
      if (error.status === 404) forget(id); // hidden by its seller
      else throw error;
    }
  }

  function put(listing, { atTop = false, flashIt = false, since } = {}) {
    if (listing.region !== region) return undefined;
    if (listing.status === 'hidden') {
      forget(listing.id);
      return undefined;
    }
    let card = cards.get(listing.id);
    if (!card) {
      card = { listing, el: h('li', { class: 'card listing-card', dataset: { listingId: listing.id } }) };
      cards.set(listing.id, card);
      if (atTop) list.prepend(card.el);
      else list.append(card.el);
      card.sub = rt.subscribe(`listing:${listing.id}`, {
        event: (frame) => {
          const next = applyEvent(card.listing, frame);
          if (next?.status === 'hidden') {
            forget(listing.id);
            return;
          }
          if (next) {
            card.listing = next;
            draw(card);
            flash(card.el);
          }
          if (needsReload(frame)) reload(listing.id).catch(() => {});
        },
        resync: () => ctx.reloading(reload(listing.id)),
      }, { since });
    } else {
      card.listing = newer(card.listing, listing);
    }
    draw(card);
    if (flashIt || atTop) flash(card.el);
    showEmpty();
    return card;
  }

  async function loadPage() {
    const query = new URLSearchParams({ region, limit: '20' });
    if (cursor) query.set('cursor', cursor);
    const path = `/listings?${query}`;
    const page = await api.get(path);
    const fresh = page.items.filter((listing) => !cards.has(listing.id));
    const subscribed = fresh.map((listing) => put(listing)?.sub.ready);
    page.items.forEach((listing) => put(listing));
    // Subscribed after the page was read: read it once more so no change in between is lost.
    Promise.all(subscribed).then(() => api.get(path))
      .then((again) => again.items.forEach((listing) => put(listing))).catch(() => {});
    cursor = page.next_cursor;
    more.hidden = !cursor;
    showEmpty();
  }

  async function reloadAll() {
    cursor = null;
    await loadPage();
  }

  const feedSub = rt.subscribe(`feed:${region}`, {
    event: (frame) => {
      if (frame.type !== 'listing.created') return;
      // Everything on listing:{id} after the creation has a larger offset: resume from it.
      put({ ...frame.data, photos: [] }, { atTop: true, since: frame.offset });
      reload(frame.data.id).catch(() => {});
    },
    resync: () => ctx.reloading(reloadAll()),
  });

  const regions = [...new Set([ctx.user.region, ...REGIONS])];
  const picker = h('select', { 'aria-label': 'Neighbourhood' },
    regions.map((r) => h('option', { value: r, selected: r === region }, r)));
  picker.addEventListener('change', () => {
    chosenRegion = picker.value;
    ctx.navigate('#/feed');
  });
  more.addEventListener('click', () => loadPage().catch(() => {}));

  clear(root,
    h('div', { class: 'view-head' }, h('h1', {}, 'Near you'), picker),
    list, more);
  await loadPage();
  feedSub.ready.then(reloadAll).catch(() => {});

  return () => {
    feedSub.unsubscribe();
    for (const card of cards.values()) card.sub.unsubscribe();
  };
}
