// @ts-check
/**
 * pgws client: protocol v2 of postgres-websockets (clustered) for browsers
 * and Node — subscriptions with handlers, recovery after every reconnect,
 * publish with replies, token refresh, and a dead-connection check.
 * No dependencies. See README.md and docs/protocol.md ("Protocol v2").
 */

const utf8 = new TextEncoder();

/** The subprotocol the client offers. */
export const SUBPROTOCOL = 'pgws.v2';

/**
 * Close codes after which reconnecting cannot help, so the client stops
 * (state `failed`) and emits a TerminalCloseError: 1003 and 1008 (a frame
 * the server cannot use: a client bug), 4400 (the first frame was not
 * `connect`), 4401 (the token is missing, invalid or expired), 4403 (its
 * claims allow nothing). 3001 (the token expired while the socket was
 * open) is terminal too when `token` is a fixed string — the same token
 * would be refused — and not when it is a function, which is asked again.
 * Every other close (1001 draining, 1006, 1011, 1013, 3008, 3009, 3010,
 * 3011 — a refresh for another identity: a new connection with the new
 * token — 4408, a ping or connect timeout) is retried with backoff.
 */
export const TERMINAL_CLOSE_CODES = Object.freeze([1003, 1008, 4400, 4401, 4403]);

/**
 * Exponential backoff with jitter: with `jitter: 'full'` (the default) a
 * uniformly random delay in [0, ceiling), with `'equal'` in
 * [ceiling / 2, ceiling), where ceiling = min(max, initial * 2^attempt).
 * @param {number} attempt 0 for the first retry
 * @param {{initial?: number, max?: number, jitter?: 'full' | 'equal'}} [options] milliseconds
 * @param {() => number} [random] in [0, 1)
 * @returns {number}
 */
export function backoffDelay(attempt, { initial = 500, max = 30000, jitter = 'full' } = {}, random = Math.random) {
  const ceiling = Math.min(max, initial * 2 ** Math.min(attempt, 30));
  const floor = jitter === 'equal' ? ceiling / 2 : 0;
  return Math.floor(floor + random() * (ceiling - floor));
}

/**
 * When a JWT expires, in milliseconds since the epoch (null: no `exp`, or
 * not a JWT). The signature is not checked: the server does that.
 * @param {string} token
 * @returns {number | null}
 */
export function tokenExpiry(token) {
  try {
    const part = token.split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const padded = b64 + '='.repeat((4 - (b64.length % 4)) % 4);
    const claims = JSON.parse(atob(padded));
    return typeof claims.exp === 'number' ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

/**
 * An error reply from the server, or a command or connection that failed.
 * Every error the client rejects with or emits is one (or a subclass).
 */
export class PgwsError extends Error {
  /** @param {number} code @param {string} reason @param {{cause?: unknown}} [options] */
  constructor(code, reason, options) {
    super(`${code} ${reason}`, options);
    this.name = 'PgwsError';
    /** HTTP-like code of a reply (400, 401, 403, 409, 413, 429, 503); a TerminalCloseError's is the close code. */
    this.code = code;
    this.reason = reason;
  }
}

/**
 * A publish refused by the client itself, before anything was sent: too
 * many publishes (or bytes) already wait for the server's reply
 * (`maxPendingPublishes`, `maxPendingPublishBytes`). Code 429; retry once
 * earlier publishes have settled.
 */
export class PublishQueueFullError extends PgwsError {
  /** @param {string} reason */
  constructor(reason) {
    super(429, reason);
    this.name = 'PublishQueueFullError';
  }
}

/**
 * A command that was not sent (code 503): no connection within
 * `readyTimeout`, the client was closed, or the server refused the
 * connection for good (then `cause` is the TerminalCloseError).
 */
export class NotConnectedError extends PgwsError {
  /** @param {string} reason @param {{cause?: unknown}} [options] */
  constructor(reason, options) {
    super(503, reason, options);
    this.name = 'NotConnectedError';
  }
}

/**
 * The server closed the connection with a code that retrying cannot fix
 * (TERMINAL_CLOSE_CODES; 3001 with a fixed token): the client stopped
 * (state `failed`) until `connect()` is called. `code` is the close code,
 * `reason` the server's reason text.
 */
export class TerminalCloseError extends PgwsError {
  /** @param {number} code @param {string} reason */
  constructor(code, reason) {
    super(code, reason);
    this.name = 'TerminalCloseError';
  }
}

/**
 * The `token` function threw, or returned no string (code 401); `cause` is
 * what it threw. The client retries with backoff.
 */
export class TokenError extends PgwsError {
  /** @param {string} reason @param {{cause?: unknown}} [options] */
  constructor(reason, options) {
    super(401, reason, options);
    this.name = 'TokenError';
  }
}

class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this.listeners = new Map();
  }

  /** @param {string} event @param {Function} listener @returns {this} */
  on(event, listener) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event)?.add(listener);
    return this;
  }

  /** @param {string} event @param {Function} listener @returns {this} */
  off(event, listener) {
    this.listeners.get(event)?.delete(listener);
    return this;
  }

  /**
   * Call each listener; one that throws does not stop the others or the
   * client: its exception is thrown again outside (the runtime reports it
   * as uncaught, as for a DOM event listener).
   * @param {string} event @param {...any} args
   */
  emit(event, ...args) {
    for (const listener of [...(this.listeners.get(event) ?? [])]) {
      try {
        listener(...args);
      } catch (e) {
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
  }
}

/**
 * @typedef {object} Position where a message stands in its channel
 * @property {string} epoch
 * @property {number} offset
 */

/** @param {unknown} since @returns {Position | null} */
function checkedPosition(since) {
  if (since === undefined || since === null) return null;
  const p = /** @type {{epoch?: unknown, offset?: unknown}} */ (since);
  if (typeof p !== 'object' || typeof p.epoch !== 'string' || !Number.isSafeInteger(p.offset) || /** @type {number} */ (p.offset) < 0) {
    throw new TypeError('since must be a position {epoch: string, offset: integer >= 0}, as in subscription.position');
  }
  return { epoch: p.epoch, offset: /** @type {number} */ (p.offset) };
}

/**
 * One channel's subscription. Events: `message` (data, {epoch, offset}),
 * `subscribed` ({recovered, replayed, epoch, offset}), `resync`
 * ({reason}) — the client may have missed messages and should reload what
 * it shows — `unsubscribed` ({reason}), `error` (PgwsError), and with
 * presence events (`{presence: true}`, or a `join`/`leave` handler given to
 * `subscribe`) `join` and `leave` (member: {client, sub?, info?}).
 */
export class Subscription extends Emitter {
  /** @param {Client} client @param {string} channel @param {Position | null} since */
  constructor(client, channel, since) {
    super();
    this.client = client;
    this.channel = channel;
    /** The last position read: where a reconnect recovers from. @type {Position | null} */
    this.position = since;
    /** A subscribe is under way: live frames are ignored, commands wait. */
    this.recovering = false;
    this.active = true;
    /** Subscribe options sent with every (re)subscribe. */
    this.options = { presence: false, echo: true };
  }

  /** Stop reading the channel. */
  unsubscribe() {
    if (!this.active) return;
    this.active = false;
    this.client.forget(this);
  }

  /** @param {any} frame */
  onMessage(frame) {
    if (this.recovering) return;
    if (typeof frame.offset !== 'number' || typeof frame.epoch !== 'string') return; // not v2
    const position = { epoch: frame.epoch, offset: frame.offset };
    const last = this.position;
    if (last) {
      if (position.epoch === last.epoch) {
        if (position.offset <= last.offset) return; // already delivered
        if (position.offset > last.offset + 1) {
          // A gap in one epoch: the server has the rest in history.
          this.client.recover(this);
          return;
        }
      } else {
        this.emit('resync', { reason: 'the channel started a new epoch: messages may have been missed' });
      }
    }
    this.position = position;
    // An `echo` frame: this client's own message (echo: false), only its place.
    if (frame.type === 'echo') return;
    this.emit('message', frame.data, position);
  }
}

/**
 * @typedef {object} ClientOptions
 * @property {string | (() => string | Promise<string>)} token the JWT, or a
 *   function returning a fresh one (called before every connect and before
 *   the token expires, for `refresh`)
 * @property {any} [WebSocket] the WebSocket constructor (default: the global)
 * @property {{initial?: number, max?: number}} [backoff] reconnect delays, ms;
 *   a failing token refresh is retried with the same delays (equal jitter)
 * @property {number} [readyTimeout] ms `ready()` and commands (`publish`)
 *   wait for the connection and the subscriptions to be live before they
 *   reject with a NotConnectedError (default 10000)
 * @property {number} [pingInterval] ms between pings (default 20000)
 * @property {number} [pingTimeout] ms to wait for a ping's reply before the
 *   connection is taken for dead (default 10000)
 * @property {number} [refreshBefore] ms before `exp` to refresh (default 30000)
 * @property {number} [connectTimeout] ms for the socket to open and `connect`
 *   to be answered before trying again (default 10000)
 * @property {number} [healthyAfter] ms a connection must stay open before the
 *   backoff starts again from its first delay (default 5000): a server that
 *   closes right after `connect` (draining, overloaded) is retried ever
 *   more slowly, not every few hundred milliseconds
 * @property {number} [maxPendingPublishes] publishes waiting for the
 *   connection or their reply at most (default 1000); beyond it `publish`
 *   rejects with a PublishQueueFullError
 * @property {number} [maxPendingPublishBytes] bytes of `data` in those
 *   publishes at most (default 1 MiB)
 */

/**
 * @typedef {object} Waiting a command (or a `ready()`) waiting for the client to be ready
 * @property {any} command null for `ready()`
 * @property {((reply: any, error?: PgwsError) => void) | undefined} onReply
 * @property {(reply: any) => void} resolve
 * @property {(error: PgwsError) => void} reject
 * @property {ReturnType<typeof setTimeout>} timer
 */

/**
 * A connection that stays up: reconnects with backoff, resubscribes and
 * recovers; commands wait for it. Events: `connecting`, `connected`,
 * `disconnected` ({code, reason}), `error` (PgwsError), `resync`
 * (subscription, {reason}).
 */
export class Client extends Emitter {
  /** @param {string} url ws:// or wss:// @param {ClientOptions} options */
  constructor(url, options) {
    super();
    this.url = url;
    this.options = {
      readyTimeout: 10000,
      pingInterval: 20000,
      pingTimeout: 10000,
      refreshBefore: 30000,
      connectTimeout: 10000,
      healthyAfter: 5000,
      maxPendingPublishes: 1000,
      maxPendingPublishBytes: 1 << 20,
      ...options,
    };
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (!this.WebSocket) {
      throw new Error('no WebSocket: pass options.WebSocket, or run Node 22+ (Node 20 and 21: node --experimental-websocket)');
    }
    /** @type {'idle' | 'connecting' | 'connected' | 'disconnected' | 'failed' | 'closed'} */
    this.state = 'idle';
    /** Why the client stopped, in state `failed`. @type {TerminalCloseError | null} */
    this.failure = null;
    /** @type {Map<string, Subscription>} */
    this.subscriptions = new Map();
    /** @type {Map<number, {resolve: (reply: any) => void, reject: (error: PgwsError) => void}>} */
    this.pending = new Map();
    /** Commands and `ready()`s waiting for the client to be ready, in order. @type {Waiting[]} */
    this.waiting = [];
    this.nextId = 1;
    /** Reconnects since the last connection that stayed healthy. */
    this.attempt = 0;
    /** Publishes waiting or sent and not yet answered: how many, and their bytes. */
    this.publishing = { count: 0, bytes: 0 };
    /** @type {any} */
    this.ws = null;
    /** Timers of the current connection, cleared when it ends. @type {Set<ReturnType<typeof setTimeout>>} */
    this.timers = new Set();
  }

  /** Start connecting (done by `subscribe`, `publish` and `ready` too); after a terminal close, start again. @returns {this} */
  connect() {
    if (this.state === 'failed') {
      this.failure = null;
      this.attempt = 0;
    }
    if (this.state === 'idle' || this.state === 'disconnected' || this.state === 'failed') this.open();
    return this;
  }

  /** Close for good: waiting commands reject with a NotConnectedError. */
  close() {
    this.state = 'closed';
    this.teardown(1000, 'closed by the client');
  }

  /**
   * Resolves once connected with every subscription live (each subscribe
   * answered); rejects with a NotConnectedError after `timeout` ms (default
   * `readyTimeout`), at a terminal close, or at `close()`.
   * @param {number} [timeout] @returns {Promise<void>}
   */
  ready(timeout = this.options.readyTimeout) {
    return this.whenReady(null, undefined, timeout);
  }

  /**
   * Subscribe to `channel`; handlers for its events may be given here, and
   * `since`, a position stored earlier (`subscription.position`), to
   * replay what was published after it. `presence` (also implied by a
   * `join` or `leave` handler): receive `join`/`leave` events; `echo: false`:
   * do not receive what this client publishes on the channel (an `echo`
   * frame keeps the position instead).
   * @param {string} channel
   * @param {{since?: Position | null, presence?: boolean, echo?: boolean, message?: Function, subscribed?: Function, resync?: Function, unsubscribed?: Function, error?: Function, join?: Function, leave?: Function}} [options]
   * @returns {Subscription}
   */
  subscribe(channel, options = {}) {
    if (this.subscriptions.has(channel)) throw new Error(`already subscribed to ${channel}`);
    const { since, presence, echo, ...handlers } = options;
    const sub = new Subscription(this, channel, checkedPosition(since));
    for (const [event, fn] of Object.entries(handlers)) if (fn) sub.on(event, fn);
    sub.options = {
      presence: Boolean(presence ?? (handlers.join || handlers.leave)),
      echo: echo ?? true,
    };
    sub.on('resync', (/** @type {{reason: string}} */ info) => this.emit('resync', sub, info));
    this.subscriptions.set(channel, sub);
    if (this.state === 'connected') this.sendSubscribe(sub);
    else if (this.state === 'idle') this.open();
    return sub;
  }

  /**
   * Publish `data` on `channel`: waits for the connection (and the
   * subscriptions made before it to be live), then resolves with the reply
   * once the server queued the message for NOTIFY. Rejects with a
   * PgwsError: the server's refusal (403, 413, 429, 503), a
   * NotConnectedError (nothing sent: no connection within `readyTimeout`,
   * a terminal close, `close()`), a PublishQueueFullError (nothing sent:
   * too many publishes wait), or 503 `disconnected` (sent, not confirmed).
   * @param {string} channel @param {string} data
   * @returns {Promise<{type: 'reply', id: number}>}
   */
  publish(channel, data) {
    const { maxPendingPublishes, maxPendingPublishBytes } = this.options;
    const bytes = utf8.encode(String(data)).length;
    const waiting = this.publishing;
    if (waiting.count >= maxPendingPublishes) {
      return Promise.reject(new PublishQueueFullError(`${waiting.count} publishes wait for their reply (maxPendingPublishes)`));
    }
    if (waiting.count > 0 && waiting.bytes + bytes > maxPendingPublishBytes) {
      return Promise.reject(new PublishQueueFullError(`${waiting.bytes} bytes of publishes wait for their reply (maxPendingPublishBytes)`));
    }
    waiting.count++;
    waiting.bytes += bytes;
    const settled = () => {
      waiting.count--;
      waiting.bytes -= bytes;
    };
    return this.whenReady({ type: 'publish', channel, data }, settled, this.options.readyTimeout);
  }

  /**
   * Who is subscribed to `channel` (on every gateway): resolves with the
   * members, `{client, sub?, info?}`. Needs a token with `"presence": true`
   * and a server with PGWS_PRESENCE=true; waits for the connection as
   * `publish` does; rejects with a PgwsError (403, 404, 413 over
   * PGWS_PRESENCE_MAX_LIST, 503).
   * @param {string} channel
   */
  presence(channel) {
    return this.whenReady({ type: 'presence', channel }, undefined, this.options.readyTimeout).then((reply) => reply.members);
  }

  /**
   * How many clients and distinct users are subscribed to `channel`:
   * resolves with `{clients, users}`.
   * @param {string} channel
   */
  presenceStats(channel) {
    return this.whenReady({ type: 'presence_stats', channel }, undefined, this.options.readyTimeout)
      .then((reply) => ({ clients: reply.clients, users: reply.users }));
  }

  /** @param {Subscription} sub */
  forget(sub) {
    this.subscriptions.delete(sub.channel);
    if (this.state === 'connected') this.request({ type: 'unsubscribe', channel: sub.channel }).catch(() => {});
    this.flush();
  }

  /** A gap was seen: subscribe again from the last position. @param {Subscription} sub */
  recover(sub) {
    if (this.state !== 'connected' || sub.recovering) return;
    sub.recovering = true;
    this.request({ type: 'unsubscribe', channel: sub.channel }, (_, error) => {
      if (!error && sub.active && this.state === 'connected') return this.sendSubscribe(sub);
      sub.recovering = false;
      this.flush();
    }).catch(() => {});
  }

  // --- internals -----------------------------------------------------------

  /** Connected, and no subscription is being set up. */
  isReady() {
    if (this.state !== 'connected') return false;
    for (const sub of this.subscriptions.values()) if (sub.recovering) return false;
    return true;
  }

  /** Why nothing can wait for the connection now, or null. @returns {NotConnectedError | null} */
  refusal() {
    if (this.state === 'closed') return new NotConnectedError('the client is closed');
    if (this.state === 'failed') {
      const f = this.failure;
      return new NotConnectedError(`the server refused the connection for good (${f?.message}): call connect() to try again`, { cause: f });
    }
    return null;
  }

  /**
   * Send `command` once the client is ready — at once if it is and nothing
   * waits before it — or resolve (command null: `ready()`); reject with a
   * NotConnectedError after `timeout` ms. `onReply` as for `request`.
   * @param {any} command @param {((reply: any, error?: PgwsError) => void) | undefined} onReply @param {number} timeout
   * @returns {Promise<any>}
   */
  whenReady(command, onReply, timeout) {
    const refused = this.refusal();
    if (refused) {
      onReply?.(null, refused);
      return Promise.reject(refused);
    }
    if (this.isReady() && this.waiting.length === 0) {
      return command ? this.request(command, onReply) : Promise.resolve();
    }
    if (this.state === 'idle') this.open();
    return new Promise((resolve, reject) => {
      /** @type {Waiting} */
      const entry = {
        command,
        onReply,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiting.splice(this.waiting.indexOf(entry), 1);
          const what = this.state === 'connected' ? 'subscriptions not live' : 'not connected';
          const error = new NotConnectedError(`${what} within ${timeout} ms (readyTimeout): nothing sent`);
          onReply?.(null, error);
          reject(error);
        }, timeout),
      };
      this.waiting.push(entry);
    });
  }

  /** Send what waits for the client to be ready, in order, if it is. */
  flush() {
    while (this.waiting.length > 0 && this.isReady()) {
      const entry = /** @type {Waiting} */ (this.waiting.shift());
      clearTimeout(entry.timer);
      if (entry.command) this.request(entry.command, entry.onReply).then(entry.resolve, entry.reject);
      else entry.resolve(undefined);
    }
  }

  /** Reject everything that waits for the client to be ready. @param {PgwsError} error */
  rejectWaiting(error) {
    for (const entry of this.waiting.splice(0)) {
      clearTimeout(entry.timer);
      entry.onReply?.(null, error);
      entry.reject(error);
    }
  }

  /**
   * Send a command; its reply resolves the promise. `onReply`, when given,
   * runs synchronously as the reply frame is read — before any frame after
   * it (a runtime may hand several frames over without running promise
   * callbacks in between), which is what a subscription's replay needs.
   * @param {any} command @param {(reply: any, error?: PgwsError) => void} [onReply]
   * @returns {Promise<any>}
   */
  request(command, onReply) {
    if (this.state !== 'connected' || !this.ws) {
      const error = new PgwsError(503, 'not connected');
      onReply?.(null, error);
      return Promise.reject(error);
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, {
        resolve: (/** @type {any} */ reply) => {
          onReply?.(reply);
          resolve(reply);
        },
        reject: (/** @type {PgwsError} */ error) => {
          onReply?.(null, error);
          reject(error);
        },
      });
      this.ws.send(JSON.stringify({ ...command, id }));
    });
  }

  /** The token, from the option or its function. @returns {Promise<string>} */
  async token() {
    const t = this.options.token;
    let value;
    try {
      value = typeof t === 'function' ? await t() : t;
    } catch (e) {
      throw new TokenError(`the token function failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
    if (typeof value !== 'string' || value === '') throw new TokenError(`the token is ${value === '' ? 'empty' : typeof value}, not a JWT`);
    return value;
  }

  async open() {
    this.state = 'connecting';
    this.emit('connecting');
    let token;
    try {
      token = await this.token();
    } catch (e) {
      this.emit('error', /** @type {TokenError} */ (e));
      return this.retry();
    }
    if (this.state !== 'connecting') return;
    const ws = new this.WebSocket(this.url, [SUBPROTOCOL]);
    this.ws = ws;
    // A connection attempt that neither opens nor fails (a peer that
    // accepted TCP and went quiet) is given up after connectTimeout.
    const stuck = this.later(() => {
      if (this.ws === ws) this.teardown(4000, 'connect timeout');
    }, this.options.connectTimeout);
    ws.onopen = () => {
      const id = this.nextId++;
      // A refused connect is not answered: the server closes (4401, 4403).
      this.pending.set(id, {
        resolve: () => {
          this.cancel(stuck);
          this.connected(token);
        },
        reject: () => {},
      });
      ws.send(JSON.stringify({ type: 'connect', id, token }));
    };
    ws.onmessage = (/** @type {{data: any}} */ e) => this.onFrame(e.data);
    ws.onclose = (/** @type {{code: number, reason: string}} */ e) => {
      if (this.ws === ws) this.teardown(e.code, e.reason);
    };
    ws.onerror = () => {};
  }

  /** @param {string} token */
  connected(token) {
    this.state = 'connected';
    // The backoff starts over only once this connection has proved itself
    // (the timer dies with the connection in teardown).
    this.later(() => {
      this.attempt = 0;
    }, this.options.healthyAfter);
    // Subscribes first: a command made by a `connected` listener waits
    // for them, like any other.
    for (const sub of this.subscriptions.values()) this.sendSubscribe(sub);
    this.emit('connected');
    this.keepAlive();
    this.scheduleRefresh(token, 0);
    this.flush();
  }

  /** @param {Subscription} sub */
  sendSubscribe(sub) {
    const since = sub.position ? { epoch: sub.position.epoch, offset: sub.position.offset } : undefined;
    sub.recovering = true;
    const command = {
      type: 'subscribe',
      channel: sub.channel,
      ...(since ? { since } : {}),
      ...(sub.options.presence ? { presence: true } : {}),
      ...(sub.options.echo ? {} : { echo: false }),
    };
    this.request(command, (reply, error) => {
      sub.recovering = false;
      if (error) {
        if (!(error.code === 503 && /^(not connected|disconnected)/.test(error.reason))) sub.emit('error', error);
      } else if (sub.active) {
        const info = { recovered: reply.recovered, replayed: reply.replayed ?? 0, epoch: reply.epoch, offset: reply.offset };
        if (!(since && reply.recovered)) {
          // (When recovered, the replay follows the reply and moves the
          // position on.)
          if (since) sub.emit('resync', { reason: 'the server could not recover what was missed' });
          sub.position = { epoch: reply.epoch, offset: reply.offset };
        }
        sub.emit('subscribed', info);
      }
      this.flush();
    }).catch(() => {});
  }

  /** @param {any} text */
  onFrame(text) {
    let frame;
    try {
      frame = JSON.parse(String(text));
    } catch {
      return;
    }
    if (frame.type === 'reply') {
      const waiting = this.pending.get(frame.id);
      if (!waiting) return;
      this.pending.delete(frame.id);
      if (frame.error) waiting.reject(new PgwsError(frame.error.code, frame.error.reason));
      else waiting.resolve(frame);
    } else if (frame.type === 'message' || frame.type === 'echo') {
      this.subscriptions.get(frame.channel)?.onMessage(frame);
    } else if (frame.type === 'join' || frame.type === 'leave') {
      const sub = this.subscriptions.get(frame.channel);
      if (sub && !sub.recovering) sub.emit(frame.type, frame.member);
    } else if (frame.type === 'unsubscribed') {
      const sub = this.subscriptions.get(frame.channel);
      if (sub) {
        sub.active = false;
        this.subscriptions.delete(frame.channel);
        sub.emit('unsubscribed', { reason: frame.reason });
      }
    }
  }

  keepAlive() {
    const every = this.options.pingInterval;
    const tick = () => {
      const dead = this.later(() => {
        this.emit('error', new PgwsError(503, 'no reply to ping: the connection is dead'));
        this.teardown(4000, 'ping timeout');
      }, this.options.pingTimeout);
      this.request({ type: 'ping' }).then(
        () => {
          this.cancel(dead);
          this.later(tick, every);
        },
        () => this.cancel(dead),
      );
    };
    this.later(tick, every);
  }

  /**
   * Refresh `token` `refreshBefore` ms before its `exp` (a token function
   * only); after `failures` failed attempts in a row, retry after the
   * reconnect backoff's delay for that many (equal jitter: half of it at
   * least), not at once.
   * @param {string} token @param {number} failures
   */
  scheduleRefresh(token, failures) {
    const exp = tokenExpiry(token);
    if (exp === null || typeof this.options.token !== 'function') return;
    const wait = failures === 0
      ? Math.max(1000, exp - Date.now() - this.options.refreshBefore)
      : backoffDelay(failures - 1, { ...this.options.backoff, jitter: 'equal' });
    const ws = this.ws;
    this.later(async () => {
      try {
        const fresh = await this.token();
        if (this.ws !== ws) return;
        await this.request({ type: 'refresh', token: fresh });
        this.scheduleRefresh(fresh, 0);
      } catch (e) {
        if (this.ws !== ws || this.state !== 'connected') return; // the connection ended: its refresh with it
        this.emit('error', /** @type {PgwsError} */ (e));
        this.scheduleRefresh(token, failures + 1);
      }
    }, wait);
  }

  /** Close codes that retrying cannot fix. @param {number} code */
  isTerminal(code) {
    return TERMINAL_CLOSE_CODES.includes(code) || (code === 3001 && typeof this.options.token !== 'function');
  }

  /** Drop the connection and everything tied to it; reconnect unless closed
   * or the close is terminal.
   * @param {number} code @param {string} reason */
  teardown(code, reason) {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try {
        ws.close(code >= 4000 || code === 1000 ? code : 1000);
      } catch {
        // already closed
      }
    }
    for (const { reject } of this.pending.values()) reject(new PgwsError(503, 'disconnected before the reply: it may or may not have been done'));
    this.pending.clear();
    for (const sub of this.subscriptions.values()) sub.recovering = false;
    if (this.state === 'closed') {
      this.emit('disconnected', { code, reason });
      this.rejectWaiting(new NotConnectedError('the client is closed'));
    } else if (this.isTerminal(code)) {
      this.state = 'failed';
      this.failure = new TerminalCloseError(code, reason);
      this.emit('disconnected', { code, reason });
      this.rejectWaiting(/** @type {NotConnectedError} */ (this.refusal()));
      this.emit('error', this.failure);
    } else {
      this.state = 'disconnected';
      this.emit('disconnected', { code, reason });
      this.retry();
    }
  }

  retry() {
    if (this.state === 'closed' || this.state === 'failed') return;
    this.state = 'disconnected';
    const delay = backoffDelay(this.attempt++, this.options.backoff);
    this.later(() => {
      if (this.state === 'disconnected') this.open();
    }, delay);
  }

  /** @param {Function} fn @param {number} ms */
  later(fn, ms) {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  /** @param {any} t */
  cancel(t) {
    clearTimeout(t);
    this.timers.delete(t);
  }
}
