// Sign in, sign up, or pick a seeded demo account.
import { busy, clear, h, REGIONS } from '../dom.js';

export async function render(root, ctx) {
  const { api } = ctx;
  const demoList = h('div', { class: 'demo-accounts' }, h('p', { class: 'muted' }, 'Looking for demo accounts…'));

  const enter = (form, work) => async (event) => {
    event.preventDefault();
    const button = form.querySelector('button[type=submit]');
    await busy(button, async () => {
      await work(new FormData(form));
      await ctx.signedIn();
    });
  };

  const login = h('form', { class: 'card form', 'aria-label': 'Log in' },
    h('h2', {}, 'Log in'),
    h('label', {}, 'Email', h('input', { name: 'email', type: 'email', required: true, autocomplete: 'username' })),
    h('label', {}, 'Password', h('input', { name: 'password', type: 'password', required: true, autocomplete: 'current-password' })),
    h('button', { type: 'submit', class: 'primary' }, 'Log in'));
  login.addEventListener('submit', enter(login, (data) => api.login(data.get('email'), data.get('password'))));

  const regionList = h('datalist', { id: 'regions' }, REGIONS.map((region) => h('option', { value: region })));
  const signup = h('form', { class: 'card form', 'aria-label': 'Sign up' },
    h('h2', {}, 'Sign up'),
    h('label', {}, 'Email', h('input', { name: 'email', type: 'email', required: true, autocomplete: 'email' })),
    h('label', {}, 'Password', h('input', { name: 'password', type: 'password', required: true, minlength: 8, autocomplete: 'new-password' })),
    h('label', {}, 'Nickname', h('input', { name: 'nickname', required: true, maxlength: 30 })),
    h('label', {}, 'Neighbourhood',
      h('input', { name: 'region', required: true, list: 'regions', value: REGIONS[0], pattern: '[a-z][a-z0-9\\-]{1,39}' })),
    regionList,
    h('button', { type: 'submit', class: 'primary' }, 'Create account'));
  signup.addEventListener('submit', enter(signup, (data) => api.signup(Object.fromEntries(data))));

  clear(root,
    h('section', { class: 'hero' },
      h('h1', {}, 'Your neighbourhood market, live.'),
      h('p', { class: 'muted' }, 'Prices, stock, likes and chat update the moment they change.')),
    h('section', { class: 'card' }, h('h2', {}, 'Demo accounts'), demoList),
    h('div', { class: 'two-up' }, login, signup));

  try {
    const { password, accounts } = await api.demoAccounts();
    if (!accounts.length) {
      clear(demoList, h('p', { class: 'muted' }, 'None yet: run `jangteo seed` (make run does) to create some.'));
      return;
    }
    clear(demoList, accounts.map((account) => {
      const button = h('button', { type: 'button', class: 'account', dataset: { email: account.email } },
        h('strong', {}, account.nickname), h('span', { class: 'muted' }, account.region));
      button.addEventListener('click', () => busy(button, async () => {
        await api.login(account.email, password);
        await ctx.signedIn();
      }));
      return button;
    }), h('p', { class: 'muted small' }, `Password for all of them: ${password}`));
  } catch {
    clear(demoList, h('p', { class: 'muted' }, 'Demo accounts are not available here.'));
  }
  return undefined;
}
