// The admin API client. The key lives in this tab's sessionStorage only and goes out as an
// Authorization header: never in a URL, never in a cookie (so no CSRF), never in localStorage (it goes with the tab).
const KEY = 'loopgate.key';

export class ApiError extends Error {
  constructor(status, body) {
    const msg = body && body.error && body.error.message ? body.error.message : `HTTP ${status}`;
    super(msg);
    this.status = status;
    this.body = body;
  }
}

export const session = {
  key: () => sessionStorage.getItem(KEY),
  set: (k) => sessionStorage.setItem(KEY, k),
  clear: () => sessionStorage.removeItem(KEY),
};

/** One admin API call; resolves to the JSON body, rejects with ApiError. */
export async function api(method, path, body) {
  const headers = { authorization: `Bearer ${session.key() || ''}` };
  const init = { method, headers, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer' };
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

/** `?a=1&b=2` from an object, skipping empty values. */
export function qs(params) {
  const parts = Object.entries(params)
    .filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
  return parts.length ? `?${parts.join('&')}` : '';
}
