// Chat rooms with their last message and unread count; refreshed live on user:{me}.
import { clear, formatTime, formatWon, h } from '../dom.js';

export async function render(root, ctx) {
  const { bus } = ctx;
  const list = h('ul', { class: 'rooms', 'aria-label': 'Chats' });

  async function load() {
    const rooms = await ctx.refreshChatBadge();
    clear(list, rooms.length
      ? rooms.map((room) => h('li', { class: 'card room', dataset: { roomId: room.id } },
        h('a', { href: `#/chat/${room.id}` },
          h('div', { class: 'room-main' },
            h('strong', {}, room.other.nickname),
            h('span', { class: 'muted small' }, ` · ${room.listing.title} · ${formatWon(room.listing.price)}`),
            h('p', { class: 'preview muted' }, room.last_message?.body ?? 'No messages yet')),
          h('div', { class: 'right' },
            h('span', { class: 'muted small' }, formatTime(room.last_activity_at)),
            room.unread > 0 && h('span', { class: 'badge' }, String(room.unread))))))
      : h('li', { class: 'empty muted' }, 'No chats yet. Open a listing and tap “Chat with seller”.'));
  }

  const onUserEvent = (event) => {
    if (event.detail.type === 'chat.message') load().catch(() => {});
  };
  bus.addEventListener('user-event', onUserEvent);
  clear(root, h('div', { class: 'view-head' }, h('h1', {}, 'Chats')), list);
  await load();
  return () => bus.removeEventListener('user-event', onUserEvent);
}
