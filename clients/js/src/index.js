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
 * Exponential backoff with full jitter: a uniformly random delay in
 * [0, min(max, initial * 2^attempt)).
 * @param {number} attempt 0 for the first retry
 * @param {{initial?: number, max?: number}} [options] milliseconds
 * @param {() => number} [random] in [0, 1)
 */
export function backoffDelay(attempt, { initial = 500, max = 30000 } = {}, random = Math.random) {
  const ceiling = Math.min(max, initial * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/**
 * When a JWT expires, in milliseconds since the epoch (null: no `exp`, or
 * not a JWT). The signature is not checked: the server does that.
 * @param {string} token
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

/** An error reply from the server, or a command that could not be sent. */
export class PgwsError extends Error {
  /** @param {number} code @param {string} reason */
  constructor(code, reason) {
    super(`${code} ${reason}`);
    this.name = 'PgwsError';
    /** HTTP-like code: 400, 401, 403, 409, 413, 429, 503. */
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

class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this.listeners = new Map();
  }

  /** @param {string} event @param {Function} listener */
  on(event, listener) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event)?.add(listener);
    return this;
  }

  /** @param {string} event @param {Function} listener */
  off(event, listener) {
    this.listeners.get(event)?.delete(listener);
    return this;
  }

  /** @param {string} event @param {...any} args */
  emit(event, ...args) {
    for (const listener of [...(this.listeners.get(event) ?? [])]) {
      try {
        listener(...args);
      } catch (e) {
        if (event !== 'error') this.emit('error', e);
      }
    }
  }
}

/**
 * One channel's subscription. Events: `message` (data, {epoch, offset}),
 * `subscribed` ({recovered, replayed, epoch, offset}), `resync`
 * ({reason}) — the client may have missed messages and should reload what
 * it shows — `unsubscribed` ({reason}), `error` (PgwsError).
 */
export class Subscription extends Emitter {
  /** @param {Client} client @param {string} channel */
  constructor(client, channel) {
    super();
    this.client = client;
    this.channel = channel;
    /** The last position read: where a reconnect recovers from. @type {{epoch: string, offset: number} | null} */
    this.position = null;
    /** Live frames are ignored while a recovery is under way. */
    this.recovering = false;
    this.active = true;
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
    const position = typeof frame.offset === 'number' ? { epoch: frame.epoch, offset: frame.offset } : null;
    const last = this.position;
    if (position && last) {
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
    if (position) this.position = position;
    this.emit('message', frame.data, position);
  }
}

/**
 * @typedef {object} ClientOptions
 * @property {string | (() => string | Promise<string>)} token the JWT, or a
 *   function returning a fresh one (called before every connect and before
 *   the token expires, for `refresh`)
 * @property {any} [WebSocket] the WebSocket constructor (default: the global)
 * @property {{initial?: number, max?: number}} [backoff] reconnect delays, ms
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
 * @property {number} [maxPendingPublishes] publishes waiting for their reply
 *   at most (default 1000); beyond it `publish` rejects with a
 *   PublishQueueFullError
 * @property {number} [maxPendingPublishBytes] bytes of `data` in those
 *   publishes at most (default 1 MiB)
 */

/**
 * A connection that stays up: reconnects with backoff, resubscribes and
 * recovers. Events: `connecting`, `connected`, `disconnected` ({code,
 * reason}), `error`, `resync` (subscription, {reason}).
 */
export class Client extends Emitter {
  /** @param {string} url ws:// or wss:// @param {ClientOptions} options */
  constructor(url, options) {
    super();
    this.url = url;
    this.options = {
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
    if (!this.WebSocket) throw new Error('no WebSocket: pass options.WebSocket');
    /** @type {'idle' | 'connecting' | 'connected' | 'disconnected' | 'closed'} */
    this.state = 'idle';
    /** @type {Map<string, Subscription>} */
    this.subscriptions = new Map();
    /** @type {Map<number, {resolve: Function, reject: Function}>} */
    this.pending = new Map();
    this.nextId = 1;
    /** Reconnects since the last connection that stayed healthy. */
    this.attempt = 0;
    /** Publishes sent and not yet answered: how many, and their bytes. */
    this.publishing = { count: 0, bytes: 0 };
    /** @type {any} */
    this.ws = null;
    this.timers = new Set();
  }

  /** Start connecting (done by `subscribe` and `publish` too). */
  connect() {
    if (this.state === 'idle' || this.state === 'disconnected') this.open();
    return this;
  }

  /** Close for good. */
  close() {
    this.state = 'closed';
    this.teardown(1000, 'closed by the client');
  }

  /**
   * Subscribe to `channel`; handlers for its events may be given here.
   * @param {string} channel
   * @param {{message?: Function, subscribed?: Function, resync?: Function, unsubscribed?: Function, error?: Function}} [handlers]
   */
  subscribe(channel, handlers = {}) {
    if (this.subscriptions.has(channel)) throw new Error(`already subscribed to ${channel}`);
    const sub = new Subscription(this, channel);
    for (const [event, fn] of Object.entries(handlers)) if (fn) sub.on(event, fn);
    sub.on('resync', (info) => this.emit('resync', sub, info));
    this.subscriptions.set(channel, sub);
    if (this.state === 'connected') this.sendSubscribe(sub);
    else this.connect();
    return sub;
  }

  /**
   * Publish `data` on `channel`: resolves once the server queued it for
   * NOTIFY, rejects with a PgwsError (503 while not connected) or, when too
   * many publishes already wait for their reply, a PublishQueueFullError
   * (nothing sent).
   * @param {string} channel @param {string} data
   */
  publish(channel, data) {
    this.connect();
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
    return this.request({ type: 'publish', channel, data }, settled);
  }

  /** @param {Subscription} sub */
  forget(sub) {
    this.subscriptions.delete(sub.channel);
    if (this.state === 'connected') this.request({ type: 'unsubscribe', channel: sub.channel }).catch(() => {});
  }

  /** A gap was seen: subscribe again from the last position. @param {Subscription} sub */
  recover(sub) {
    if (this.state !== 'connected' || sub.recovering) return;
    sub.recovering = true;
    this.request({ type: 'unsubscribe', channel: sub.channel }, (_, error) => {
      if (!error && sub.active && this.state === 'connected') this.sendSubscribe(sub);
    }).catch(() => {});
  }

  // --- internals -----------------------------------------------------------

  /**
   * Send a command; its reply resolves the promise. `onReply`, when given,
   * runs synchronously as the reply frame is read — before any frame after
   * it (a runtime may hand several frames over without running promise
   * callbacks in between), which is what a subscription's replay needs.
   * @param {any} command @param {(reply: any, error?: PgwsError) => void} [onReply]
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

  async token() {
    const t = this.options.token;
    return typeof t === 'function' ? await t() : t;
  }

  async open() {
    this.state = 'connecting';
    this.emit('connecting');
    let token;
    try {
      token = await this.token();
    } catch (e) {
      this.emit('error', e);
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
      this.pending.set(id, {
        resolve: () => {
          this.cancel(stuck);
          this.connected(token);
        },
        reject: (/** @type {any} */ e) => this.emit('error', e),
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
    this.emit('connected');
    for (const sub of this.subscriptions.values()) this.sendSubscribe(sub);
    this.keepAlive();
    this.scheduleRefresh(token);
  }

  /** @param {Subscription} sub */
  sendSubscribe(sub) {
    const since = sub.position ? { epoch: sub.position.epoch, offset: sub.position.offset } : undefined;
    sub.recovering = true;
    const command = { type: 'subscribe', channel: sub.channel, ...(since ? { since } : {}) };
    this.request(command, (reply, error) => {
      sub.recovering = false;
      if (error) {
        if (error.code !== 503) sub.emit('error', error);
        return;
      }
      if (!sub.active) return;
      const info = { recovered: reply.recovered, replayed: reply.replayed ?? 0, epoch: reply.epoch, offset: reply.offset };
      if (!(since && reply.recovered)) {
        // (When recovered, the replay follows the reply and moves the
        // position on.)
        if (since) sub.emit('resync', { reason: 'the server could not recover what was missed' });
        sub.position = { epoch: reply.epoch, offset: reply.offset };
      }
      sub.emit('subscribed', info);
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
    } else if (frame.type === 'message') {
      this.subscriptions.get(frame.channel)?.onMessage(frame);
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

  /** @param {string} token */
  scheduleRefresh(token) {
    const exp = tokenExpiry(token);
    if (exp === null || typeof this.options.token !== 'function') return;
    const wait = Math.max(1000, exp - Date.now() - this.options.refreshBefore);
    this.later(async () => {
      try {
        const fresh = await this.token();
        await this.request({ type: 'refresh', token: fresh });
        this.scheduleRefresh(fresh);
      } catch (e) {
        this.emit('error', e);
        this.later(() => this.scheduleRefresh(token), 1000);
      }
    }, wait);
  }

  /** Drop the connection and everything tied to it; reconnect unless closed.
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
    for (const { reject } of this.pending.values()) reject(new PgwsError(503, 'disconnected'));
    this.pending.clear();
    for (const sub of this.subscriptions.values()) sub.recovering = false;
    const wasClosed = this.state === 'closed';
    if (!wasClosed) this.state = 'disconnected';
    this.emit('disconnected', { code, reason });
    if (!wasClosed) this.retry();
  }

  retry() {
    if (this.state === 'closed') return;
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
