// jangteo's realtime client for browsers: one ES module, no dependencies, no build step.
//
// One connection per app that survives everything the server and the network do to it: a new
// ticket for every attempt, exponential backoff with full jitter, every channel resumed with
// `since` (its last offset) after a reconnect and duplicates dropped, so an app sees every
// event once and in order. WebSocket first; Server-Sent Events where WebSockets cannot connect.
// The rules are docs/protocol.md's; realtime/client.py is the Python twin. Usage and the
// reference: clients/js/README.md; types: jangteo.d.ts.

export const WS_PATH = '/api/v1/ws';
export const SSE_PATH = '/api/v1/sse';

export const DEFAULTS = Object.freeze({
  backoffBase: 500, // ms; the n-th failed attempt in a row waits up to base * 2^n
  backoffCap: 30_000, // ms; and never more than this
  pingEveryMs: 20_000, // a WebSocket `ping` frame this often
  silentForMs: 50_000, // nothing received for this long (no frame, no heartbeat): the peer is gone
  websocketFailuresBeforeSse: 2, // WebSocket attempts in a row that never got a frame
  websocketRetryMs: 600_000, // on SSE, a reconnect this long after falling back tries WebSocket
});

// Close codes (realtime/disconnect.py has the server's side of each).
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  POLICY: 1008,
  TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  TRY_AGAIN_LATER: 1013,
  SESSION_ENDED: 4401,
});

const RULES = new Map([
  [CloseCode.GOING_AWAY, { action: 'reconnect-now', then: 'another instance takes the connection: reconnect after the jitter only and resume' }],
  [CloseCode.POLICY, { action: 'stop', then: 'the ticket or the frames were refused and would be again' }],
  [CloseCode.TOO_BIG, { action: 'stop', then: 'a frame was too large and would be refused again' }],
  [CloseCode.INTERNAL_ERROR, { action: 'backoff', then: 'reconnect with backoff and resume' }],
  [CloseCode.TRY_AGAIN_LATER, { action: 'backoff', then: 'reconnect with backoff and resume' }],
  [CloseCode.SESSION_ENDED, { action: 'stop', then: 'the session was logged out, revoked or expired: sign in again', sessionEnded: true }],
]);
const OTHERWISE = { action: 'backoff', then: 'the connection dropped: reconnect with backoff and resume' };

/** What to do after a close with `code`: {action: 'reconnect-now'|'backoff'|'stop', then, sessionEnded}. */
export function closeRule(code) {
  const rule = RULES.get(code) ?? OTHERWISE;
  return { action: rule.action, then: rule.then, sessionEnded: rule.sessionEnded === true };
}

/**
 * What to do after an HTTP refusal by the ticket request (`what` = 'ticket') or the SSE request
 * ('sse'): 408, 429 and 5xx are "not now" (backoff, honouring Retry-After); any other 4xx is
 * "never" (stop). A 401 ends the session's realtime: from the ticket request, the access token
 * was refused; from the SSE request, the session ended or the ticket did (the client first
 * tries once more with a fresh ticket, which settles it). Either way: sign in again.
 */
export function statusRule(status, what) {
  if (status === 408 || status === 429 || status >= 500) {
    return { action: 'backoff', then: `${what} request answered ${status}: retry after a backoff`, sessionEnded: false };
  }
  if (status === 401) return { action: 'stop', then: `${what} request answered 401: sign in again`, sessionEnded: true };
  return { action: 'stop', then: `${what} request answered ${status}: retrying would repeat it`, sessionEnded: false };
}

/** Full jitter: uniform in [0, min(cap, base * 2^attempt)] ms, so dropped clients spread out. */
export function backoffDelay(attempt, { base = DEFAULTS.backoffBase, cap = DEFAULTS.backoffCap, random = Math.random } = {}) {
  return random() * Math.min(cap, base * 2 ** Math.min(attempt, 30));
}

/** A Retry-After header's value (delta-seconds or an HTTP date) in ms; null when absent or bad. */
export function parseRetryAfter(value, now = Date.now()) {
  if (value === null || value === undefined) return null;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  if (!/[a-z]/i.test(text)) return null; // not a date either (e.g. "-1", "1.5")
  const at = Date.parse(text);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

/** The SSE cursor: the channels' offsets in the order given, comma-joined, '' where none yet. */
export function sseCursor(channels, offsets) {
  return channels.map((channel) => offsets.get(channel) ?? '').join(',');
}

/** The SSE URL for one attempt: every channel, and `since` unless no channel has an offset. */
export function sseUrl(baseUrl, ticket, channels, offsets) {
  const query = [`ticket=${encodeURIComponent(ticket)}`];
  for (const channel of channels) query.push(`channel=${encodeURIComponent(channel)}`);
  const cursor = sseCursor(channels, offsets);
  if (/[^,]/.test(cursor)) query.push(`since=${encodeURIComponent(cursor)}`);
  return `${baseUrl}${SSE_PATH}?${query.join('&')}`;
}

/**
 * A text/event-stream parser (the WHATWG rules): push text as it arrives, in any pieces;
 * `onMessage({data, id, event})` runs once per complete message. Comments are heartbeats.
 */
export function createSseParser(onMessage) {
  let buffer = '';
  let afterCR = false; // a chunk ended in CR: a LF starting the next one belongs to it
  let data = [];
  let event = '';
  let lastEventId = '';

  function line(text) {
    if (text === '') {
      if (data.length) onMessage({ data: data.join('\n'), id: lastEventId, event: event || 'message' });
      data = [];
      event = '';
      return;
    }
    if (text.startsWith(':')) return;
    const colon = text.indexOf(':');
    const field = colon === -1 ? text : text.slice(0, colon);
    let value = colon === -1 ? '' : text.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') data.push(value);
    else if (field === 'event') event = value;
    else if (field === 'id' && !value.includes('\0')) lastEventId = value;
  }

  return {
    push(text) {
      let start = 0;
      if (afterCR && text.startsWith('\n')) start = 1;
      afterCR = false;
      buffer += text.slice(start);
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      if (buffer === '' && /\r$/.test(text)) afterCR = true;
      lines.forEach(line);
    },
    get lastEventId() {
      return lastEventId;
    },
  };
}

/** A v4 UUID for a chat message's client_id (crypto.randomUUID needs a secure context). */
export function uuid4() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// -- errors ----------------------------------------------------------------------------------

/** The client stopped: kind 'closed' (close() was called), 'sessionEnded' or 'fatal'. */
export class ClosedError extends Error {
  constructor(kind, code, message) {
    super(message);
    this.name = 'ClosedError';
    this.kind = kind;
    this.code = code; // a close code, an HTTP status, or null
  }
}

/** The server refused a subscription (forbidden, bad_channel, too_many_subscriptions, ...). */
export class SubscriptionError extends Error {
  constructor(code, channel, detail) {
    super(`${code} on ${channel}${detail ? `: ${detail}` : ''}`);
    this.name = 'SubscriptionError';
    this.code = code;
    this.channel = channel;
    this.detail = detail ?? null;
  }
}

/** A chat `send` was not acknowledged; when `retryable`, send again with the same clientId. */
export class SendError extends Error {
  constructor(code, clientId, detail, retryable) {
    super(`${code}${detail ? `: ${detail}` : ''}`);
    this.name = 'SendError';
    this.code = code;
    this.clientId = clientId;
    this.detail = detail ?? null;
    this.retryable = retryable;
  }
}

/** Sending needs the WebSocket; on Server-Sent Events an app sends over REST. */
export class TransportError extends Error {
  constructor(message) {
    super(message);
    this.name = 'TransportError';
  }
}

/** The ticket request was refused; `status` and `retryAfter` (seconds) decide what follows. */
export class TicketError extends Error {
  constructor(status, retryAfter = null, detail = '') {
    super(`ticket request answered ${status}${detail ? `: ${detail}` : ''}`);
    this.name = 'TicketError';
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

/** The ticket out of a `POST /api/v1/ws/ticket` response, or a TicketError with its status. */
export async function ticketFromResponse(response) {
  if (response.status !== 201) {
    const detail = await response.json().then((problem) => problem?.detail ?? problem?.title ?? '', () => '');
    throw new TicketError(response.status, response.headers.get('Retry-After'), detail);
  }
  const body = await response.json();
  if (typeof body?.ticket !== 'string' || body.ticket === '') throw new TypeError('ticket response without a ticket');
  return body.ticket;
}

// -- the client ------------------------------------------------------------------------------

const RETRYABLE_CODES = new Set(['unavailable', 'rate_limited']);
const OPEN = 1; // WebSocket.OPEN, without needing WebSocket to exist

function validNumber(name, value, { min = 0 } = {}) {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min) {
    throw new RangeError(`${name} must be a number >= ${min}, not ${value}`);
  }
  return value;
}

function report(error) {
  // A listener's mistake must not stop delivery to the others; it still shows as uncaught.
  queueMicrotask(() => {
    throw error;
  });
}

function handled(promise) {
  promise.catch(() => {}); // the app may never look; an unread rejection is not an error
  return promise;
}

export class RealtimeClient extends EventTarget {
  #options;
  #baseUrl;
  #channels = new Map(); // channel -> entry, in subscription order
  #ws = null; // the open WebSocket, if any
  #sse = null; // {controller, reopen} of the SSE request under way, if any
  #sseIdle = null; // wakes an SSE connection that holds no stream (no channels)
  #reopenQueued = false;
  #generation = 0; // bumped by connect() and close(): an older run stops at its next step
  #wake = null; // ends the current backoff sleep early
  #stopCurrent = null; // ends the WebSocket or SSE request under way (close())
  #sends = new Map(); // client_id -> {resolve, reject}
  #pongs = [];
  #onSse = false; // fell back to SSE (transport 'auto')
  #fellBackAt = 0;
  #sseAttempts = 0; // since the fall back: the WebSocket is tried again only after one
  #websocketFailures = 0; // WebSocket attempts in a row that the server never answered
  #sseUnauthorized = 0; // SSE requests in a row answered 401

  constructor(options = {}) {
    super();
    const { ticket, url = globalThis.location?.origin, transport = 'auto', random = Math.random } = options;
    if (typeof ticket !== 'function') throw new TypeError('ticket must be a function returning a ticket: async () => string');
    if (typeof url !== 'string' || !/^https?:\/\/[^/]+/.test(url)) {
      throw new TypeError(`url must be the server's http:// or https:// origin, not ${url}`);
    }
    if (!['auto', 'websocket', 'sse'].includes(transport)) {
      throw new TypeError(`transport must be 'auto', 'websocket' or 'sse', not ${transport}`);
    }
    if (typeof random !== 'function') throw new TypeError('random must be a function like Math.random');
    const numbers = {};
    for (const name of Object.keys(DEFAULTS)) numbers[name] = validNumber(name, options[name] ?? DEFAULTS[name]);
    validNumber('websocketFailuresBeforeSse', numbers.websocketFailuresBeforeSse, { min: 1 });
    this.#options = { ...numbers, ticket, transport, random };
    this.#baseUrl = url.replace(/\/+$/, '');
    /** 'idle' | 'connecting' | 'live' | 'reconnecting' | 'closed' */
    this.state = 'idle';
    /** 'websocket' | 'sse' | null: the transport in use or being tried */
    this.transport = null;
    /** Why the client stopped (a ClosedError), once state is 'closed'. */
    this.closedReason = null;
    this.connections = 0; // sockets and streams that opened
    this.duplicates = 0; // events dropped because their offset was at or below the channel's last
    this.gaps = 0; // events whose `prev` was past the channel's last offset (then resumed with since)
    /** Some resumed channel has not replayed up to its `subscribed` offset yet. */
    this.catchingUp = false;
  }

  // -- lifecycle -----------------------------------------------------------------------------

  /** Start connecting (and reconnecting, until close() or a stop). Safe to call again. */
  connect() {
    if (this.state !== 'idle' && this.state !== 'closed') return this;
    this.closedReason = null;
    const run = ++this.#generation;
    this.#setState(this.connections ? 'reconnecting' : 'connecting');
    this.#loop(run).catch((error) => this.#finish(new ClosedError('fatal', null, `client failed: ${error?.message ?? error}`), run));
    return this;
  }

  /** Close with 1000 and stop reconnecting. Subscriptions are kept for a later connect(). */
  close() {
    this.#finish(new ClosedError('closed', CloseCode.NORMAL, 'closed by the app'), this.#generation);
  }

  /** Reconnect now: skip the backoff under way, or start again after a stop. */
  reconnectNow() {
    if (this.state === 'closed' || this.state === 'idle') this.connect();
    else this.#wake?.();
  }

  /** The channel's last offset (what a resume would send as `since`), or null. */
  lastOffset(channel) {
    return this.#channels.get(channel)?.last ?? null;
  }

  get channels() {
    return [...this.#channels.keys()];
  }

  // -- subscriptions -------------------------------------------------------------------------

  /**
   * Listen to a channel. `listener` is a function (each event) or {event, resync, presence,
   * error}. `since` resumes after that offset; it applies when the channel is not subscribed
   * yet (listeners of one channel share its offset). Returns {channel, ready, unsubscribe}:
   * `ready` resolves with the `subscribed` offset, or rejects with a SubscriptionError.
   */
  subscribe(channel, listener, { since } = {}) {
    if (typeof channel !== 'string' || channel === '') throw new TypeError('channel must be a non-empty string');
    const handlers = typeof listener === 'function' ? { event: listener } : listener;
    if (!handlers || typeof handlers !== 'object') throw new TypeError('listener must be a function or {event, resync, presence, error}');
    if (since !== undefined && since !== null && !(Number.isSafeInteger(since) && since >= 0)) {
      throw new RangeError(`since must be an offset (an integer >= 0), not ${since}`);
    }
    let entry = this.#channels.get(channel);
    if (!entry) {
      entry = {
        channel,
        last: since ?? null,
        sentSince: null, // the `since` of the subscription under way (null: live only)
        replayTo: null, // while a resume replays: the `subscribed` offset it ends at
        listeners: new Set(),
        settled: false,
        resyncing: false,
        retries: 0,
        retryTimer: null,
      };
      entry.ready = handled(new Promise((resolve, reject) => Object.assign(entry, { resolve, reject })));
      this.#channels.set(channel, entry);
      this.#resubscribe(entry);
    }
    entry.listeners.add(handlers);
    let active = true;
    const unsubscribe = () => {
      if (!active) return;
      active = false;
      entry.listeners.delete(handlers);
      if (entry.listeners.size === 0 && this.#channels.get(channel) === entry) this.#drop(entry, 'unsubscribed');
    };
    return { channel, ready: entry.ready, unsubscribe };
  }

  #drop(entry, why) {
    this.#channels.delete(entry.channel);
    this.#caughtUp(entry);
    clearTimeout(entry.retryTimer);
    this.#settle(entry, new SubscriptionError(why, entry.channel, 'unsubscribed before subscribed'));
    if (this.#wsOpen()) this.#sendFrame({ op: 'unsubscribe', channel: entry.channel });
    else this.#queueReopen();
  }

  /** Subscribe the channel on whatever is connected, from its last offset. */
  #resubscribe(entry) {
    if (this.#wsOpen()) {
      entry.sentSince = entry.last;
      const frame = { op: 'subscribe', channel: entry.channel };
      if (entry.last !== null) frame.since = entry.last;
      this.#sendFrame(frame);
    } else {
      this.#queueReopen(); // on SSE a subscription change reopens the stream
    }
  }

  #retryLater(entry) {
    clearTimeout(entry.retryTimer);
    const delay = this.#backoff(entry.retries);
    entry.retries += 1;
    entry.retryTimer = setTimeout(() => {
      entry.retryTimer = null;
      if (this.#channels.get(entry.channel) === entry) this.#resubscribe(entry);
    }, delay);
    return delay;
  }

  #settle(entry, error, offset) {
    if (entry.settled) return;
    entry.settled = true;
    if (error) entry.reject(error);
    else entry.resolve(offset);
  }

  // -- sending (WebSocket only) --------------------------------------------------------------

  /** Send a chat message; resolves with the stored message once acknowledged. */
  sendMessage(room, body, { clientId = uuid4() } = {}) {
    try {
      this.#requireWebSocket('sendMessage');
      if (!Number.isSafeInteger(room) || room < 1) throw new RangeError(`room must be a room id, not ${room}`);
      if (typeof body !== 'string' || body.length < 1 || body.length > 1000) {
        throw new RangeError('body must be a string of 1 to 1000 characters');
      }
      if (typeof clientId !== 'string') throw new TypeError('clientId must be a UUID string');
    } catch (error) {
      return Promise.reject(error);
    }
    const key = clientId.toLowerCase();
    if (!this.#wsOpen()) return Promise.reject(new SendError('disconnected', key, 'not connected; send again later', true));
    return new Promise((resolve, reject) => {
      this.#sends.get(key)?.reject(new SendError('superseded', key, 'sent again with the same clientId', true));
      this.#sends.set(key, { resolve, reject });
      this.#sendFrame({ op: 'send', room, body, client_id: clientId });
    });
  }

  /** Tell a subscribed room the user is typing (a hint); false when no socket is open. */
  typing(room) {
    this.#requireWebSocket('typing');
    if (!Number.isSafeInteger(room) || room < 1) throw new RangeError(`room must be a room id, not ${room}`);
    return this.#sendFrame({ op: 'typing', room });
  }

  /** Resolves when the server answers a `ping` with `pong`. */
  ping() {
    try {
      this.#requireWebSocket('ping');
    } catch (error) {
      return Promise.reject(error);
    }
    if (!this.#wsOpen()) return Promise.reject(new ClosedError('closed', null, 'not connected'));
    return new Promise((resolve, reject) => {
      this.#pongs.push({ resolve, reject });
      this.#sendFrame({ op: 'ping' });
    });
  }

  #requireWebSocket(what) {
    if (this.transport === 'sse') {
      throw new TransportError(`${what} needs the WebSocket transport; on Server-Sent Events send over REST`);
    }
  }

  #wsOpen() {
    return this.#ws !== null && this.#ws.readyState === OPEN;
  }

  #sendFrame(frame) {
    if (!this.#wsOpen()) return false;
    this.#ws.send(JSON.stringify(frame));
    return true;
  }

  #failSends(error) {
    for (const { reject } of this.#sends.values()) reject(error);
    this.#sends.clear();
    for (const { reject } of this.#pongs) reject(error);
    this.#pongs = [];
  }

  // -- the connection loop -------------------------------------------------------------------

  async #loop(run) {
    let attempt = 0; // failed attempts in a row
    while (this.#current(run)) {
      const transport = this.#pickTransport();
      this.#setState(this.connections ? 'reconnecting' : 'connecting', transport);
      const outcome = transport === 'websocket' ? await this.#attemptWebSocket(run) : await this.#attemptSse(run);
      if (!this.#current(run)) return;
      if (outcome.stop) {
        this.#finish(outcome.stop, run);
        return;
      }
      if (outcome.served) attempt = 0;
      let now = outcome.now === true;
      if (transport === 'websocket') {
        if (outcome.served) this.#websocketFailures = 0;
        else if (outcome.websocketFailed) this.#websocketFailures += 1;
        if (this.#options.transport === 'auto' && this.#websocketFailures >= this.#options.websocketFailuresBeforeSse) {
          this.#onSse = true; // the server answers (tickets come) but WebSockets do not get through
          this.#fellBackAt = Date.now();
          this.#sseAttempts = 0;
          this.#websocketFailures = 0;
          now = true;
        }
      }
      let delay = now ? this.#backoff(0) : this.#backoff(attempt);
      if (outcome.retryAfterMs !== null && outcome.retryAfterMs !== undefined) delay = Math.max(delay, outcome.retryAfterMs);
      this.#setState(this.connections ? 'reconnecting' : 'connecting');
      this.dispatchEvent(new CustomEvent('backoff', { detail: { delayMs: delay, attempt } }));
      await this.#sleep(delay);
      attempt += 1;
    }
  }

  #pickTransport() {
    const mode = this.#options.transport;
    if (mode !== 'auto') return mode;
    if (typeof globalThis.WebSocket !== 'function') return 'sse';
    if (this.#onSse && this.#sseAttempts > 0 && Date.now() - this.#fellBackAt >= this.#options.websocketRetryMs) {
      this.#onSse = false; // try WebSocket again; one failure falls back at once
      this.#websocketFailures = this.#options.websocketFailuresBeforeSse - 1;
      return 'websocket';
    }
    if (!this.#onSse) return 'websocket';
    this.#sseAttempts += 1;
    return 'sse';
  }

  #current(run) {
    return run === this.#generation && this.state !== 'closed';
  }

  #backoff(attempt) {
    const { backoffBase: base, backoffCap: cap, random } = this.#options;
    return backoffDelay(attempt, { base, cap, random });
  }

  #sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.#wake = done;
    }).finally(() => {
      this.#wake = null;
    });
  }

  /** A ticket, or the outcome of an attempt that could not get one. */
  async #ticket() {
    let ticket;
    try {
      ticket = await this.#options.ticket();
    } catch (error) {
      const status = error?.status;
      if (!Number.isInteger(status)) return { outcome: { served: false } }; // network: retry
      const rule = statusRule(status, 'ticket');
      if (rule.action === 'stop') {
        return { outcome: { stop: new ClosedError(rule.sessionEnded ? 'sessionEnded' : 'fatal', status, rule.then) } };
      }
      return { outcome: { served: false, retryAfterMs: parseRetryAfter(error.retryAfter) } };
    }
    if (typeof ticket !== 'string' || ticket === '') {
      return { outcome: { stop: new ClosedError('fatal', null, 'the ticket function returned no ticket (it must resolve to a string)') } };
    }
    return { ticket };
  }

  /** The outcome of a connection that ended with `code` after `served` (a frame came or not). */
  #closed(code, served) {
    const rule = closeRule(code);
    if (rule.action === 'stop') {
      return { stop: new ClosedError(rule.sessionEnded ? 'sessionEnded' : 'fatal', code, `closed with ${code}: ${rule.then}`) };
    }
    return { served, now: rule.action === 'reconnect-now' };
  }

  async #attemptWebSocket(run) {
    const { ticket, outcome } = await this.#ticket();
    if (outcome) return outcome;
    if (!this.#current(run)) return { served: false };
    const url = `${this.#baseUrl.replace(/^http/, 'ws')}${WS_PATH}?ticket=${encodeURIComponent(ticket)}`;
    let ws;
    try {
      ws = new globalThis.WebSocket(url);
    } catch {
      return { served: false, websocketFailed: true }; // refused by the page itself (its CSP)
    }
    const { pingEveryMs, silentForMs } = this.#options;
    return new Promise((resolve) => {
      let served = false;
      let opened = false;
      let lastSeen = Date.now();
      let heartbeat = null;
      const finish = (code) => {
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        clearInterval(heartbeat);
        if (this.#ws === ws) this.#ws = null;
        this.#replaysEnded();
        this.#failSends(new SendError('disconnected', null, 'the connection closed before an answer; send again', true));
        this.#stopCurrent = null;
        // Never opened, or closed without a frame and without a close code from the server.
        const websocketFailed = !served && (!opened || code === CloseCode.ABNORMAL);
        resolve({ ...this.#closed(code, served), websocketFailed });
      };
      this.#stopCurrent = () => {
        ws.close(CloseCode.NORMAL, 'closed by the app');
        finish(CloseCode.NORMAL);
      };
      ws.onopen = () => {
        opened = true;
        this.#ws = ws;
        this.connections += 1;
        this.#setState('live', 'websocket');
        this.#sendFrame({ op: 'ping' }); // a pong proves the server serves us, channels or not
        for (const entry of this.#channels.values()) {
          clearTimeout(entry.retryTimer);
          this.#resubscribe(entry);
        }
        heartbeat = setInterval(() => {
          if (Date.now() - lastSeen > silentForMs) {
            ws.close(4000, 'nothing received');
            finish(CloseCode.ABNORMAL);
          } else {
            this.#sendFrame({ op: 'ping' });
          }
        }, Math.min(pingEveryMs, silentForMs));
      };
      ws.onmessage = (message) => {
        served = true;
        lastSeen = Date.now();
        if (typeof message.data === 'string') this.#onText(message.data);
      };
      ws.onclose = (event) => finish(event.code);
      ws.onerror = () => {}; // a close event follows, with the code
    });
  }

  async #attemptSse(run) {
    let served = false;
    while (this.#current(run)) {
      if (this.#channels.size === 0) {
        // Nothing to receive: no stream until a channel is subscribed.
        this.#setState('live', 'sse');
        await new Promise((resolve) => {
          this.#sseIdle = resolve;
        });
        this.#sseIdle = null;
        continue;
      }
      const { ticket, outcome } = await this.#ticket();
      if (outcome) return { ...outcome, served: served || outcome.served === true };
      if (!this.#current(run)) break;
      const channels = [...this.#channels.keys()];
      if (channels.length === 0) continue;
      const offsets = new Map();
      for (const entry of this.#channels.values()) {
        entry.sentSince = entry.last;
        if (entry.last !== null) offsets.set(entry.channel, entry.last);
      }
      const result = await this.#stream(sseUrl(this.#baseUrl, ticket, channels, offsets));
      served ||= result.served;
      if (result.reopen) continue; // the channels changed: a new stream from the cursor, at once
      if (result.status !== undefined) {
        const rule = statusRule(result.status, 'sse');
        // A 401 may be a ticket that expired before it was used: one more, fresh, settles it.
        this.#sseUnauthorized = result.status === 401 ? this.#sseUnauthorized + 1 : 0;
        if (result.status === 401 && this.#sseUnauthorized < 2) return { served, retryAfterMs: result.retryAfterMs };
        if (rule.action === 'stop') {
          return { stop: new ClosedError(rule.sessionEnded ? 'sessionEnded' : 'fatal', result.status, rule.then) };
        }
        return { served, retryAfterMs: result.retryAfterMs };
      }
      return this.#closed(result.code, served);
    }
    return { served };
  }

  /** One SSE request, read to its end: {served, code} or {status, retryAfterMs} or {reopen}. */
  async #stream(url) {
    const controller = new AbortController();
    const current = { controller, reopen: false };
    this.#sse = current;
    this.#stopCurrent = () => controller.abort();
    let served = false;
    let closeFrame = null;
    let silent = null;
    try {
      const response = await fetch(url, { headers: { Accept: 'text/event-stream' }, cache: 'no-store', credentials: 'omit', signal: controller.signal });
      if (!response.ok) {
        response.body?.cancel().catch(() => {});
        return { status: response.status, retryAfterMs: parseRetryAfter(response.headers.get('Retry-After')) };
      }
      if (!(response.headers.get('Content-Type') ?? '').startsWith('text/event-stream')) {
        response.body?.cancel().catch(() => {});
        return { served: false, code: CloseCode.ABNORMAL };
      }
      this.connections += 1;
      this.#sseUnauthorized = 0;
      this.#setState('live', 'sse');
      let lastSeen = Date.now();
      silent = setInterval(() => {
        if (Date.now() - lastSeen > this.#options.silentForMs) controller.abort();
      }, Math.min(this.#options.pingEveryMs, this.#options.silentForMs));
      const parser = createSseParser(({ data, event }) => {
        if (event !== 'message' || closeFrame) return;
        const frame = this.#onText(data);
        if (frame?.op === 'close') {
          closeFrame = frame; // like a WebSocket close frame, it does not count as served
          controller.abort(); // the server ends the response; nothing after this counts
        } else {
          served = true;
        }
      });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        lastSeen = Date.now();
        parser.push(value);
      }
    } catch {
      // aborted (reopen, close(), silence, a close frame) or the network failed
    } finally {
      clearInterval(silent);
      if (this.#sse === current) this.#sse = null;
      this.#replaysEnded();
      this.#stopCurrent = null;
    }
    if (current.reopen) return { reopen: true, served };
    const code = Number.isInteger(closeFrame?.code) ? closeFrame.code : CloseCode.ABNORMAL;
    return { served, code };
  }

  /** On SSE, reopen the stream (new channel list, same cursor) once the current task is done. */
  #queueReopen() {
    if (this.#reopenQueued || this.transport !== 'sse') return;
    this.#reopenQueued = true;
    setTimeout(() => {
      this.#reopenQueued = false;
      if (this.#sse) {
        this.#sse.reopen = true;
        this.#sse.controller.abort();
      } else {
        this.#sseIdle?.();
      }
    }, 0);
  }

  // -- frames --------------------------------------------------------------------------------

  #onText(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      this.#protocolError('a frame that is not JSON', text);
      return null;
    }
    if (frame === null || typeof frame !== 'object' || typeof frame.op !== 'string') {
      this.#protocolError('a frame without an op', text);
      return null;
    }
    const entry = typeof frame.channel === 'string' ? this.#channels.get(frame.channel) : undefined;
    switch (frame.op) {
      case 'event':
        if (entry) this.#onEvent(entry, frame);
        break;
      case 'subscribed':
        if (entry) this.#onSubscribed(entry, frame);
        break;
      case 'presence':
        if (entry) this.#tell(entry, 'presence', frame);
        break;
      case 'error':
        this.#onError(entry, frame);
        break;
      case 'ack':
        this.#takeSend(frame.client_id)?.resolve(frame.message);
        break;
      case 'pong':
        this.#pongs.shift()?.resolve();
        break;
      default: // unsubscribed, close (the SSE stream's end) and ops of later versions
    }
    return frame;
  }

  #onEvent(entry, frame) {
    if (!Number.isSafeInteger(frame.offset) || !Number.isSafeInteger(frame.prev)) {
      this.#protocolError('an event without an integer offset and prev', frame);
      return;
    }
    if (entry.last !== null) {
      if (frame.offset <= entry.last) {
        this.duplicates += 1;
        return;
      }
      if (frame.prev > entry.last) {
        // An event was missed (the server should have sent resync): fetch it with since.
        this.gaps += 1;
        this.#resubscribe(entry);
        return;
      }
    }
    entry.last = frame.offset;
    if (entry.replayTo !== null && entry.last >= entry.replayTo) this.#caughtUp(entry);
    this.#tell(entry, 'event', frame);
  }

  #onSubscribed(entry, frame) {
    if (!Number.isSafeInteger(frame.offset)) {
      this.#protocolError('subscribed without an integer offset', frame);
      return;
    }
    if (entry.sentSince === null) entry.last = Math.max(frame.offset, entry.last ?? frame.offset);
    if (entry.last < frame.offset) {
      entry.replayTo = frame.offset; // the missed events follow, up to this one
      this.#updateCatchingUp();
    }
    entry.retries = 0;
    this.#settle(entry, null, frame.offset);
    if (entry.resyncing) {
      entry.resyncing = false;
      this.#tell(entry, 'resync', { channel: entry.channel, offset: frame.offset });
    }
  }

  #onError(entry, frame) {
    this.dispatchEvent(new CustomEvent('error-frame', { detail: frame }));
    if (typeof frame.client_id === 'string') {
      const retryable = RETRYABLE_CODES.has(frame.code);
      this.#takeSend(frame.client_id)?.reject(new SendError(frame.code, frame.client_id, frame.detail, retryable));
      return;
    }
    if (!entry) return;
    const error = { code: frame.code, channel: entry.channel, detail: frame.detail ?? null, retrying: false, retryInMs: null };
    if (frame.code === 'resync') {
      // The server cannot replay from our offset: subscribe afresh; the listeners reload over
      // REST once the new subscription is in place (then nothing after their read is missed).
      entry.last = null;
      entry.resyncing = true;
      this.#caughtUp(entry);
      this.#resubscribe(entry);
    } else if (RETRYABLE_CODES.has(frame.code)) {
      this.#tell(entry, 'error', { ...error, retrying: true, retryInMs: this.#retryLater(entry) });
    } else {
      this.#channels.delete(entry.channel);
      this.#caughtUp(entry);
      clearTimeout(entry.retryTimer);
      this.#settle(entry, new SubscriptionError(frame.code, entry.channel, frame.detail));
      this.#tell(entry, 'error', error);
    }
  }

  #takeSend(clientId) {
    if (typeof clientId !== 'string') return undefined;
    const key = clientId.toLowerCase();
    const pending = this.#sends.get(key);
    this.#sends.delete(key);
    return pending;
  }

  #tell(entry, kind, value) {
    for (const listener of [...entry.listeners]) {
      try {
        listener[kind]?.(value); // what it returns (a reload's promise) is the app's own
      } catch (error) {
        report(error);
      }
    }
  }

  #caughtUp(entry) {
    if (entry.replayTo === null) return;
    entry.replayTo = null;
    this.#updateCatchingUp();
  }

  /** A connection ended: what it was replaying is replayed again on the next one. */
  #replaysEnded() {
    for (const entry of this.#channels.values()) entry.replayTo = null;
    this.#updateCatchingUp();
  }

  #updateCatchingUp() {
    const catchingUp = [...this.#channels.values()].some((entry) => entry.replayTo !== null);
    if (catchingUp === this.catchingUp) return;
    this.catchingUp = catchingUp;
    this.dispatchEvent(new CustomEvent('catching-up', { detail: catchingUp }));
  }

  #protocolError(message, data) {
    this.dispatchEvent(new CustomEvent('protocol-error', { detail: { message, data } }));
  }

  // -- state ---------------------------------------------------------------------------------

  #setState(state, transport = this.transport) {
    if (state === this.state && transport === this.transport) return;
    this.state = state;
    this.transport = transport;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, transport } }));
  }

  #finish(reason, run) {
    if (run !== this.#generation || this.state === 'closed') return;
    this.#generation += 1;
    this.closedReason = reason;
    this.#stopCurrent?.();
    this.#stopCurrent = null;
    this.#wake?.();
    this.#sseIdle?.();
    this.#failSends(reason);
    for (const entry of this.#channels.values()) {
      clearTimeout(entry.retryTimer);
      this.#settle(entry, reason);
    }
    this.#setState('closed');
    this.dispatchEvent(new CustomEvent('closed', { detail: reason }));
  }
}
