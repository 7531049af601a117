// The realtime client, mirroring realtime/client.py: a new ticket per connection, reconnects
// with exponential backoff and full jitter, resumes every channel with `since` (its last
// offset), drops duplicates, and hands `resync` to the channel's owner to reload over REST.
//
// state: 'connecting' | 'live' | 'catching-up' | 'reconnecting' | 'offline'
//   catching-up: connected, but a resumed channel has not replayed up to its `subscribed`
//   offset yet, or a resync reload is still running.

const RETRYABLE = new Set(['unavailable', 'rate_limited']);
// Close codes after which reconnecting would only repeat the refusal (realtime/disconnect.py
// has every code and its rule); any other close reconnects with backoff.
const CLOSE_POLICY = 1008;
const CLOSE_TOO_BIG = 1009;
const CLOSE_REVOKED = 4401;
const PING_EVERY_MS = 20_000;
const SILENT_FOR_MS = 50_000; // no frame for this long: the peer is gone, reconnect

export class Realtime extends EventTarget {
  constructor(ticket, { backoffBase = 500, backoffCap = 30_000 } = {}) {
    super();
    this.ticket = ticket; // async () => ({ticket})
    this.backoffBase = backoffBase;
    this.backoffCap = backoffCap;
    this.state = 'offline';
    this.connections = 0;
    this.duplicates = 0;
    this.gaps = 0;
    this.channels = new Map(); // channel -> {last, listeners, ready, catchingUp, target}
    this.ws = null;
    this.stopped = true;
    this.wake = null; // ends the current backoff sleep early
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.loop = this.run();
  }

  stop() {
    this.stopped = true;
    this.wake?.();
    this.ws?.close(1000, 'bye');
    this.setState('offline');
  }

  /** Reconnect now instead of waiting out the backoff (e.g. the network came back). */
  retryNow() {
    if (this.stopped) this.start();
    else this.wake?.();
  }

  backoffDelay(attempt) {
    return Math.random() * Math.min(this.backoffCap, this.backoffBase * 2 ** Math.min(attempt, 30));
  }

  // -- subscriptions --------------------------------------------------------------------

  /**
   * Listen to a channel: listener = {event(e), resync(), presence(frame), error(frame)}.
   * `since` resumes after that offset. Returns {ready, close}: ready resolves on `subscribed`.
   */
  subscribe(channel, listener, { since } = {}) {
    let entry = this.channels.get(channel);
    if (!entry) {
      entry = { last: since ?? null, listeners: new Set(), catchingUp: false, target: null };
      entry.ready = new Promise((resolve, reject) => Object.assign(entry, { resolve, reject }));
      entry.ready.catch(() => {});
      this.channels.set(channel, entry);
      this.sendSubscribe(channel);
    }
    entry.listeners.add(listener);
    const close = () => {
      entry.listeners.delete(listener);
      if (entry.listeners.size === 0 && this.channels.get(channel) === entry) {
        this.channels.delete(channel);
        this.send({ op: 'unsubscribe', channel });
        this.updateState();
      }
    };
    return { ready: entry.ready, close };
  }

  send(frame) {
    if (this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  sendSubscribe(channel) {
    const entry = this.channels.get(channel);
    if (!entry || this.ws?.readyState !== WebSocket.OPEN) return;
    const frame = { op: 'subscribe', channel };
    entry.sentSince = entry.last;
    if (entry.last !== null) {
      frame.since = entry.last;
      entry.catchingUp = true;
      entry.target = null;
    }
    this.send(frame);
    this.updateState();
  }

  // -- connection -----------------------------------------------------------------------

  async run() {
    let attempt = 0;
    while (!this.stopped) {
      this.setState(this.connections ? 'reconnecting' : 'connecting');
      let served = false;
      try {
        served = await this.connectOnce();
      } catch (fatal) {
        this.stopped = true;
        this.setState('offline');
        this.dispatchEvent(new CustomEvent('fatal', { detail: fatal }));
        return;
      }
      if (this.stopped) return;
      if (served) attempt = 0;
      this.setState('reconnecting');
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, this.backoffDelay(attempt));
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = null;
      attempt += 1;
    }
  }

  /** One socket from ticket to close; resolves with "did the server send us anything". */
  async connectOnce() {
    let ticket;
    try {
      ({ ticket } = await this.ticket());
    } catch (error) {
      if (error.status === 401) throw Object.assign(new Error('signed out'), { code: CLOSE_REVOKED });
      return false; // network down, 5xx, 429: try again after the backoff
    }
    if (this.stopped) return false;
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${scheme}//${location.host}/api/v1/ws?ticket=${encodeURIComponent(ticket)}`);
    return new Promise((resolve, reject) => {
      let served = false;
      let lastSeen = Date.now();
      let heartbeat = null;
      const finish = (code) => {
        if (ws.onclose === null) return;
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        clearInterval(heartbeat);
        if (this.ws === ws) this.ws = null;
        for (const entry of this.channels.values()) entry.catchingUp = false;
        if (code === CLOSE_REVOKED) reject(Object.assign(new Error('session ended'), { code }));
        else if (code === CLOSE_POLICY || code === CLOSE_TOO_BIG) {
          reject(Object.assign(new Error('refused by the server'), { code }));
        } else resolve(served);
      };
      ws.onopen = () => {
        this.ws = ws;
        this.connections += 1;
        this.setState('live');
        for (const channel of this.channels.keys()) this.sendSubscribe(channel);
        heartbeat = setInterval(() => {
          if (Date.now() - lastSeen > SILENT_FOR_MS) {
            ws.close(4000, 'heartbeat timeout');
            finish(1006);
          } else {
            this.send({ op: 'ping' });
          }
        }, PING_EVERY_MS);
      };
      ws.onmessage = (message) => {
        served = true;
        lastSeen = Date.now();
        this.onFrame(JSON.parse(message.data));
      };
      ws.onclose = (event) => finish(event.code);
      ws.onerror = () => {}; // a close event follows with the code
    });
  }

  // -- frames ---------------------------------------------------------------------------

  onFrame(frame) {
    const entry = frame.channel === undefined ? undefined : this.channels.get(frame.channel);
    if (frame.op === 'event' && entry) this.onEvent(entry, frame);
    else if (frame.op === 'subscribed' && entry) this.onSubscribed(entry, frame);
    else if (frame.op === 'presence' && entry) entry.listeners.forEach((l) => l.presence?.(frame));
    else if (frame.op === 'error') this.onError(entry, frame);
    this.updateState();
  }

  onEvent(entry, frame) {
    if (entry.last !== null) {
      if (frame.offset <= entry.last) {
        this.duplicates += 1;
        return;
      }
      if (frame.prev > entry.last) this.gaps += 1;
    }
    entry.last = frame.offset;
    if (entry.catchingUp && entry.target !== null && entry.last >= entry.target) entry.catchingUp = false;
    entry.listeners.forEach((listener) => listener.event?.(frame));
  }

  onSubscribed(entry, frame) {
    if (entry.sentSince === null || entry.sentSince === undefined) {
      entry.last = Math.max(frame.offset, entry.last ?? frame.offset);
    } else {
      entry.target = frame.offset; // the replay that follows ends there
      if (entry.last >= frame.offset) entry.catchingUp = false;
    }
    entry.retries = 0;
    entry.resolve(frame.offset);
  }

  onError(entry, frame) {
    this.dispatchEvent(new CustomEvent('error-frame', { detail: frame }));
    if (!entry) return;
    const channel = frame.channel;
    if (frame.code === 'resync') {
      // Too far behind to replay: subscribe afresh and let the owners reload over REST.
      entry.last = null;
      this.sendSubscribe(channel);
      entry.catchingUp = true;
      const reloads = [...entry.listeners].map((listener) => listener.resync?.());
      Promise.allSettled(reloads).then(() => {
        entry.catchingUp = false;
        this.updateState();
      });
    } else if (RETRYABLE.has(frame.code)) {
      entry.retries = (entry.retries ?? 0) + 1;
      setTimeout(() => this.sendSubscribe(channel), this.backoffDelay(entry.retries));
    } else {
      this.channels.delete(channel);
      entry.reject(Object.assign(new Error(`${frame.code}: ${frame.detail ?? channel}`), { frame }));
      entry.listeners.forEach((listener) => listener.error?.(frame));
    }
  }

  // -- state ----------------------------------------------------------------------------

  updateState() {
    if (this.ws?.readyState !== WebSocket.OPEN) return;
    const behind = [...this.channels.values()].some((entry) => entry.catchingUp);
    this.setState(behind ? 'catching-up' : 'live');
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: state }));
  }
}
