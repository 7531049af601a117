// Types of jangteo.js, jangteo's realtime client (clients/js/README.md).

export const WS_PATH: '/api/v1/ws';
export const SSE_PATH: '/api/v1/sse';

export interface Defaults {
  /** ms; the n-th failed attempt in a row waits a random time up to base * 2^n. */
  readonly backoffBase: number;
  /** ms; no wait is longer (Retry-After aside). */
  readonly backoffCap: number;
  /** ms between WebSocket `ping` frames. */
  readonly pingEveryMs: number;
  /** ms without anything received (frame or heartbeat) after which the connection is dropped. */
  readonly silentForMs: number;
  /** WebSocket attempts in a row that never got a frame (tickets coming fine) before SSE. */
  readonly websocketFailuresBeforeSse: number;
  /** ms on SSE after which a reconnect tries the WebSocket again. */
  readonly websocketRetryMs: number;
}
export const DEFAULTS: Defaults;

export const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  ABNORMAL: 1006;
  POLICY: 1008;
  TOO_BIG: 1009;
  INTERNAL_ERROR: 1011;
  TRY_AGAIN_LATER: 1013;
  SESSION_ENDED: 4401;
}>;

export type RuleAction = 'reconnect-now' | 'backoff' | 'stop';

export interface Rule {
  action: RuleAction;
  /** The rule in words. */
  then: string;
  /** Stopping because the session is over: sign in again. */
  sessionEnded: boolean;
}

/** What to do after a close (WebSocket close code, or the `code` of an SSE `close` message). */
export function closeRule(code: number): Rule;
/** What to do after an HTTP refusal of the ticket request or the SSE request. */
export function statusRule(status: number, what: 'ticket' | 'sse'): Rule;
/** Full jitter: a random delay in [0, min(cap, base * 2^attempt)] ms. */
export function backoffDelay(
  attempt: number,
  options?: { base?: number; cap?: number; random?: () => number },
): number;
/** A Retry-After value (seconds or an HTTP date) in ms; null when absent or malformed. */
export function parseRetryAfter(value: string | number | null | undefined, now?: number): number | null;
/** The SSE cursor: the channels' offsets in order, comma-joined, empty where none yet. */
export function sseCursor(channels: readonly string[], offsets: ReadonlyMap<string, number>): string;
/** The URL of one SSE attempt. */
export function sseUrl(
  baseUrl: string,
  ticket: string,
  channels: readonly string[],
  offsets: ReadonlyMap<string, number>,
): string;

export interface SseMessage {
  data: string;
  /** The last `id` seen on the stream (the cursor), '' before any. */
  id: string;
  event: string;
}
export interface SseParser {
  /** Text as it arrives, in pieces of any size. */
  push(text: string): void;
  readonly lastEventId: string;
}
export function createSseParser(onMessage: (message: SseMessage) => void): SseParser;
/** A v4 UUID (works outside secure contexts too). */
export function uuid4(): string;

export type ClosedKind = 'closed' | 'sessionEnded' | 'fatal';

/** Why the client stopped; also the rejection of what was waiting then. */
export class ClosedError extends Error {
  constructor(kind: ClosedKind, code: number | null, message: string);
  readonly kind: ClosedKind;
  /** A close code, an HTTP status, or null. */
  readonly code: number | null;
}

export class SubscriptionError extends Error {
  constructor(code: string, channel: string, detail?: string | null);
  /** forbidden, bad_channel, too_many_subscriptions, ... or 'unsubscribed' (by the app). */
  readonly code: string;
  readonly channel: string;
  readonly detail: string | null;
}

export class SendError extends Error {
  constructor(code: string, clientId: string | null, detail: string | null | undefined, retryable: boolean);
  /** not_found, rate_limited, unavailable, bad_frame, disconnected, superseded. */
  readonly code: string;
  readonly clientId: string | null;
  readonly detail: string | null;
  /** Send again with the same clientId: it is stored once. */
  readonly retryable: boolean;
}

export class TransportError extends Error {
  constructor(message: string);
}

export class TicketError extends Error {
  constructor(status: number, retryAfter?: string | number | null, detail?: string);
  readonly status: number;
  /** The Retry-After header (seconds), when the server sent one. */
  readonly retryAfter: string | number | null;
}

/** The ticket of a `POST /api/v1/ws/ticket` response; throws TicketError for any other status. */
export function ticketFromResponse(response: Response): Promise<string>;

export type State = 'idle' | 'connecting' | 'live' | 'reconnecting' | 'closed';
export type Transport = 'websocket' | 'sse';

export interface ClientOptions extends Partial<Defaults> {
  /**
   * A new single-use ticket, asked before every connection attempt (typically
   * `POST /api/v1/ws/ticket` with the app's access token). To be understood, a refusal
   * throws an error with `status` (the HTTP status) and, for 429 and 503, `retryAfter`:
   * TicketError, as `ticketFromResponse` throws it. Errors without `status` count as network
   * failures and are retried.
   */
  ticket: () => Promise<string>;
  /** The server's origin; default: the page's (`location.origin`). */
  url?: string;
  /** 'auto' (default): WebSocket, and SSE where WebSockets cannot connect. */
  transport?: 'auto' | Transport;
  /** The random source of the jitter; default Math.random. */
  random?: () => number;
}

export interface EventFrame<Data = unknown> {
  op: 'event';
  channel: string;
  offset: number;
  prev: number;
  ts: number;
  type: string;
  data: Data;
}

export interface PresenceFrame {
  op: 'presence';
  channel: string;
  online: number[];
  typing: number[];
}

export interface ResyncNotice {
  channel: string;
  /** The `subscribed` offset of the fresh subscription; reload what is at or before it. */
  offset: number;
}

export interface ChannelError {
  code: string;
  channel: string;
  detail: string | null;
  /** true for unavailable and rate_limited: the subscription is retried after retryInMs. */
  retrying: boolean;
  retryInMs: number | null;
}

export interface ErrorFrame {
  op: 'error';
  code: string;
  detail?: string;
  channel?: string;
  client_id?: string;
}

export interface Listener<Data = unknown> {
  /** Each event once, in offset order. */
  event?(event: EventFrame<Data>): void;
  /** Events were lost for good: reload the channel's state over REST (subscribed again already). */
  resync?(notice: ResyncNotice): void;
  presence?(frame: PresenceFrame): void;
  error?(error: ChannelError): void;
}

export interface Subscription {
  readonly channel: string;
  /** The `subscribed` offset; rejects with SubscriptionError, or ClosedError if the client stops first. */
  readonly ready: Promise<number>;
  /** Remove this listener; the channel is unsubscribed when it has none left. */
  unsubscribe(): void;
}

export interface ChatMessage {
  room_id: number;
  id: number;
  sender_id: number;
  body: string;
  client_id: string;
  created_at: string;
}

export interface StateDetail {
  state: State;
  transport: Transport | null;
}

export interface BackoffDetail {
  delayMs: number;
  /** Failed attempts in a row before this wait. */
  attempt: number;
}

export interface ClientEventMap {
  state: CustomEvent<StateDetail>;
  closed: CustomEvent<ClosedError>;
  backoff: CustomEvent<BackoffDetail>;
  'catching-up': CustomEvent<boolean>;
  'error-frame': CustomEvent<ErrorFrame>;
  'protocol-error': CustomEvent<{ message: string; data: unknown }>;
}

export class RealtimeClient extends EventTarget {
  constructor(options: ClientOptions);
  readonly state: State;
  readonly transport: Transport | null;
  readonly closedReason: ClosedError | null;
  /** Sockets and streams opened. */
  readonly connections: number;
  /** Events dropped because their offset was at or below the channel's last. */
  readonly duplicates: number;
  /** Events whose prev was past the channel's last offset (then resumed with since). */
  readonly gaps: number;
  /** Some resumed channel has not replayed up to its `subscribed` offset yet. */
  readonly catchingUp: boolean;
  /** Subscribed channels, in subscription order. */
  readonly channels: string[];

  connect(): this;
  close(): void;
  reconnectNow(): void;
  lastOffset(channel: string): number | null;
  subscribe<Data = unknown>(
    channel: string,
    listener: Listener<Data> | ((event: EventFrame<Data>) => void),
    options?: { since?: number | null },
  ): Subscription;
  /** WebSocket only: rejects with TransportError on SSE. */
  sendMessage(room: number, body: string, options?: { clientId?: string }): Promise<ChatMessage>;
  /** WebSocket only: throws TransportError on SSE; false when no socket is open. */
  typing(room: number): boolean;
  /** WebSocket only: resolves on the server's pong. */
  ping(): Promise<void>;

  addEventListener<K extends keyof ClientEventMap>(
    type: K,
    listener: (event: ClientEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof ClientEventMap>(
    type: K,
    listener: (event: ClientEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}
