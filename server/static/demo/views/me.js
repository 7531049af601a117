// Who I am, my wallet (top up through the simulated payment provider), and signing out.
import { busy, clear, formatWon, h, toast, uuid4 } from '../dom.js';

const TOP_UPS = [10_000, 100_000, 1_000_000];

export async function render(root, ctx) {
  const { api, bus, user } = ctx;
  const balance = h('p', { class: 'balance' });
  const show = (amount) => {
    balance.textContent = formatWon(amount).replace('Free', '₩0');
  };
  const onWallet = (event) => show(event.detail);
  bus.addEventListener('wallet', onWallet);

  const topUps = TOP_UPS.map((amount) => {
    const button = h('button', { type: 'button' }, `+ ${formatWon(amount)}`);
    button.addEventListener('click', () => busy(button, async () => {
      const wallet = await api.post('/wallet/topup', { amount }, { 'Idempotency-Key': uuid4() });
      show(wallet.balance);
      await ctx.refreshWallet();
      toast('Topped up', 'good');
    }));
    return button;
  });
  const signOut = h('button', { type: 'button', class: 'ghost' }, 'Sign out');
  signOut.addEventListener('click', () => busy(signOut, () => api.logout()));

  clear(root,
    h('div', { class: 'view-head' }, h('h1', {}, user.nickname)),
    h('section', { class: 'card' }, h('p', { class: 'muted' }, `${user.email} · ${user.region}`)),
    h('section', { class: 'card' }, h('h2', {}, 'Wallet'), balance, h('div', { class: 'inline wrap' }, topUps)),
    h('section', { class: 'card' },
      h('p', { class: 'muted small' },
        'This tab keeps its sign-in in sessionStorage (refresh token) and memory (access token): closing the tab signs out.'),
      signOut));
  show(await ctx.refreshWallet());
  return () => bus.removeEventListener('wallet', onWallet);
}
