// Types of @pgws/client. Checked against src/index.js by test/types.test.mjs
// (tsc: the code's own JSDoc types must provide what is declared here).

/** The subprotocol the client offers: `pgws.v2`. */
export const SUBPROTOCOL: 'pgws.v2';

/**
 * Close codes after which the client stops instead of reconnecting (state
 * `failed`, a `TerminalCloseError` emitted): 1003, 1008, 4400, 4401, 4403.
 * 3001 is terminal too when `token` is a fixed string.
 */
export const TERMINAL_CLOSE_CODES: readonly number[];

/**
 * Exponential backoff with jitter: uniform in [0, ceiling) (`jitter: 'full'`,
 * the default) or in [ceiling / 2, ceiling) (`'equal'`), where
 * ceiling = min(max, initial * 2^attempt).
 */
export function backoffDelay(
  attempt: number,
  options?: { initial?: number; max?: number; jitter?: 'full' | 'equal' },
  random?: () => number,
): number;

/** A JWT's `exp` in milliseconds since the epoch, or null. */
export function tokenExpiry(token: string): number | null;

/** Every error the client rejects with or emits: an error reply (`code` HTTP-like), or a subclass. */
export class PgwsError extends Error {
  constructor(code: number, reason: string, options?: { cause?: unknown });
  readonly code: number;
  readonly reason: string;
}

/** A publish refused before it was sent: too many (or too many bytes of) publishes wait. Code 429. */
export class PublishQueueFullError extends PgwsError {
  constructor(reason: string);
}

/**
 * A command that was not sent (code 503): no connection within
 * `readyTimeout`, the client was closed, or a terminal close (then `cause`
 * is the `TerminalCloseError`).
 */
export class NotConnectedError extends PgwsError {
  constructor(reason: string, options?: { cause?: unknown });
}

/** The server closed with a code retrying cannot fix; `code` is the close code. The client stopped. */
export class TerminalCloseError extends PgwsError {
  constructor(code: number, reason: string);
}

/** The `token` function threw (`cause`) or returned no string. Code 401; the client retries. */
export class TokenError extends PgwsError {
  constructor(reason: string, options?: { cause?: unknown });
}

/** Where a message stands in its channel: store it to resume with `subscribe(channel, { since })`. */
export interface Position {
  epoch: string;
  offset: number;
}

export interface SubscribedInfo {
  /** Present when the subscribe asked to recover (a `since`, or a reconnect). */
  recovered?: boolean;
  /** Messages replayed after this event (0 without recovery). */
  replayed: number;
  /** The channel's epoch and newest offset when the subscription became live. */
  epoch: string;
  offset: number;
}

export interface SubscriptionHandlers {
  /** A notification: the NOTIFY payload as sent, and its position. */
  message?: (data: string, position: Position) => void;
  subscribed?: (info: SubscribedInfo) => void;
  /** Messages may have been missed: reload what you show from the database. */
  resync?: (info: { reason: string }) => void;
  /** The server ended the subscription (a refreshed token no longer allows it). */
  unsubscribed?: (info: { reason: string }) => void;
  /** The server refused the subscribe (403, 429, 503 …). */
  error?: (error: PgwsError) => void;
  /** A client subscribed to the channel (with presence events; your own join comes too). */
  join?: (member: PresenceMember) => void;
  /** A client's subscription ended (unsubscribed, closed, or its gateway died). */
  leave?: (member: PresenceMember) => void;
}

/** A subscribed client, as presence lists it. */
export interface PresenceMember {
  /** Unique per connection across the cluster (opaque). */
  client: string;
  /** The token's `sub`, when it has one. */
  sub?: unknown;
  /** The token's `presence_info` claim, when it has one (bounded by the server). */
  info?: Record<string, unknown>;
}

export interface PresenceStats {
  /** Subscribed clients. */
  clients: number;
  /** Distinct `sub`s among them (a client without `sub` counts as its own user). */
  users: number;
}

export interface SubscribeOptions extends SubscriptionHandlers {
  /** A position stored earlier: replay every message after it (or `resync`). */
  since?: Position | null;
  /** Receive `join`/`leave` events (implied by a `join` or `leave` handler). Needs a token with `"presence": true`. */
  presence?: boolean;
  /** `false`: do not receive the messages this client publishes on the channel (its position still moves on). */
  echo?: boolean;
}

export class Subscription {
  /** Made by `client.subscribe`. */
  constructor(client: Client, channel: string, since: Position | null);
  readonly channel: string;
  /** The last position read; a reconnect recovers from it. Store it to resume after a reload. */
  readonly position: Position | null;
  on<E extends keyof SubscriptionHandlers>(event: E, listener: NonNullable<SubscriptionHandlers[E]>): this;
  off<E extends keyof SubscriptionHandlers>(event: E, listener: NonNullable<SubscriptionHandlers[E]>): this;
  unsubscribe(): void;
}

export interface ClientOptions {
  /** The JWT, or a function returning a fresh one (before each connect and before `exp`). */
  token: string | (() => string | Promise<string>);
  /** A WebSocket constructor, where there is no global one. */
  WebSocket?: unknown;
  /** Reconnect delays in ms (default 500 doubling to 30000, full jitter); a failing refresh retries with them too. */
  backoff?: { initial?: number; max?: number };
  /** ms `ready()` and `publish` wait for the connection before a NotConnectedError (default 10000). */
  readyTimeout?: number;
  /** ms between pings (default 20000). */
  pingInterval?: number;
  /** ms to wait for a ping's reply before reconnecting (default 10000). */
  pingTimeout?: number;
  /** ms before `exp` to refresh the token (default 30000; needs a token function). */
  refreshBefore?: number;
  /** ms for a connection attempt to open and be accepted before retrying (default 10000). */
  connectTimeout?: number;
  /** ms a connection must stay open before the backoff starts over (default 5000). */
  healthyAfter?: number;
  /** Publishes waiting for the connection or their reply at most (default 1000); beyond: PublishQueueFullError. */
  maxPendingPublishes?: number;
  /** Bytes of data in those publishes at most (default 1 MiB); beyond: PublishQueueFullError. */
  maxPendingPublishBytes?: number;
}

export type ClientState = 'idle' | 'connecting' | 'connected' | 'disconnected' | 'failed' | 'closed';

/** The server's reply to a publish: it queued the message for NOTIFY. */
export interface PublishReply {
  type: 'reply';
  id: number;
}

export interface ClientEvents {
  connecting: () => void;
  connected: () => void;
  disconnected: (info: { code: number; reason: string }) => void;
  resync: (subscription: Subscription, info: { reason: string }) => void;
  /** A TerminalCloseError (the client stopped), a TokenError, a failed refresh, a dead connection. */
  error: (error: PgwsError) => void;
}

export class Client {
  constructor(url: string, options: ClientOptions);
  readonly state: ClientState;
  /** In state `failed`: the close that stopped the client. */
  readonly failure: TerminalCloseError | null;
  /** Reconnects since the last connection that stayed open `healthyAfter` ms. */
  readonly attempt: number;
  /** Start connecting; after a terminal close, start again. */
  connect(): this;
  close(): void;
  /** Connected with every subscription live; rejects with a NotConnectedError after `timeout` (default `readyTimeout`). */
  ready(timeout?: number): Promise<void>;
  subscribe(channel: string, options?: SubscribeOptions): Subscription;
  /** Waits for `ready`, then resolves once the server queued the message for NOTIFY. */
  publish(channel: string, data: string): Promise<PublishReply>;
  /** Who is subscribed to `channel`, on every gateway (token claim `"presence": true`, server PGWS_PRESENCE=true); waits for `ready`. */
  presence(channel: string): Promise<PresenceMember[]>;
  /** How many clients and users are subscribed to `channel`, without the list; waits for `ready`. */
  presenceStats(channel: string): Promise<PresenceStats>;
  on<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): this;
  off<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): this;
}
