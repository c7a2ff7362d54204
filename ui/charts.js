// Hand-written SVG charts: a time-series line chart and a horizontal bar chart. Built with
// DOM calls (no innerHTML, no inline style), so the strict CSP holds and data is never markup.
const NS = 'http://www.w3.org/2000/svg';
export const PALETTE = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#65a30d', '#475569'];

function el(tag, attrs = {}, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/**
 * Line chart of series `[{name, points: [[x_ms, y], ...]}]`.
 * opts: {title, format(y) -> string, height}
 */
export function lineChart(series, opts = {}) {
  const W = 640, H = opts.height || 220, L = 64, R = 12, T = 24, B = 28;
  const fmt = opts.format || ((y) => String(Math.round(y * 100) / 100));
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': opts.title || 'chart' });
  svg.appendChild(el('text', { x: L, y: 14, class: 'chart-title' }, opts.title || ''));
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]));
  if (!xs.length) {
    svg.appendChild(el('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'chart-empty' }, 'no data in this window'));
    return svg;
  }
  // The axis spans the chosen window when given, so one busy hour reads as one hour of it.
  let x0 = Math.min(opts.x0 ?? Infinity, ...xs), x1 = Math.max(opts.x1 ?? -Infinity, ...xs);
  if (x0 === x1) { x0 -= 1800e3; x1 += 1800e3; }
  const y1 = niceMax(Math.max(...ys));
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - (y / y1) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const y = (y1 * i) / 4;
    svg.appendChild(el('line', { x1: L, x2: W - R, y1: sy(y), y2: sy(y), class: 'grid' }));
    svg.appendChild(el('text', { x: L - 6, y: sy(y) + 4, 'text-anchor': 'end', class: 'tick' }, fmt(y)));
  }
  const span = x1 - x0;
  for (let i = 0; i <= 4; i++) {
    const x = x0 + (span * i) / 4;
    const d = new Date(x);
    const label = span > 2 * 86400e3 ? d.toISOString().slice(5, 10) : d.toISOString().slice(11, 16);
    svg.appendChild(el('text', { x: sx(x), y: H - 8, 'text-anchor': 'middle', class: 'tick' }, label));
  }
  series.forEach((s, i) => {
    const color = PALETTE[i % PALETTE.length];
    const pts = [...s.points].sort((a, b) => a[0] - b[0]);
    const d = pts.map((p, j) => `${j ? 'L' : 'M'}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(' ');
    svg.appendChild(el('path', { d, fill: 'none', stroke: color, 'stroke-width': 2 }));
    for (const p of pts) {
      if (pts.length > 60 && !p[1]) continue;
      const c = el('circle', { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: color });
      c.appendChild(el('title', {}, `${s.name}: ${fmt(p[1])} at ${new Date(p[0]).toISOString().slice(0, 16).replace('T', ' ')}`));
      svg.appendChild(c);
    }
  });
  return withLegend(svg, series.map((s) => s.name));
}

/** Horizontal bars `[{label, value, low?, high?}]`; low/high draw an interval whisker. */
export function barChart(items, opts = {}) {
  const W = 640, row = 22, L = 170, R = 70, T = 24;
  const H = T + Math.max(1, items.length) * row + 8;
  const fmt = opts.format || ((v) => String(Math.round(v * 1000) / 1000));
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart bars', role: 'img', 'aria-label': opts.title || 'chart' });
  svg.appendChild(el('text', { x: 4, y: 14, class: 'chart-title' }, opts.title || ''));
  if (!items.length) {
    svg.appendChild(el('text', { x: W / 2, y: T + 14, 'text-anchor': 'middle', class: 'chart-empty' }, 'no data'));
    return svg;
  }
  const max = opts.max || niceMax(Math.max(...items.map((it) => Math.max(it.value ?? 0, it.high || 0))));
  const sx = (v) => L + (Math.max(0, v) / max) * (W - L - R);
  items.forEach((it, i) => {
    const y = T + i * row;
    const color = it.color || PALETTE[i % PALETTE.length];
    svg.appendChild(el('text', { x: L - 6, y: y + 14, 'text-anchor': 'end', class: 'tick' }, truncate(it.label, 26)));
    if (it.value === null || it.value === undefined) {
      svg.appendChild(el('text', { x: L + 4, y: y + 14, class: 'tick' }, 'no data'));
      return;
    }
    const bar = el('rect', { x: L, y: y + 3, width: Math.max(1, sx(it.value) - L), height: row - 8, fill: color, rx: 2 });
    bar.appendChild(el('title', {}, `${it.label}: ${fmt(it.value)}`));
    svg.appendChild(bar);
    if (it.low !== undefined && it.high !== undefined) {
      svg.appendChild(el('line', { x1: sx(it.low), x2: sx(it.high), y1: y + 11, y2: y + 11, class: 'whisker' }));
    }
    svg.appendChild(el('text', { x: Math.min(sx(Math.max(it.value, it.high || 0)) + 4, W - R + 4), y: y + 14, class: 'tick' }, fmt(it.value)));
  });
  return svg;
}

function truncate(s, n) {
  s = String(s ?? '');
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

function withLegend(svg, names) {
  const wrap = document.createElement('figure');
  wrap.className = 'chart-wrap';
  wrap.appendChild(svg);
  const legend = document.createElement('figcaption');
  legend.className = 'legend';
  names.forEach((n, i) => {
    const item = document.createElement('span');
    const sw = document.createElement('i');
    sw.className = `sw sw${i % PALETTE.length}`;
    item.append(sw, document.createTextNode(n));
    legend.appendChild(item);
  });
  wrap.appendChild(legend);
  return wrap;
}
