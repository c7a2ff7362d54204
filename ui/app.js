// The dashboard shell: sign-in, navigation (hash routes, so every page is /ui), sign-out.
import { api, session, ApiError } from './api.js';
import { PAGES, h, setCaller } from './pages.js';

const $ = (id) => document.getElementById(id);

async function signIn(key) {
  session.set(key);
  try {
    const who = await api('GET', '/v1/whoami');
    setCaller(who);
    return who;
  } catch (e) {
    session.clear();
    throw e;
  }
}

function signedOut(message) {
  session.clear();
  setCaller(null);
  $('nav').hidden = true;
  $('signout').hidden = true;
  $('who').textContent = '';
  $('page').replaceChildren();
  $('signin').hidden = false;
  $('signin-error').textContent = message || '';
  $('key').value = '';
  $('key').focus();
}

function signedIn(who) {
  $('signin').hidden = true;
  $('nav').hidden = false;
  $('signout').hidden = false;
  const scope = who.admin ? 'admin' : 'read only';
  $('who').textContent = `${who.key_id || 'loopback'} · ${scope}${who.project ? ` · project ${who.project}` : ''}`;
  document.body.classList.toggle('readonly', !who.admin);
  route();
}

let seq = 0;
async function route() {
  if (!session.key()) return;
  const hash = location.hash.replace(/^#\/?/, '') || 'overview';
  const [name, ...rest] = hash.split('/');
  const arg = rest.length ? decodeURIComponent(rest.join('/')) : null;
  const page = PAGES[name] || PAGES.overview;
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.page === name);
  }
  const mine = ++seq;
  const root = $('page');
  root.replaceChildren(h('p', { class: 'loading' }, 'Loading…'));
  root.dataset.page = name;
  root.dataset.ready = 'false';
  try {
    const content = await page(arg, () => route());
    if (mine !== seq) return;
    root.replaceChildren(content);
  } catch (e) {
    if (mine !== seq) return;
    if (e instanceof ApiError && e.status === 401) {
      signedOut('The key was refused; sign in again.');
      return;
    }
    root.replaceChildren(h('p', { class: 'error', role: 'alert' }, e.message || String(e)));
  }
  root.dataset.ready = 'true';
}

window.addEventListener('hashchange', route);
$('signin').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const key = $('key').value.trim();
  if (!key) return;
  $('signin-error').textContent = '';
  try {
    signedIn(await signIn(key));
  } catch (e) {
    signedOut(e instanceof ApiError && e.status === 401 ? 'That key was not accepted.' :
      e instanceof ApiError && e.status === 403 ? 'That key has neither the read nor the admin scope.' : e.message);
  }
});
$('signout').addEventListener('click', () => {
  signedOut('Signed out.');
  history.replaceState(null, '', '/ui');
});

(async () => {
  if (!session.key()) return signedOut();
  try { signedIn(await signIn(session.key())); } catch { signedOut(); }
})();
