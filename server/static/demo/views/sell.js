// List something: the listing first, then each photo through a signed upload URL.
import { busy, CATEGORIES, clear, h, toast } from '../dom.js';

export async function render(root, ctx) {
  const { api } = ctx;
  const form = h('form', { class: 'card form', 'aria-label': 'New listing' },
    h('label', {}, 'Title', h('input', { name: 'title', required: true, maxlength: 100 })),
    h('div', { class: 'two-up' },
      h('label', {}, 'Price (₩)', h('input', { name: 'price', type: 'number', min: 0, step: 100, required: true })),
      h('label', {}, 'Quantity', h('input', { name: 'quantity', type: 'number', min: 1, max: 10000, value: 1, required: true }))),
    h('label', {}, 'Category', h('select', { name: 'category' }, CATEGORIES.map((c) => h('option', { value: c }, c)))),
    h('label', {}, 'Description', h('textarea', { name: 'description', rows: 4, maxlength: 5000 })),
    h('label', {}, 'Photos (PNG, JPEG or WebP)',
      h('input', { name: 'photos', type: 'file', accept: 'image/png,image/jpeg,image/webp', multiple: true })),
    h('p', { class: 'muted small progress', hidden: true }),
    h('button', { type: 'submit', class: 'primary' }, 'List it'));
  const progress = form.querySelector('.progress');

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    busy(form.querySelector('button[type=submit]'), async () => {
      const data = new FormData(form);
      const listing = await api.post('/listings', {
        title: data.get('title'),
        price: Number(data.get('price')),
        quantity: Number(data.get('quantity')),
        category: data.get('category'),
        description: data.get('description'),
      });
      const files = data.getAll('photos').filter((file) => file.size > 0);
      progress.hidden = false;
      for (const [index, file] of files.entries()) {
        progress.textContent = `Uploading photo ${index + 1} of ${files.length}…`;
        try {
          await api.uploadPhoto(listing.id, file);
        } catch (error) {
          toast(`${file.name}: ${error.message}`, 'error');
        }
      }
      toast('Listed!', 'good');
      ctx.navigate(`#/listing/${listing.id}`);
    });
  });

  clear(root, h('div', { class: 'view-head' }, h('h1', {}, 'Sell something')), form);
  return undefined;
}
