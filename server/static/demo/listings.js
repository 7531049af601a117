// Listing state shared by the feed and the listing page: events applied by version.
import { formatWon, h } from './dom.js';

const SNAPSHOT_FIELDS = ['title', 'price', 'quantity', 'category', 'region', 'status', 'like_count', 'version'];
const CATEGORY_ICONS = {
  digital: '📱', appliances: '🔌', furniture: '🪑', kids: '🧸', fashion: '👕', beauty: '💄',
  sports: '🚲', hobby: '🎨', books: '📚', pets: '🐾', plants: '🪴', food: '🍱', tickets: '🎫', etc: '📦',
};
export const STATUS_LABELS = { on_sale: 'On sale', reserved: 'Reserved', sold: 'Sold', hidden: 'Hidden' };

/**
 * The listing after `event`, or null when we already know something as new or newer.
 * Snapshots carry `version`, so a REST reload and a replayed event can arrive in any order.
 */
export function applyEvent(listing, { type, data }) {
  if (type === 'listing.liked') return { ...listing, like_count: data.like_count };
  if (data.version !== undefined && data.version <= listing.version) return null;
  const next = { ...listing };
  for (const field of SNAPSHOT_FIELDS) if (field in data) next[field] = data[field];
  if (type === 'listing.price_changed') next.old_price = data.old_price;
  return next;
}

/** listing.updated for photos carries no URLs (they depend on the storage): reload it. */
export const needsReload = ({ type, data }) => type === 'listing.updated' && (data.changed ?? []).includes('photos');

/** Keep whichever of two listings is newer; a REST copy also brings photos and times. */
export function newer(current, incoming) {
  if (!current) return incoming;
  if (incoming.version < current.version) return current;
  return { ...current, ...incoming, old_price: incoming.old_price ?? current.old_price };
}

export function thumb(listing, className = 'thumb') {
  const photo = listing.photos?.[0];
  return h('div', { class: className },
    photo
      ? h('img', { src: photo.url, alt: listing.title, loading: 'lazy' })
      : h('span', { class: 'placeholder', 'aria-hidden': 'true' }, CATEGORY_ICONS[listing.category] ?? '📦'));
}

export function priceLine(listing) {
  const dropped = listing.old_price !== undefined && listing.old_price > listing.price;
  return h('p', { class: 'price' },
    h('span', { class: 'now' }, formatWon(listing.price)),
    dropped && h('s', { class: 'was' }, formatWon(listing.old_price)),
    dropped && h('span', { class: 'drop' }, `↓ ${Math.round(100 - (100 * listing.price) / listing.old_price)}%`));
}

export function statusChip(listing) {
  return h('span', { class: `chip ${listing.status}` }, STATUS_LABELS[listing.status] ?? listing.status);
}
