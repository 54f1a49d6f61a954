// The client against real gateways (the debug build; see helpers.mjs):
// publish replies, errors, recovery after a dropped connection, resync
// after a gateway restart, token refresh before exp, and the ping-based
// dead-connection check.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Client, PgwsError, PublishQueueFullError, NotConnectedError } from '../src/index.js';
import { startGateway, token, unique, until, freePort } from './helpers.mjs';

const now = () => Math.floor(Date.now() / 1000);
const fast = { backoff: { initial: 20, max: 200 }, connectTimeout: 1000 };

function collect(sub) {
  const got = { messages: [], subscribed: [], resyncs: [] };
  sub.on('message', (data, position) => got.messages.push({ data, position }));
  sub.on('subscribed', (info) => got.subscribed.push(info));
  sub.on('resync', (info) => got.resyncs.push(info));
  return got;
}

test('publish resolves once queued, and the message comes back to a subscriber', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  const channel = unique('chat');
  const client = new Client(gw.url, { token: token({ mode: 'rw' }), ...fast });
  t.after(() => client.close());
  const got = collect(client.subscribe(channel));
  await until(() => got.subscribed.length === 1, 15000, 'subscribed');
  await client.publish(channel, 'hello');
  await until(() => got.messages.length === 1, 15000, 'the message');
  const envelope = JSON.parse(got.messages[0].data);
  assert.equal(envelope.payload, 'hello');
  assert.equal(envelope.channel, channel);
  assert.equal(got.messages[0].position.offset, 1);
});

test('errors are PgwsErrors with the server\'s code; a publish waits for the connection only readyTimeout ms', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  const client = new Client(gw.url, { token: token({ mode: 'rw', channels: ['mine'] }), ...fast });
  t.after(() => client.close());
  // Nothing listens there: the publish waits, then rejects; nothing sent.
  const offline = new Client(`ws://127.0.0.1:${await freePort()}/`, { token: token({ mode: 'rw' }), ...fast, readyTimeout: 300 });
  const started = Date.now();
  await assert.rejects(offline.publish('mine', 'x'), (e) => e instanceof NotConnectedError && e instanceof PgwsError && e.code === 503 && /readyTimeout/.test(e.reason));
  assert.ok(Date.now() - started >= 290, 'waited readyTimeout');
  assert.equal(offline.publishing.count, 0);
  assert.notEqual(offline.state, 'connected');
  offline.close();
  await assert.rejects(offline.publish('mine', 'x'), (e) => e instanceof NotConnectedError && /closed/.test(e.reason));
  await assert.rejects(client.publish('theirs', 'x'), (e) => e instanceof PgwsError && e.code === 403);
  await assert.rejects(client.publish('mine', 'x'.repeat(9000)), (e) => e.code === 413);
  const reply = await client.publish('mine', 'ok');
  assert.equal(reply.type, 'reply');
  assert.equal(typeof reply.id, 'number');
});

test('publish right after subscribe waits for the connection and the subscription: the subscriber gets it', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  const channel = unique('chat');
  const client = new Client(gw.url, { token: token({ mode: 'rw' }), ...fast });
  t.after(() => client.close());
  const got = collect(client.subscribe(channel));
  assert.equal(client.state, 'connecting');
  // Sent in one turn, before any connection: they go out in this order.
  const replies = await Promise.all(['one', 'two', 'three'].map((m) => client.publish(channel, m)));
  assert.equal(got.subscribed.length, 1, 'subscribed before the publishes were answered');
  assert.deepEqual(replies.map((r) => r.type), ['reply', 'reply', 'reply']);
  await until(() => got.messages.length === 3, 15000, 'the three messages');
  assert.deepEqual(got.messages.map((m) => JSON.parse(m.data).payload), ['one', 'two', 'three']);
  await client.ready();
});

test('a publish made while the gateway is down is sent once it is up (within readyTimeout)', async (t) => {
  const port = await freePort();
  const channel = unique('chat');
  const client = new Client(`ws://127.0.0.1:${port}/`, { token: token({ mode: 'rw' }), ...fast, readyTimeout: 20000 });
  t.after(() => client.close());
  let connecting = 0;
  client.on('connecting', () => { connecting++; });
  const published = client.publish(channel, 'late');
  const ready = client.ready();
  await until(() => connecting >= 2, 15000, 'failed attempts (nothing listens yet)');
  const gw = await startGateway({ port });
  t.after(() => gw.stop());
  const listener = new Client(gw.url, { token: token({ mode: 'r' }), ...fast });
  t.after(() => listener.close());
  const got = collect(listener.subscribe(channel));
  await listener.ready();
  assert.equal((await published).type, 'reply');
  await ready;
  assert.equal(client.state, 'connected');
  await client.publish(channel, 'now');
  await until(() => got.messages.some((m) => JSON.parse(m.data).payload === 'now'), 15000, 'the second message');
});

test('after a dropped connection the subscription recovers exactly what it missed', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  const channel = unique('chat');
  const client = new Client(gw.url, { token: token({ mode: 'r' }), ...fast });
  t.after(() => client.close());
  const got = collect(client.subscribe(channel));
  await until(() => got.subscribed.length === 1, 15000, 'subscribed');
  gw.notify(JSON.stringify({ channel, n: 1 }));
  await until(() => got.messages.length === 1, 15000, 'the first message');

  // Drop the socket; psql blocks this process while it sends, so all of
  // these are sent before the client can reconnect.
  client.teardown(4000, 'network drop (test)');
  for (let n = 2; n <= 6; n++) gw.notify(JSON.stringify({ channel, n }));
  await until(() => got.subscribed.length === 2, 15000, 'resubscribed');
  assert.deepEqual(got.subscribed[1].recovered, true);
  await until(() => got.messages.length >= 6, 15000, 'the missed messages');
  gw.notify(JSON.stringify({ channel, n: 7 }));
  await until(() => got.messages.length === 7, 15000, 'the live message');
  assert.deepEqual(got.messages.map((m) => JSON.parse(m.data).n), [1, 2, 3, 4, 5, 6, 7]);
  assert.deepEqual(got.messages.map((m) => m.position.offset), [1, 2, 3, 4, 5, 6, 7]);
  assert.equal(got.resyncs.length, 0);
});

test('a restarted standalone gateway is a new epoch: the subscription says resync', async (t) => {
  const port = await freePort();
  const listenChannel = unique('pgws-js');
  let gw = await startGateway({ port, listenChannel });
  const channel = unique('chat');
  const client = new Client(gw.url, { token: token({ mode: 'r' }), ...fast });
  t.after(() => client.close());
  const got = collect(client.subscribe(channel));
  await until(() => got.subscribed.length === 1, 15000, 'subscribed');
  gw.notify(JSON.stringify({ channel, n: 1 }));
  await until(() => got.messages.length === 1, 15000, 'a message');
  await gw.stop();
  gw = await startGateway({ port, listenChannel });
  t.after(() => gw.stop());
  await until(() => got.subscribed.length === 2, 15000, 'resubscribed');
  assert.equal(got.subscribed[1].recovered, false);
  assert.equal(got.resyncs.length, 1);
  gw.notify(JSON.stringify({ channel, n: 2 }));
  await until(() => got.messages.length === 2, 15000, 'live again');
});

test('the token is refreshed before it expires and the socket stays open past the first exp', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  let issued = 0;
  let firstExp = 0;
  const getToken = () => {
    issued += 1;
    const exp = now() + 3;
    if (!firstExp) firstExp = exp;
    return token({ mode: 'r', exp });
  };
  const client = new Client(gw.url, { token: getToken, refreshBefore: 2500, ...fast });
  t.after(() => client.close());
  const disconnects = [];
  client.on('disconnected', (info) => disconnects.push(info));
  client.connect();
  await until(() => client.state === 'connected', 15000, 'connected');
  // Past the first token's exp (the gateway would close with 3001).
  await until(() => now() > firstExp + 1, 10000, 'the first exp to pass');
  assert.deepEqual(disconnects, []);
  assert.ok(issued >= 2, `token fetched ${issued} times`);
  await client.publish('x', 'still open').catch((e) => assert.equal(e.code, 403));
});

test('a silent connection is detected by ping and replaced', async (t) => {
  const port = await freePort();
  const gw = await startGateway({ port });
  t.after(() => { gw.child.kill('SIGCONT'); return gw.stop(); });
  const client = new Client(gw.url, {
    token: token({ mode: 'r' }), pingInterval: 200, pingTimeout: 300, ...fast,
  });
  t.after(() => client.close());
  const disconnects = [];
  client.on('disconnected', (info) => disconnects.push(info));
  client.connect();
  await until(() => client.state === 'connected', 15000, 'connected');
  gw.child.kill('SIGSTOP');
  const stopped = Date.now();
  await until(() => disconnects.length >= 1, 5000, 'the dead connection to be noticed');
  assert.ok(Date.now() - stopped < 2000, 'noticed within a ping interval and timeout');
  assert.equal(disconnects[0].reason, 'ping timeout');
  gw.child.kill('SIGCONT');
  await until(() => client.state === 'connected', 15000, 'reconnected');
});

test('a refresh token for another identity closes with 3011 and the client reconnects as it', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  const subs = [];
  const getToken = () => {
    const sub = subs.length === 0 ? 'alice' : 'mallory';
    subs.push(sub);
    return token({ mode: 'r', sub, exp: now() + 3 });
  };
  const client = new Client(gw.url, { token: getToken, refreshBefore: 2500, ...fast });
  t.after(() => client.close());
  const disconnects = [];
  client.on('disconnected', (info) => disconnects.push(info));
  client.on('error', () => {});
  client.connect();
  await until(() => disconnects.length >= 1, 15000, 'the refresh as mallory to be refused');
  assert.equal(disconnects[0].code, 3011);
  assert.match(disconnects[0].reason, /another sub/);
  await until(() => client.state === 'connected' && subs.length >= 3, 15000, 'reconnected');
  assert.deepEqual(subs.slice(0, 3), ['alice', 'mallory', 'mallory']);
});

test('a server that closes right after connect is retried ever more slowly; a healthy connection resets the backoff', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  // Tokens that expire within two seconds: the gateway closes each
  // connection (3001) soon after accepting it, as a draining or overloaded
  // server would.
  let lifetime = 2;
  const client = new Client(gw.url, {
    token: () => token({ mode: 'r', exp: now() + lifetime }),
    ...fast,
    healthyAfter: 2500,
    refreshBefore: -60000, // no refresh: each connection lives until its exp
  });
  t.after(() => client.close());
  let cycles = 0;
  client.on('disconnected', () => { cycles++; });
  client.connect();
  await until(() => cycles >= 3, 20000, 'three short-lived connections');
  // Before the fix every `connect` reply reset the backoff: attempt was 1.
  assert.ok(client.attempt >= 3, `attempt ${client.attempt} after ${cycles} short-lived connections`);
  lifetime = 3600;
  await until(() => client.state === 'connected' && client.attempt === 0, 20000, 'the backoff reset by a healthy connection');
});

test('publishes waiting for their reply are bounded, with a typed error and nothing sent', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  const channel = unique('chat');
  const client = new Client(gw.url, { token: token({ mode: 'rw' }), ...fast, maxPendingPublishes: 5, maxPendingPublishBytes: 1000 });
  t.after(() => client.close());
  const got = collect(client.subscribe(channel));
  await until(() => got.subscribed.length === 1, 15000, 'subscribed');
  // Sent in one turn: no reply can arrive in between.
  const sent = Array.from({ length: 5 }, (_, i) => client.publish(channel, `m${i}`));
  await assert.rejects(client.publish(channel, 'one too many'), (e) => e instanceof PublishQueueFullError && e instanceof PgwsError && e.code === 429);
  await Promise.all(sent);
  // Settled publishes free their places; bytes are bounded too.
  const big = client.publish(channel, 'x'.repeat(900));
  await assert.rejects(client.publish(channel, 'y'.repeat(200)), (e) => e instanceof PublishQueueFullError && /bytes/.test(e.reason));
  await big;
  await client.publish(channel, 'after');
  await until(() => got.messages.length === 7, 15000, 'every accepted message');
  assert.deepEqual(got.messages.map((m) => JSON.parse(m.data).payload), ['m0', 'm1', 'm2', 'm3', 'm4', 'x'.repeat(900), 'after']);
  assert.equal(client.publishing.count, 0);
});

test('presence: members, stats, join and leave events, and echo: false', async (t) => {
  const gw = await startGateway({ env: { PGWS_PRESENCE: 'true' } });
  t.after(() => gw.stop());
  const channel = unique('room');
  const claims = (sub) => ({ mode: 'rw', sub, presence: true, presence_info: { name: sub } });
  const alice = new Client(gw.url, { token: token(claims('alice')), ...fast });
  t.after(() => alice.close());
  const changes = [];
  const aliceSub = alice.subscribe(channel, {
    join: (m) => changes.push(['join', m.sub]),
    leave: (m) => changes.push(['leave', m.sub]),
    echo: false,
  });
  const aliceGot = collect(aliceSub);
  await until(() => changes.some(([k, s]) => k === 'join' && s === 'alice'), 15000, 'own join');
  const bob = new Client(gw.url, { token: token(claims('bob')), ...fast });
  const bobGot = collect(bob.subscribe(channel));
  await until(() => changes.some(([k, s]) => k === 'join' && s === 'bob'), 15000, "bob's join");
  const members = await alice.presence(channel);
  assert.deepEqual(members.map((m) => m.sub).sort(), ['alice', 'bob']);
  assert.deepEqual(members.find((m) => m.sub === 'bob').info, { name: 'bob' });
  assert.deepEqual(await bob.presenceStats(channel), { clients: 2, users: 2 });
  // echo: false — alice does not get her own message back; bob does.
  await alice.publish(channel, 'from alice');
  await until(() => bobGot.messages.length === 1, 15000, 'bob gets it');
  await bob.publish(channel, 'from bob');
  await until(() => aliceGot.messages.length === 1, 15000, 'alice gets bob\'s');
  assert.equal(JSON.parse(aliceGot.messages[0].data).payload, 'from bob');
  assert.equal(aliceGot.messages[0].position.offset, 2, 'offset 1 was her own');
  assert.equal(aliceGot.subscribed.length, 1, 'no gap seen, no recovery');
  bob.close();
  await until(() => changes.some(([k, s]) => k === 'leave' && s === 'bob'), 15000, "bob's leave");
  // A token without the claim may not ask.
  const plain = new Client(gw.url, { token: token({ mode: 'r' }), ...fast }).connect();
  t.after(() => plain.close());
  await until(() => plain.state === 'connected', 15000, 'connected');
  await assert.rejects(plain.presence(channel), (e) => e instanceof PgwsError && e.code === 403);
});
