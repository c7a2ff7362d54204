// The pages. Each is `async (arg, reload) => Element`: it calls the admin API (rollup-backed
// analytics, paged lists) and builds DOM with textContent only — trace data is never markup.
import { api, qs } from './api.js';
import { lineChart, barChart } from './charts.js';

let caller = null;
export function setCaller(c) { caller = c; }
const isAdmin = () => Boolean(caller && caller.admin);

/** Build an element: attributes (`on*` functions become listeners), then children. */
export function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, '');
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// ---------- formatting ----------
const num = (v) => (v === null || v === undefined ? '–' : Number(v).toLocaleString('en-US', { maximumFractionDigits: 2 }));
const usd = (v) => (v === null || v === undefined ? '–' : `$${Number(v).toLocaleString('en-US', { maximumFractionDigits: v < 1 ? 6 : 2 })}`);
const ms = (v) => (v === null || v === undefined ? '–' : `${Number(v).toLocaleString('en-US', { maximumFractionDigits: 1 })} ms`);
const pct = (v) => (v === null || v === undefined ? '–' : `${(Number(v) * 100).toFixed(1)}%`);
const time = (v) => (v ? new Date(v).toISOString().replace('T', ' ').slice(0, 19) : '–');
const conf = (v) => (v === null || v === undefined ? '–' : Number(v).toFixed(3));

/** A value as cell text: numbers rounded, arrays as lines, small objects as `k: v`. */
function scalar(v, key) {
  if (v === null || v === undefined) return '–';
  if (typeof v === 'number') {
    if (key && /_ms$/.test(key) && v > 1e12) return time(v);
    return Number.isInteger(v) ? v.toLocaleString('en-US') : String(Number(v.toPrecision(4)));
  }
  if (Array.isArray(v)) return v.length ? v.map((x) => scalar(x)).join('; ') : '–';
  if (typeof v === 'object') return Object.entries(v).map(([k, x]) => `${k}: ${typeof x === 'object' && x !== null ? JSON.stringify(x) : scalar(x, k)}`).join(', ');
  return String(v);
}

/** A table of `rows` with `cols: [[header, row => value or Node]]`. */
function table(rows, cols, opts = {}) {
  if (!rows.length) return h('p', { class: 'empty' }, opts.empty || 'Nothing yet.');
  return h('table', { class: opts.class || 'grid' },
    h('thead', {}, h('tr', {}, cols.map(([name]) => h('th', {}, name)))),
    h('tbody', {}, rows.map((r) => h('tr', opts.rowAttrs ? opts.rowAttrs(r) : {},
      cols.map(([name, f]) => { const v = f(r); return h('td', {}, v instanceof Node ? v : scalar(v, name)); })))));
}

/** Every key of an object as a two-column table (nested objects as JSON). */
function kv(obj) {
  if (!obj || typeof obj !== 'object') return h('p', { class: 'empty' }, scalar(obj));
  return h('table', { class: 'kv' }, h('tbody', {}, Object.entries(obj).map(([k, v]) =>
    h('tr', {}, h('th', {}, k), h('td', {}, v instanceof Node ? v : scalar(v, k))))));
}

/** A table of an array of objects, columns from the union of their keys. */
function objects(rows, empty) {
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r || {})))];
  return table(rows, keys.map((k) => [k, (r) => r[k]]), { empty });
}

const card = (label, value, sub) => h('div', { class: 'card' }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value), sub ? h('div', { class: 'sub' }, sub) : null);
const section = (title, ...children) => h('section', { class: 'panel' }, h('h2', {}, title), ...children);
const link = (href, text) => h('a', { href }, text);
const raw = (v) => h('details', { class: 'raw' }, h('summary', {}, 'Raw JSON'), h('pre', {}, JSON.stringify(v, null, 2)));

/** A button for an admin action: disabled (with a reason) for a read key. */
function action(label, onclick, cls) {
  const b = h('button', { type: 'button', class: cls || '', 'data-mutating': 'true' }, label);
  if (!isAdmin()) {
    b.disabled = true;
    b.title = 'Needs an admin key';
  } else {
    b.addEventListener('click', onclick);
  }
  return b;
}

/** The confirmation dialog; resolves true on Confirm. */
function confirmDialog(text) {
  const d = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  return new Promise((resolve) => {
    d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true });
    d.returnValue = 'cancel';
    d.showModal();
  });
}

function notice(el, text, ok) {
  el.replaceChildren(h('span', { class: ok ? 'ok' : 'error', role: 'status' }, text));
}

// ---------- overview ----------
const WINDOWS = { '24h': 86400e3, '7d': 7 * 86400e3, '30d': 30 * 86400e3 };
const GROUPS = ['provider', 'model', 'route', 'project'];
const state = { window: '24h', group: 'provider', reportWindow: '24h' };

async function overview() {
  const span = WINDOWS[state.window];
  const start = Math.floor((Date.now() - span) / 3600e3) * 3600e3;
  const bucket = span > 7 * 86400e3 ? 'day' : 'hour';
  // Time-only filters: both calls are served from the hourly rollups.
  const [series, groups] = await Promise.all([
    api('GET', `/v1/analytics${qs({ bucket, group_by: state.group, start })}`),
    api('GET', `/v1/analytics${qs({ group_by: state.group, start })}`),
  ]);
  const t = groups.totals;
  const by = new Map();
  for (const r of series.data) {
    const k = r.group ?? '(none)';
    if (!by.has(k)) by.set(k, []);
    by.get(k).push(r);
  }
  // Counts are zero in a bucket without traffic; latency has no value there.
  const step = bucket === 'day' ? 86400e3 : 3600e3;
  const buckets = [];
  for (let b = Math.floor(start / step) * step; b <= Date.now() && buckets.length < 1000; b += step) buckets.push(b);
  const lines = (f, zero = true) => [...by.entries()].map(([name, rows]) => {
    if (!zero) return { name, points: rows.map((r) => [r.bucket_start_ms, f(r)]) };
    const at = new Map(rows.map((r) => [r.bucket_start_ms, f(r)]));
    return { name, points: buckets.map((b) => [b, at.get(b) ?? 0]) };
  });
  const axis = { x0: start, x1: Date.now() };
  const controls = h('div', { class: 'controls' },
    h('label', {}, 'Window ', select(Object.keys(WINDOWS), state.window, (v) => { state.window = v; rerender(); }, 'window')),
    h('label', {}, 'Group by ', select(GROUPS, state.group, (v) => { state.group = v; rerender(); }, 'group')));
  const rows = [...groups.data].sort((a, b) => b.requests - a.requests);
  return h('div', {},
    h('h1', {}, 'Overview'),
    controls,
    h('div', { class: 'cards' },
      card('Requests', num(t.requests)),
      card('Errors', num(t.errors), pct(t.error_rate)),
      card('Cost', usd(t.cost_usd)),
      card('Tokens', num(t.total_tokens), `${num(t.prompt_tokens)} in · ${num(t.completion_tokens)} out`),
      card('Cache hits', num(t.cache_hits), `${usd(t.cache_saved_usd)} saved`)),
    h('div', { class: 'charts' },
      lineChart(lines((r) => r.requests), { title: `Requests per ${bucket}`, format: num, ...axis }),
      lineChart(lines((r) => r.cost_usd), { title: `Cost per ${bucket} (USD)`, format: (v) => usd(v), ...axis }),
      lineChart(lines((r) => r.total_tokens), { title: `Tokens per ${bucket}`, format: num, ...axis }),
      lineChart(lines((r) => r.errors), { title: `Errors per ${bucket}`, format: num, ...axis }),
      lineChart(lines((r) => r.p50_latency_ms, false), { title: 'Latency p50 (ms)', format: num, ...axis }),
      lineChart(lines((r) => r.p95_latency_ms, false), { title: 'Latency p95 (ms)', format: num, ...axis })),
    section(`By ${state.group}`,
      barChart(rows.map((r) => ({ label: r.group ?? '(none)', value: r.cost_usd })), { title: 'Cost (USD)', format: usd }),
      table(rows, [
        [state.group, (r) => r.group ?? '(none)'],
        ['requests', (r) => num(r.requests)],
        ['errors', (r) => `${num(r.errors)} (${pct(r.error_rate)})`],
        ['tokens', (r) => num(r.total_tokens)],
        ['cost', (r) => usd(r.cost_usd)],
        ['p50', (r) => ms(r.p50_latency_ms)],
        ['p95', (r) => ms(r.p95_latency_ms)],
      ])));
}

let rerender = () => {};
function select(options, value, onchange, name) {
  const s = h('select', { name }, options.map((o) => h('option', { value: o, selected: o === value }, o)));
  s.addEventListener('change', () => onchange(s.value));
  return s;
}

// ---------- logs and sessions ----------
const logFilters = { model: '', provider: '', route: '', session_id: '' };

async function logs(id) {
  if (id) return logDetail(id);
  const data = await api('GET', `/v1/logs${qs({ ...logFilters, limit: 50 })}`);
  const form = h('form', { class: 'controls', id: 'log-filters' },
    Object.keys(logFilters).map((k) => h('label', {}, `${k} `, h('input', { name: k, value: logFilters[k], size: 14 }))),
    h('button', { type: 'submit' }, 'Filter'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    for (const k of Object.keys(logFilters)) logFilters[k] = form.elements[k].value.trim();
    rerender();
  });
  return h('div', {}, h('h1', {}, 'Logs'), form, logTable(data.data),
    data.has_more ? h('p', { class: 'muted' }, 'Showing the newest 50; narrow the filters to see more.') : null);
}

function logTable(rows) {
  return table(rows, [
    ['time', (r) => time(r.ts_ms)],
    ['request', (r) => link(`#/logs/${encodeURIComponent(r.request_id)}`, r.request_id)],
    ['model', (r) => r.served_model || r.requested_model],
    ['provider', (r) => r.provider],
    ['route', (r) => r.route],
    ['status', (r) => h('span', { class: r.status >= 400 ? 'bad' : 'good' }, String(r.status))],
    ['tokens', (r) => num(r.prompt_tokens + r.completion_tokens)],
    ['cost', (r) => usd(r.cost_usd)],
    ['latency', (r) => ms(r.latency_ms)],
    ['session', (r) => (r.session_id ? link(`#/sessions/${encodeURIComponent(r.session_id)}`, r.session_id) : '–')],
  ], { empty: 'No requests match.' });
}

async function logDetail(id) {
  const r = await api('GET', `/v1/logs/${encodeURIComponent(id)}`);
  const { attempts = [], request_body: reqBody, response_body: respBody, decision, ...rest } = r;
  return h('div', {},
    h('p', {}, link('#/logs', '← Logs')),
    h('h1', {}, `Request ${r.request_id}`),
    h('div', { class: 'cards' },
      card('Status', String(r.status)), card('Latency', ms(r.latency_ms), r.ttft_ms ? `first token ${ms(r.ttft_ms)}` : null),
      card('Cost', usd(r.cost_usd)), card('Tokens', num(r.prompt_tokens + r.completion_tokens))),
    r.decision_id ? h('p', {}, 'Routing decision: ', link(`#/decisions/${encodeURIComponent(r.decision_id)}`, r.decision_id)) : null,
    r.session_id ? h('p', {}, 'Session: ', link(`#/sessions/${encodeURIComponent(r.session_id)}`, r.session_id)) : null,
    section('Attempts', objects(attempts, 'No upstream attempt.')),
    section('Trace', kv(rest)),
    reqBody ? section('Request body', h('pre', {}, reqBody)) : null,
    respBody ? section('Response body', h('pre', {}, respBody)) : null);
}

async function sessions(id) {
  if (id) return sessionDetail(id);
  // Recent sessions from the newest requests (one page).
  const page = await api('GET', `/v1/logs${qs({ limit: 500 })}`);
  const seen = new Map();
  for (const r of page.data) {
    if (!r.session_id) continue;
    const s = seen.get(r.session_id) || { id: r.session_id, name: r.session_name, requests: 0, cost: 0, last: 0 };
    s.requests += 1; s.cost += r.cost_usd; s.last = Math.max(s.last, r.ts_ms);
    seen.set(r.session_id, s);
  }
  const form = h('form', { class: 'controls' }, h('label', {}, 'Session id ', h('input', { name: 'sid', size: 30 })), h('button', { type: 'submit' }, 'Open'));
  form.addEventListener('submit', (ev) => { ev.preventDefault(); location.hash = `#/sessions/${encodeURIComponent(form.elements.sid.value.trim())}`; });
  return h('div', {}, h('h1', {}, 'Sessions'), form,
    section('Recent sessions (from the newest 500 requests)', table([...seen.values()], [
      ['session', (s) => link(`#/sessions/${encodeURIComponent(s.id)}`, s.id)],
      ['name', (s) => s.name],
      ['requests', (s) => num(s.requests)],
      ['cost', (s) => usd(s.cost)],
      ['last request', (s) => time(s.last)],
    ], { empty: 'No request carried a session id.' })));
}

async function sessionDetail(id) {
  const s = await api('GET', `/v1/sessions/${encodeURIComponent(id)}`);
  const t = s.totals;
  return h('div', {},
    h('p', {}, link('#/sessions', '← Sessions')),
    h('h1', {}, `Session ${s.id}`),
    h('div', { class: 'cards' },
      card('Requests', num(t.requests), `${num(t.errors)} errors`), card('Cost', usd(t.cost_usd)),
      card('Tokens', num(t.total_tokens)), card('Duration', ms(t.duration_ms)),
      card('Models', (t.models || []).join(', ') || '–')),
    s.truncated ? h('p', { class: 'muted' }, 'Truncated: the session has more requests than one page.') : null,
    section('Timeline (oldest first)', logTable(s.data)));
}

// ---------- decisions ----------
async function decisions(id) {
  if (id) return decisionDetail(id);
  const data = await api('GET', `/v1/decisions${qs({ limit: 50 })}`);
  return h('div', {}, h('h1', {}, 'Decisions'),
    table(data.data, [
      ['time', (d) => time(d.created_ms)],
      ['decision', (d) => link(`#/decisions/${encodeURIComponent(d.id)}`, d.id)],
      ['route', (d) => d.route],
      ['mode', (d) => d.mode],
      ['kind', (d) => d.kind],
      ['chosen', (d) => d.chosen],
      ['served', (d) => d.served],
      ['baseline', (d) => d.baseline],
      ['confidence', (d) => conf(d.confidence)],
    ], { empty: 'No routing decision yet: decisions exist for model "auto" on feedback routes.' }));
}

async function decisionDetail(id) {
  const d = await api('GET', `/v1/decisions/${encodeURIComponent(id)}`);
  const tr = d.decision || {};
  const result = h('span', { id: 'verify-result' });
  const verify = h('button', { type: 'button', id: 'verify' }, 'Verify signature');
  verify.addEventListener('click', async () => {
    verify.disabled = true;
    try {
      const v = await api('POST', `/v1/decisions/${encodeURIComponent(id)}/verify`);
      notice(result, v.valid ? `valid — HMAC over the stored trace matches key ${v.key_id}` : `invalid — ${v.reason}`, v.valid);
    } catch (e) {
      notice(result, e.message, false);
    } finally {
      verify.disabled = false;
    }
  });
  const sig = tr.signature || {};
  return h('div', {},
    h('p', {}, link('#/decisions', '← Decisions')),
    h('h1', {}, `Decision ${d.id}`),
    h('div', { class: 'cards' },
      card('Route', d.route, `mode ${d.mode}`), card('Served', d.served, d.shadow ? `shadow: would have served ${tr.would_have ?? '–'}` : `chosen ${d.chosen}`),
      card('Baseline', d.baseline), card('Pick', tr.kind ?? d.kind, `propensity ${conf(tr.propensity)}`),
      card('Confidence', conf(tr.confidence), `phase ${tr.phase ?? '–'}`)),
    h('p', { class: 'explanation' }, tr.explanation || ''),
    h('div', { class: 'verify' }, verify, ' ', result,
      h('span', { class: 'muted' }, ` signed ${sig.alg || ''} with key ${sig.key_id || '–'}`)),
    section('Signals and weights', objects(tr.signals || [], 'No signal yet.')),
    section('Constraints', table(tr.constraints || [], [
      ['constraint', (c) => c.name],
      ['value', (c) => c.value],
      ['limit', (c) => c.limit],
      ['result', (c) => h('span', { class: c.passed ? 'good' : 'bad' }, c.passed ? 'pass' : 'fail')],
      ['detail', (c) => c.detail ?? c.reason ?? ''],
    ])),
    section('Evidence', kv(tr.evidence)),
    section('Score', kv(tr.score)),
    section('Candidates', objects(tr.candidates || [])),
    (tr.misses || []).length ? section('Near misses', objects(tr.misses)) : null,
    (d.scores || []).length ? section('Quality signals recorded since', objects(d.scores)) : null,
    raw(d));
}

// ---------- routes ----------
async function routes() {
  const table_ = await api('GET', '/v1/routing');
  // The baseline-vs-optimised report of each route (one rollup-free call per route, bounded
  // by the report's own row caps).
  const reports = await Promise.all(table_.routes.map((r) =>
    api('GET', `/v1/report/shadow${qs({ route: r.route, window: state.reportWindow })}`)));
  const out = h('div', {}, h('h1', {}, 'Routes'),
    h('p', { class: 'muted' }, `Router table v${table_.version}, built ${time(table_.built_ms)}, ${num(table_.events_folded)} feedback events folded; decisions signed with key ${table_.signing_key_id}${table_.signing_key_ephemeral ? ' (ephemeral)' : ''}.`),
    h('div', { class: 'controls' }, h('label', {}, 'Report window ',
      select(['24h', '7d', '30d'], state.reportWindow, (v) => { state.reportWindow = v; rerender(); }, 'report-window'))));
  table_.routes.forEach((r, i) => {
    out.appendChild(routePanel(r));
    out.appendChild(shadowPanel(reports[i]));
  });
  for (const b of table_.broken || []) out.appendChild(h('p', { class: 'error' }, `${b.route}: ${b.error}`));
  if (!table_.routes.length) out.appendChild(h('p', { class: 'empty' }, 'No feedback route (a route with a baseline).'));
  return out;
}

/** Wait (bounded: about 5 s) until the published router table shows the route's new pin. */
async function settled(route, pinned) {
  for (let i = 0; i < 50; i++) {
    const t = await api('GET', '/v1/routing');
    const r = (t.routes || []).find((x) => x.route === route);
    if (!r || (r.pinned ?? null) === pinned) return;
    await new Promise((res) => setTimeout(res, 100));
  }
}

function routePanel(r) {
  const status = h('div', { class: 'status', 'data-route': r.route });
  const pin = action('Pin…', async () => {
    const model = sel.value;
    if (!(await confirmDialog(`Pin route "${r.route}" to ${model}? Every request on it is served by ${model} until unpinned.`))) return;
    try {
      await api('POST', `/v1/routes/${encodeURIComponent(r.route)}/pin`, { model, reason: 'pinned from the dashboard' });
      notice(status, `pinned to ${model}; waiting for the router table…`, true);
      await settled(r.route, model);
      rerender();
    } catch (e) { notice(status, e.message, false); }
  }, 'pin');
  const unpin = action('Unpin', async () => {
    if (!(await confirmDialog(`Unpin route "${r.route}"? The router decides again.`))) return;
    try {
      await api('DELETE', `/v1/routes/${encodeURIComponent(r.route)}/pin`, { reason: 'unpinned from the dashboard' });
      notice(status, 'unpinned; waiting for the router table…', true);
      await settled(r.route, null);
      rerender();
    } catch (e) { notice(status, e.message, false); }
  }, 'unpin');
  if (!r.pinned) unpin.disabled = true;
  const sel = h('select', { name: 'pin-model' }, (r.models || []).map((m) => h('option', { value: m.model }, m.model)));
  return section(`Route ${r.route}`,
    h('div', { class: 'cards' },
      card('Mode', r.mode, r.mode_source ? `from ${r.mode_source}` : null),
      card('Pinned', r.pinned || 'no', r.pin_reason || null),
      card('Serving now', r.exploit), card('Baseline', r.baseline),
      r.experiment ? card('Experiment', r.experiment.state, `${r.experiment.candidate} at ${pct(r.experiment.share)}`) : null),
    h('div', { class: 'controls' }, sel, pin, unpin, status),
    barChart((r.models || []).map((m) => ({
      label: m.model, value: m.quality_mean || 0,
      low: m.quality_interval_95 ? m.quality_interval_95[0] : undefined,
      high: m.quality_interval_95 ? m.quality_interval_95[1] : undefined,
    })), { title: 'Posterior quality (mean, 95% interval)', max: 1, format: (v) => v.toFixed(3) }),
    table(r.models || [], [
      ['model', (m) => m.model + (m.baseline ? ' (baseline)' : '')],
      ['quality', (m) => conf(m.quality_mean)],
      ['95% interval', (m) => (m.quality_interval_95 || []).map(conf).join(' – ')],
      ['samples', (m) => num(m.samples)],
      ['phase', (m) => m.phase],
      ['confidence', (m) => conf(m.confidence)],
      ['cost/request', (m) => usd(m.cost_per_request)],
      ['p95 latency', (m) => ms(m.p95_latency_ms)],
      ['explore p', (m) => conf(m.exploration_probability)],
      ['failing', (m) => (m.static_failures || []).join(', ')],
    ]));
}

function shadowPanel(rep) {
  const arms = [['baseline', rep.baseline || {}], ['loopgate', rep.loopgate || {}]];
  const bar = (f) => arms.map(([name, a], i) => ({ label: name === 'baseline' ? `baseline ${a.model || ''}` : `loopgate (${a.source || ''})`, value: orNull(f(a)), color: i ? '#16a34a' : '#475569' }));
  const q = (a) => (a.quality ? a.quality.mean : null);
  const orNull = (v) => (v === undefined ? null : v);
  const qItems = arms.map(([name, a], i) => ({
    label: name, value: q(a), color: i ? '#16a34a' : '#475569',
    low: a.quality && a.quality.interval_95 ? a.quality.interval_95[0] : undefined,
    high: a.quality && a.quality.interval_95 ? a.quality.interval_95[1] : undefined,
  }));
  const saving = rep.projected_saving;
  const reg = rep.regression_events || {};
  return section(`Baseline vs optimised: route ${rep.route} (${rep.mode}, last ${rep.window})`,
    h('div', { class: 'cards' },
      card('Routed requests', num(rep.routed_requests)),
      card('Projected saving', saving ? usd(saving.usd) : '–', saving ? `${pct(saving.share_of_baseline_spend)} of baseline spend (${saving.basis})` : null),
      card('Regression events', `${num(reg.count)} / ${num(reg.total)}`, `max regression ${reg.max_regression ?? '–'}`)),
    h('div', { class: 'charts' },
      barChart(bar((a) => a.cost_per_request_usd), { title: 'Cost per request (USD)', format: usd }),
      barChart(qItems, { title: 'Quality (mean, 95% interval)', max: 1, format: (v) => v.toFixed(3) }),
      barChart(bar((a) => a.p95_latency_ms), { title: 'p95 latency (ms)', format: num }),
      barChart(bar((a) => a.requests), { title: 'Requests', format: num })),
    (rep.notes || []).length ? h('ul', { class: 'muted' }, rep.notes.map((n) => h('li', {}, n))) : null);
}

// ---------- experiments ----------
async function experiments(id) {
  if (id) {
    const e = await api('GET', `/v1/experiments/${encodeURIComponent(id)}`);
    return h('div', {}, h('p', {}, link('#/experiments', '← Experiments')), h('h1', {}, `Experiment ${id}`), kv(e), raw(e));
  }
  const list = await api('GET', '/v1/experiments');
  const rows = list.data || [];
  return h('div', {}, h('h1', {}, 'Experiments'),
    table(rows, [
      ['experiment', (e) => link(`#/experiments/${encodeURIComponent(e.id)}`, e.id)],
      ['route', (e) => e.route],
      ['candidate', (e) => e.candidate],
      ['state', (e) => e.state],
      ['step', (e) => e.step],
      ['share', (e) => pct(e.share)],
      ['created', (e) => time(e.created_ms)],
    ], { empty: 'No canary experiment. Start one with POST /v1/experiments (docs/rollout.md).' }));
}

// ---------- constraints ----------
/** Lines of `a` and `b` (pretty JSON) compared by key: what a save would change. */
function diff(before, after) {
  const keys = [...new Set([...Object.keys(before || {}), ...Object.keys(after || {})])].sort();
  const rows = [];
  for (const k of keys) {
    const a = JSON.stringify(before ? before[k] : undefined);
    const b = JSON.stringify(after ? after[k] : undefined);
    if (a !== b) rows.push({ knob: k, from: a ?? '(unset)', to: b ?? '(unset)' });
  }
  return rows;
}

async function constraints() {
  const list = await api('GET', '/v1/constraints');
  const out = h('div', {}, h('h1', {}, 'Constraints'),
    h('p', { class: 'muted' }, 'Edit the JSON, preview what changes, then apply: the change is audited (GET /v1/audit).'));
  for (const c of list.data || []) {
    const area = h('textarea', { rows: 14, cols: 60, name: `constraints-${c.route}`, spellcheck: 'false' }, JSON.stringify(c.constraints, null, 2));
    const preview = h('div', { class: 'preview' });
    const status = h('div', { class: 'status' });
    let pending = null;
    const apply = action('Apply', async () => {
      if (!pending) return;
      if (!(await confirmDialog(`Change ${pending.length} constraint(s) of route "${c.route}"?`))) return;
      try {
        await api('PATCH', '/v1/constraints', { route: c.route, constraints: JSON.parse(area.value), reason: 'edited in the dashboard' });
        notice(status, 'applied', true);
        rerender();
      } catch (e) { notice(status, e.message, false); }
    }, 'apply');
    apply.disabled = true;
    const show = h('button', { type: 'button', class: 'preview-button' }, 'Preview changes');
    show.addEventListener('click', () => {
      let next;
      try { next = JSON.parse(area.value); } catch (e) { notice(preview, `Not JSON: ${e.message}`, false); apply.disabled = true; return; }
      pending = diff(c.constraints, next);
      preview.replaceChildren(pending.length ? table(pending, [['knob', (r) => r.knob], ['now', (r) => r.from], ['after', (r) => r.to]]) : h('p', { class: 'empty' }, 'No change.'));
      apply.disabled = !isAdmin() || !pending.length;
    });
    if (!isAdmin()) area.readOnly = true;
    out.appendChild(section(`Route ${c.route} (${c.source})`, area, h('div', { class: 'controls' }, show, apply, status), preview));
  }
  if (!(list.data || []).length) out.appendChild(h('p', { class: 'empty' }, 'No feedback route.'));
  return out;
}

// ---------- keys and limits ----------
async function keys() {
  if (!isAdmin()) {
    return h('div', {}, h('h1', {}, 'Keys & limits'), h('p', { class: 'empty' }, 'Keys, budgets and limits are visible to admin keys only.'));
  }
  const [k, l] = await Promise.all([api('GET', '/v1/keys'), api('GET', '/v1/limits')]);
  const rows = k.data || [];
  return h('div', {}, h('h1', {}, 'Keys & limits'),
    section('Virtual keys and config keys', table(rows, [
      ['id', (r) => r.id],
      ['source', (r) => r.source],
      ['name', (r) => r.spec?.name],
      ['project', (r) => r.spec?.project],
      ['team', (r) => r.spec?.team],
      ['scopes', (r) => (r.spec?.scopes || []).join(', ')],
      ['budgets', (r) => (r.spec?.budgets || []).map((x) => `${x.period} ${usd(x.usd)}`).join(', ') || '–'],
      ['expires', (r) => (r.spec?.expires_at ? time(r.spec.expires_at) : '–')],
      ['state', (r) => (r.revoked_ms ? `revoked ${time(r.revoked_ms)}` : 'active')],
      ['', (r) => (r.read_only || r.revoked_ms ? '' : action('Revoke…', async () => {
        if (!(await confirmDialog(`Revoke key ${r.id}? Requests with it fail at once.`))) return;
        await api('DELETE', `/v1/keys/${encodeURIComponent(r.id)}`);
        rerender();
      }, 'revoke'))],
    ], { empty: 'No key. Create one with POST /v1/keys (docs/keys.md).' })),
    section(`Limits and budgets (${l.scope || 'gateway'})`, objects(l.data || [], 'No project, team or user limit in [limits].')));
}

export const PAGES = {
  overview, logs, sessions, decisions, routes, experiments, constraints, keys,
};

// Pages re-render themselves after a change (filters, pin, apply) through the router.
for (const [name, page] of Object.entries(PAGES)) {
  PAGES[name] = (arg, reload) => { rerender = reload; return page(arg); };
}
