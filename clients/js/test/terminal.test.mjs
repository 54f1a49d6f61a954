// Closes that mean "do not retry", against a real gateway: each class of
// TERMINAL_CLOSE_CODES (4401, 4403, 1008, 4400, and 3001 with a fixed
// token) stops the client — state `failed`, no reconnect scheduled, one
// TerminalCloseError event, waiting commands rejected with a
// NotConnectedError whose cause it is — while the closes that retrying
// fixes (a gateway restart, 3001 with a token function) reconnect.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Client, NotConnectedError, PgwsError, TERMINAL_CLOSE_CODES, TerminalCloseError } from '../src/index.js';
import { startGateway, token, until, freePort } from './helpers.mjs';

const now = () => Math.floor(Date.now() / 1000);
const fast = { backoff: { initial: 20, max: 200 }, connectTimeout: 1000 };

/** A client and what it emitted. */
function watched(url, options) {
  const client = new Client(url, { ...fast, ...options });
  const seen = { errors: [], disconnects: [], connecting: 0, connected: 0 };
  client.on('error', (e) => seen.errors.push(e));
  client.on('disconnected', (d) => seen.disconnects.push(d));
  client.on('connecting', () => { seen.connecting++; });
  client.on('connected', () => { seen.connected++; });
  return { client, seen };
}

/** The client stopped for good on `code`: failed, nothing scheduled, one error. */
async function assertStopped(client, seen, code, reason) {
  await until(() => client.state === 'failed', 15000, `the close ${code}`);
  const terminal = seen.errors.filter((e) => e instanceof TerminalCloseError);
  assert.equal(terminal.length, 1);
  assert.ok(terminal[0] instanceof PgwsError);
  assert.equal(terminal[0].code, code);
  assert.match(terminal[0].reason, reason);
  assert.equal(client.failure, terminal[0]);
  assert.equal(seen.disconnects.at(-1).code, code);
  // No reconnect scheduled, no socket: nothing will happen by itself.
  assert.equal(client.timers.size, 0);
  assert.equal(client.ws, null);
  const attempts = seen.connecting;
  // What waits, and what comes, is refused at once, naming the cause.
  await assert.rejects(client.publish('x', 'y'), (e) => e instanceof NotConnectedError && e.cause === terminal[0] && e.message.includes(String(code)));
  await assert.rejects(client.ready(), (e) => e instanceof NotConnectedError && e.cause === terminal[0]);
  assert.equal(seen.connecting, attempts, 'no new attempt');
}

test('the terminal close codes are the documented ones', () => {
  assert.deepEqual([...TERMINAL_CLOSE_CODES], [1003, 1008, 4400, 4401, 4403]);
  assert.ok(Object.isFrozen(TERMINAL_CLOSE_CODES));
});

test('4401 (a token with a bad signature) stops the client; a waiting publish is rejected with the cause', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  const forged = token({ mode: 'rw' }).slice(0, -4) + 'AAAA';
  const { client, seen } = watched(gw.url, { token: forged });
  t.after(() => client.close());
  const waiting = client.publish('chat', 'never sent');
  await assert.rejects(waiting, (e) => e instanceof NotConnectedError && e.cause instanceof TerminalCloseError && e.cause.code === 4401);
  await assertStopped(client, seen, 4401, /signature/i);
  assert.equal(seen.connecting, 1);
  assert.equal(seen.connected, 0);
});

test('4401 for an expired token, from a token function too, and connect() starts again', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  let expired = true;
  const { client, seen } = watched(gw.url, {
    token: () => token({ mode: 'r', exp: expired ? now() - 60 : now() + 3600 }),
  });
  t.after(() => client.close());
  client.connect();
  await assertStopped(client, seen, 4401, /expired/i);
  // The application fixed the cause (signed in again): connect() retries.
  expired = false;
  client.connect();
  await client.ready();
  assert.equal(client.state, 'connected');
  assert.equal(client.failure, null);
});

test('4403 (claims that allow nothing) stops the client', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  const { client, seen } = watched(gw.url, { token: token({ mode: 'x' }) });
  t.after(() => client.close());
  client.subscribe('chat');
  await assertStopped(client, seen, 4403, /mode/i);
});

test('1008 (a frame that is not a JSON object) and 1003 (a binary frame) stop the client', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  // What a bug in the client would send.
  for (const [frame, code, reason] of [['not json', 1008, /JSON/], [new Uint8Array([1, 2]), 1003, /binary/i]]) {
    const { client, seen } = watched(gw.url, { token: token({ mode: 'r' }) });
    t.after(() => client.close());
    await client.ready();
    client.ws.send(frame);
    await assertStopped(client, seen, code, reason);
  }
});

test('4400 (a first frame that is not connect) stops the client', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  // A socket whose first frame is a ping, as a broken client would send.
  class Broken extends WebSocket {
    send(data) {
      super.send(this.sent ? data : JSON.stringify({ type: 'ping', id: 1 }));
      this.sent = true;
    }
  }
  const { client, seen } = watched(gw.url, { token: token({ mode: 'r' }), WebSocket: Broken });
  t.after(() => client.close());
  client.connect();
  await assertStopped(client, seen, 4400, /connect frame first/);
});

test('3001 with a fixed token stops the client; with a token function it reconnects', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  const fixed = watched(gw.url, { token: token({ mode: 'r', exp: now() + 2 }) });
  t.after(() => fixed.client.close());
  const fresh = watched(gw.url, { token: () => token({ mode: 'r', exp: now() + 2 }), refreshBefore: -60000 });
  t.after(() => fresh.client.close());
  await Promise.all([fixed.client.ready(), fresh.client.ready()]);
  await assertStopped(fixed.client, fixed.seen, 3001, /expired/i);
  await until(() => fresh.seen.disconnects.length >= 1 && fresh.client.state === 'connected', 15000, 'the token function client to reconnect');
  assert.equal(fresh.seen.disconnects[0].code, 3001);
  assert.equal(fresh.seen.errors.filter((e) => e instanceof TerminalCloseError).length, 0);
});

test('a gateway restart (1001) is not terminal: the client reconnects with its good token', async (t) => {
  const port = await freePort();
  let gw = await startGateway({ port });
  const { client, seen } = watched(gw.url, { token: token({ mode: 'rw' }) });
  t.after(() => client.close());
  await client.ready();
  await gw.stop();
  await until(() => seen.disconnects.length >= 1, 15000, 'the close');
  gw = await startGateway({ port });
  t.after(() => gw.stop());
  await until(() => client.state === 'connected', 15000, 'reconnected');
  assert.equal(seen.disconnects[0].code, 1001);
  assert.equal(seen.errors.length, 0);
  assert.equal((await client.publish('chat', 'after the restart')).type, 'reply');
});
