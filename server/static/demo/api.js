// REST calls under /api/v1. Token storage, on purpose:
//  - the access token (15 min) lives only in this module's memory: no script-readable storage;
//  - the refresh token lives in sessionStorage, so a reload keeps this tab signed in, closing
//    the tab signs out, and two tabs can be two different users side by side.
// Neither ever goes into a URL: the WebSocket uses a single-use ticket instead.

const BASE = '/api/v1';
const REFRESH_KEY = 'jangteo.refresh';

let accessToken = null;
let refreshing = null; // one refresh at a time: a rotated token must not be used twice
const signedOutListeners = new Set();

export class ApiError extends Error {
  constructor(status, problem, retryAfter = null) {
    super(describe(problem, status));
    this.status = status;
    this.problem = problem;
    this.type = problem?.type ?? '';
    this.retryAfter = retryAfter; // the Retry-After header of a 429 or 503, for the realtime client
  }
}

function describe(problem, status) {
  if (problem?.errors?.length) {
    return problem.errors.map((e) => `${e.field}: ${e.message}`).join('; ');
  }
  return problem?.detail || problem?.title || `Request failed (${status})`;
}

export const hasSession = () => accessToken !== null || sessionStorage.getItem(REFRESH_KEY) !== null;
export const onSignedOut = (listener) => signedOutListeners.add(listener);

function keep(pair) {
  accessToken = pair.access_token;
  sessionStorage.setItem(REFRESH_KEY, pair.refresh_token);
}

export function forget() {
  const had = hasSession();
  accessToken = null;
  sessionStorage.removeItem(REFRESH_KEY);
  if (had) signedOutListeners.forEach((listener) => listener());
}

async function refresh() {
  refreshing ??= (async () => {
    const token = sessionStorage.getItem(REFRESH_KEY);
    if (!token) throw new ApiError(401, { title: 'Please sign in' });
    try {
      keep(await request('/auth/refresh', { method: 'POST', body: { refresh_token: token }, auth: false }));
    } catch (error) {
      if (error.status === 401) forget(); // rotated elsewhere, revoked or expired
      throw error;
    }
  })().finally(() => {
    refreshing = null;
  });
  return refreshing;
}

/** JSON in, JSON out; problem+json errors become ApiError. 401 refreshes once and retries. */
export async function request(path, { method = 'GET', body, headers = {}, auth = true } = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const sent = { ...headers };
    if (body !== undefined) sent['Content-Type'] = 'application/json';
    if (auth) {
      if (accessToken === null) await refresh();
      sent.Authorization = `Bearer ${accessToken}`;
    }
    const response = await fetch(BASE + path, {
      method,
      headers: sent,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
    });
    if (response.status === 401 && auth && attempt === 0) {
      accessToken = null;
      await refresh();
      continue;
    }
    if (!response.ok) {
      const problem = await response.json().catch(() => null);
      throw new ApiError(response.status, problem, response.headers.get('Retry-After'));
    }
    const etag = response.headers.get('ETag');
    const data = response.status === 204 ? null : await response.json();
    if (etag && data && typeof data === 'object') Object.defineProperty(data, 'etag', { value: etag });
    return data;
  }
}

export const get = (path) => request(path);
export const post = (path, body, headers) => request(path, { method: 'POST', body, headers });

export async function login(email, password) {
  keep(await request('/auth/login', { method: 'POST', body: { email, password }, auth: false }));
}

export async function signup(fields) {
  keep(await request('/auth/signup', { method: 'POST', body: fields, auth: false }));
}

export async function logout() {
  const token = sessionStorage.getItem(REFRESH_KEY);
  try {
    if (token) await request('/auth/logout', { method: 'POST', body: { refresh_token: token } });
  } finally {
    forget();
  }
}

/** A ticket for one realtime connection (single use, 30 s), as the realtime client asks. */
export const realtimeTicket = async () => (await post('/ws/ticket')).ticket;

export const demoAccounts = () => request('/demo/accounts', { auth: false });

/** Upload one image file: ask for a signed URL, send the bytes there, then verify. */
export async function uploadPhoto(listingId, file) {
  const ticket = await post(`/listings/${listingId}/photos`, { content_type: file.type, size: file.size });
  const sent = await fetch(ticket.upload_url, { method: ticket.method, headers: ticket.headers, body: file });
  if (!sent.ok) throw new ApiError(sent.status, await sent.json().catch(() => null));
  return post(`/listings/${listingId}/photos/${ticket.photo_id}/complete`);
}
