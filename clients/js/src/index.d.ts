/** The subprotocol the client offers: `pgws.v2`. */
export const SUBPROTOCOL: 'pgws.v2';

/** Exponential backoff with full jitter: uniform in [0, min(max, initial * 2^attempt)). */
export function backoffDelay(
  attempt: number,
  options?: { initial?: number; max?: number },
  random?: () => number,
): number;

/** A JWT's `exp` in milliseconds since the epoch, or null. */
export function tokenExpiry(token: string): number | null;

/** An error reply, or a command that could not be sent (503 while disconnected). */
export class PgwsError extends Error {
  constructor(code: number, reason: string);
  readonly code: number;
  readonly reason: string;
}

/** A publish refused before it was sent: too many (or too many bytes of) publishes wait for their reply. Code 429. */
export class PublishQueueFullError extends PgwsError {
  constructor(reason: string);
  readonly code: 429;
}

/** Where a message stands in its channel. */
export interface Position {
  epoch: string;
  offset: number;
}

export interface SubscribedInfo {
  /** Present when the subscription recovered from a previous position. */
  recovered?: boolean;
  replayed: number;
  epoch: string;
  offset: number;
}

export interface SubscriptionHandlers {
  /** A notification: the NOTIFY payload as sent, and its position. */
  message?: (data: string, position: Position | null) => void;
  subscribed?: (info: SubscribedInfo) => void;
  /** Messages may have been missed: reload what you show from the database. */
  resync?: (info: { reason: string }) => void;
  /** The server ended the subscription (a refreshed token no longer allows it). */
  unsubscribed?: (info: { reason: string }) => void;
  error?: (error: PgwsError) => void;
}

type Listener = (...args: any[]) => void;

export class Subscription {
  readonly channel: string;
  /** The last position read; a reconnect recovers from it. */
  position: Position | null;
  on<E extends keyof SubscriptionHandlers>(event: E, listener: NonNullable<SubscriptionHandlers[E]>): this;
  off(event: string, listener: Listener): this;
  unsubscribe(): void;
}

export interface ClientOptions {
  /** The JWT, or a function returning a fresh one (before each connect and before `exp`). */
  token: string | (() => string | Promise<string>);
  /** A WebSocket constructor, where there is no global one. */
  WebSocket?: unknown;
  /** Reconnect delays in ms (default 500 doubling to 30000, full jitter). */
  backoff?: { initial?: number; max?: number };
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
  /** Publishes waiting for their reply at most (default 1000); beyond: PublishQueueFullError. */
  maxPendingPublishes?: number;
  /** Bytes of data in those publishes at most (default 1 MiB); beyond: PublishQueueFullError. */
  maxPendingPublishBytes?: number;
}

export type ClientState = 'idle' | 'connecting' | 'connected' | 'disconnected' | 'closed';

export class Client {
  constructor(url: string, options: ClientOptions);
  readonly state: ClientState;
  /** Reconnects since the last connection that stayed open `healthyAfter` ms. */
  readonly attempt: number;
  connect(): this;
  close(): void;
  subscribe(channel: string, handlers?: SubscriptionHandlers): Subscription;
  /** Resolves once the server queued the message for NOTIFY. */
  publish(channel: string, data: string): Promise<unknown>;
  on(event: 'connecting' | 'connected', listener: () => void): this;
  on(event: 'disconnected', listener: (info: { code: number; reason: string }) => void): this;
  on(event: 'resync', listener: (subscription: Subscription, info: { reason: string }) => void): this;
  on(event: 'error', listener: (error: unknown) => void): this;
  off(event: string, listener: Listener): this;
}
