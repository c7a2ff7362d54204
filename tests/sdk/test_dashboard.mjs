// The dashboard in headless Chromium (tests/ui.rs starts the gateway with real traffic and
// runs this with a hard timeout). Exits non-zero on any failed check, console error, page
// error, failed request, unexpected HTTP error or a key seen in a URL.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const BASE = process.env.LOOPGATE_URL;
const ADMIN_KEY = process.env.LOOPGATE_ADMIN_KEY;
const READ_KEY = process.env.LOOPGATE_READ_KEY;
const SHOTS = process.env.LOOPGATE_SCREENSHOTS;
const CHROMIUM = process.env.LOOPGATE_CHROMIUM || '/usr/bin/chromium';
const ROUTE = 'default';
const PAGES = ['overview', 'logs', 'sessions', 'decisions', 'routes', 'experiments', 'constraints', 'keys'];
const STEP_MS = 20000;

const failures = [];
const urls = [];
const fail = (m) => { failures.push(m); console.log(`FAIL ${m}`); };
const ok = (m) => console.log(`ok   ${m}`);
mkdirSync(SHOTS, { recursive: true });

async function adminApi(method, path, body) {
  const r = await fetch(BASE + path, {
    method,
    headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return [r.status, await r.json().catch(() => null)];
}

/** Poll `f` (bounded) until it returns true. */
async function until(what, f) {
  for (let i = 0; i < 100; i++) {
    if (await f()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  fail(`timed out waiting until ${what}`);
  return false;
}

/** A browser context that records everything the checks need. */
async function context(browser, phase, allowed) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    // The read phase's deliberate 403 shows up as a resource error: that one is expected.
    if (allowed.some((a) => m.text().includes('403'))) return;
    fail(`[${phase}] console error: ${m.text()}`);
  });
  page.on('pageerror', (e) => fail(`[${phase}] page error: ${e.message}`));
  page.on('requestfailed', (r) => fail(`[${phase}] request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  page.on('request', (r) => urls.push(r.url()));
  page.on('response', (r) => {
    if (r.status() < 400) return;
    const path = new URL(r.url()).pathname;
    if (allowed.some((a) => a.status === r.status() && a.path === path)) return;
    fail(`[${phase}] HTTP ${r.status()} on ${r.request().method()} ${path}`);
  });
  return { ctx, page };
}

async function signIn(page, key, phase) {
  const resp = await page.goto(`${BASE}/ui`);
  const h = resp.headers();
  if (!(h['content-security-policy'] || '').includes("frame-ancestors 'none'")) fail(`[${phase}] /ui without the CSP`);
  if (h['x-content-type-options'] !== 'nosniff') fail(`[${phase}] /ui without nosniff`);
  if (h['referrer-policy'] !== 'no-referrer') fail(`[${phase}] /ui without no-referrer`);
  await page.locator('#signin').waitFor({ state: 'visible' });
  await page.fill('#key', key);
  await page.click('#signin button[type=submit]');
  await page.locator('#nav').waitFor({ state: 'visible' });
  ok(`[${phase}] signed in as ${await page.textContent('#who')}`);
}

async function open(page, hash, shot) {
  await page.evaluate((h) => { location.hash = h; }, hash);
  const name = hash.replace(/^#\//, '').split('/')[0];
  await page.locator(`#page[data-page="${name}"][data-ready="true"]`).waitFor();
  const err = await page.locator('#page > p.error').count();
  if (err) fail(`${hash}: the page shows an error: ${await page.textContent('#page > p.error')}`);
  if (shot) await page.screenshot({ path: join(SHOTS, `${shot}.png`), fullPage: true });
}

async function follow(page, linkSel, name, shot) {
  await page.locator(linkSel).first().click();
  await page.locator(`#page[data-page="${name}"][data-ready="true"]`).waitFor();
  await page.waitForFunction((n) => location.hash.split('/').length > 2 || n === '', name);
  const err = await page.locator('#page > p.error').count();
  if (err) fail(`${shot}: the page shows an error`);
  await page.screenshot({ path: join(SHOTS, `${shot}.png`), fullPage: true });
}

function routePanel(page) {
  return page.locator('section.panel').filter({ has: page.locator('h2', { hasText: new RegExp(`^Route ${ROUTE}$`) }) });
}

async function pinned() {
  const [, t] = await adminApi('GET', '/v1/routing');
  return (t?.routes || []).find((r) => r.route === ROUTE)?.pinned ?? null;
}

async function confirmDialog(page) {
  await page.locator('#confirm').waitFor({ state: 'visible' });
  await page.screenshot({ path: join(SHOTS, 'confirm-dialog.png') });
  await page.click('#confirm-ok');
}

async function adminPhase(browser) {
  const { ctx, page } = await context(browser, 'admin', []);
  await signIn(page, ADMIN_KEY, 'admin');
  for (const p of PAGES) {
    await open(page, `#/${p}`, p);
    ok(`[admin] ${p}`);
  }
  // Overview by every grouping.
  await open(page, '#/overview');
  for (const g of ['model', 'route', 'project', 'provider']) {
    await page.selectOption('select[name=group]', g);
    await page.locator('#page[data-ready="true"] select[name=group]').waitFor();
    await page.screenshot({ path: join(SHOTS, `overview-by-${g}.png`), fullPage: true });
  }
  if ((await page.locator('svg.chart').count()) < 6) fail('overview draws fewer than six charts');
  ok('[admin] overview by model, route, project, provider');

  await open(page, '#/logs');
  await follow(page, '#page a[href^="#/logs/"]', 'logs', 'log-detail');
  ok('[admin] log detail');
  await open(page, '#/sessions');
  await follow(page, '#page a[href^="#/sessions/"]', 'sessions', 'session-detail');
  ok('[admin] session detail');

  await open(page, '#/decisions');
  await follow(page, '#page a[href^="#/decisions/"]', 'decisions', 'decision-detail');
  for (const s of ['Signals and weights', 'Constraints', 'Evidence', 'Candidates']) {
    if (!(await page.locator('h2', { hasText: s }).count())) fail(`decision detail lacks "${s}"`);
  }
  if (!(await page.textContent('.explanation'))?.trim()) fail('decision detail has no explanation');
  await page.click('#verify');
  await page.locator('#verify-result .ok, #verify-result .error').waitFor();
  const verdict = await page.textContent('#verify-result');
  if (!/^valid/.test(verdict)) fail(`verify said: ${verdict}`); else ok(`[admin] verify: ${verdict}`);
  await page.screenshot({ path: join(SHOTS, 'decision-verified.png'), fullPage: true });

  // Pin, then unpin, each through the confirmation dialog; the API must see each change.
  await open(page, '#/routes');
  if ((await pinned()) !== null) fail('route pinned before the test');
  await routePanel(page).locator('select[name=pin-model]').selectOption('gpt-4o-mini');
  await routePanel(page).locator('button.pin').click();
  await confirmDialog(page);
  if (await until('the API shows the pin', async () => (await pinned()) === 'gpt-4o-mini')) ok('[admin] pinned through the dashboard');
  await page.locator('#page[data-ready="true"]').waitFor();
  await until('the page shows the pin', async () => (await routePanel(page).locator('button.unpin').isEnabled().catch(() => false)));
  await page.screenshot({ path: join(SHOTS, 'routes-pinned.png'), fullPage: true });
  await routePanel(page).locator('button.unpin').click();
  await confirmDialog(page);
  if (await until('the API shows no pin', async () => (await pinned()) === null)) ok('[admin] unpinned through the dashboard');

  // Constraints: edit, preview the diff, apply; the API must see the new value.
  await open(page, '#/constraints');
  const area = page.locator(`textarea[name="constraints-${ROUTE}"]`);
  const current = JSON.parse(await area.inputValue());
  const next = { ...current, min_samples: (current.min_samples || 5) + 7 };
  await area.fill(JSON.stringify(next, null, 2));
  await page.click('.preview-button >> nth=0');
  const preview = await page.textContent('.preview >> nth=0');
  if (!preview.includes('min_samples')) fail(`preview does not name the change: ${preview}`);
  await page.screenshot({ path: join(SHOTS, 'constraints-preview.png'), fullPage: true });
  await page.click('button.apply >> nth=0');
  await confirmDialog(page);
  const want = next.min_samples;
  if (await until('the API shows the new constraint', async () => {
    const [, c] = await adminApi('GET', '/v1/constraints');
    return (c?.data || []).find((r) => r.route === ROUTE)?.constraints?.min_samples === want;
  })) ok('[admin] constraint edited with a preview');

  // Sign out clears the key.
  await page.click('#signout');
  await page.locator('#signin').waitFor({ state: 'visible' });
  if (await page.evaluate(() => sessionStorage.getItem('loopgate.key'))) fail('sign-out left the key in sessionStorage');
  else ok('[admin] signed out, key cleared');
  await ctx.close();
}

async function readPhase(browser) {
  const forbidden = { status: 403, path: `/v1/routes/${ROUTE}/pin` };
  const { ctx, page } = await context(browser, 'read', [forbidden]);
  await signIn(page, READ_KEY, 'read');
  for (const p of PAGES) {
    await open(page, `#/${p}`, `read-${p}`);
    const enabled = await page.locator('[data-mutating="true"]:enabled').count();
    if (enabled) fail(`[read] ${p}: ${enabled} mutating button(s) enabled`);
    ok(`[read] ${p}`);
  }
  await open(page, '#/routes');
  if (!(await routePanel(page).locator('button.pin').isDisabled())) fail('[read] pin button enabled');
  // The server refuses the mutation anyway.
  const status = await page.evaluate(async (path) => {
    const r = await fetch(path, { method: 'POST', headers: { authorization: `Bearer ${sessionStorage.getItem('loopgate.key')}` }, body: '{}' });
    return r.status;
  }, forbidden.path);
  if (status !== 403) fail(`[read] pin through the API answered ${status}, want 403`); else ok('[read] the API refuses a pin (403)');
  if ((await pinned()) !== null) fail('[read] the route got pinned');
  await ctx.close();
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking'],
});
try {
  await adminPhase(browser);
  await readPhase(browser);
} catch (e) {
  fail(`exception: ${e.stack || e}`);
} finally {
  await browser.close();
}
for (const k of [ADMIN_KEY, READ_KEY]) {
  const leaked = urls.filter((u) => u.includes(k) || u.includes(encodeURIComponent(k)));
  if (leaked.length) fail(`a key appeared in ${leaked.length} URL(s): ${leaked[0].replace(k, '<key>')}`);
}
ok(`${urls.length} requests, none with a key in its URL`);
console.log(JSON.stringify({ failures: failures.length, requests: urls.length }));
process.exit(failures.length ? 1 : 0);
