// Resuming from a stored position (`subscribe(channel, { since })`, as a
// page does after a reload) and a failing token refresh backing off,
// against a real gateway.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Client, TokenError, PgwsError, backoffDelay } from '../src/index.js';
import { startGateway, token, unique, until } from './helpers.mjs';

const now = () => Math.floor(Date.now() / 1000);
const fast = { backoff: { initial: 20, max: 200 }, connectTimeout: 1000 };

function collect(sub) {
  const got = { messages: [], subscribed: [], resyncs: [] };
  sub.on('message', (data, position) => got.messages.push({ n: JSON.parse(data).n, position }));
  sub.on('subscribed', (info) => got.subscribed.push(info));
  sub.on('resync', (info) => got.resyncs.push(info));
  return got;
}

test('subscribe with since, from a stored position, gets exactly the messages missed in between', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  const channel = unique('chat');
  const first = new Client(gw.url, { token: token({ mode: 'r' }), ...fast });
  const got = collect(first.subscribe(channel));
  await first.ready();
  for (let n = 1; n <= 3; n++) gw.notify(JSON.stringify({ channel, n }));
  await until(() => got.messages.length === 3, 15000, 'the first three');
  // What a page stores (localStorage) and reads back after a reload.
  const stored = JSON.stringify(got.messages.at(-1).position);
  assert.equal(stored, JSON.stringify(first.subscriptions.get(channel).position));
  first.close();
  for (let n = 4; n <= 7; n++) gw.notify(JSON.stringify({ channel, n }));

  const second = new Client(gw.url, { token: token({ mode: 'r' }), ...fast });
  t.after(() => second.close());
  const resumed = collect(second.subscribe(channel, { since: JSON.parse(stored) }));
  await second.ready();
  assert.deepEqual(resumed.subscribed.map((s) => [s.recovered, s.replayed]), [[true, 4]]);
  await until(() => resumed.messages.length === 4, 15000, 'the four missed');
  gw.notify(JSON.stringify({ channel, n: 8 }));
  await until(() => resumed.messages.length === 5, 15000, 'the live one');
  assert.deepEqual(resumed.messages.map((m) => m.n), [4, 5, 6, 7, 8]);
  assert.deepEqual(resumed.messages.map((m) => m.position.offset), [4, 5, 6, 7, 8]);
  assert.equal(resumed.resyncs.length, 0);
});

test('since from another epoch (a restarted gateway) resyncs, and invalid positions are refused', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  const channel = unique('chat');
  const client = new Client(gw.url, { token: token({ mode: 'r' }), ...fast });
  t.after(() => client.close());
  const got = collect(client.subscribe(channel, { since: { epoch: '0-0-0', offset: 5 } }));
  await client.ready();
  assert.equal(got.subscribed[0].recovered, false);
  assert.equal(got.resyncs.length, 1);
  gw.notify(JSON.stringify({ channel, n: 1 }));
  await until(() => got.messages.length === 1, 15000, 'live messages after the resync');
  for (const since of [{ offset: 1 }, { epoch: 'e', offset: -1 }, { epoch: 'e', offset: 1.5 }, 'e:1']) {
    assert.throws(() => client.subscribe(unique('bad'), { since }), TypeError);
  }
  // null (nothing stored yet) is no position.
  const fresh = collect(client.subscribe(unique('chat'), { since: null }));
  await client.ready();
  assert.equal(fresh.subscribed[0].recovered, undefined);
});

test('equal-jitter delays stay within [ceiling / 2, ceiling)', () => {
  const options = { initial: 100, max: 1600, jitter: 'equal' };
  for (let attempt = 0; attempt < 10; attempt++) {
    const ceiling = Math.min(1600, 100 * 2 ** attempt);
    assert.equal(backoffDelay(attempt, options, () => 0), ceiling / 2);
    assert.ok(backoffDelay(attempt, options, () => 0.999999) < ceiling);
  }
});

test('a failing token refresh is retried with growing delays, and starts over after a success', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  const calls = [];
  let failing = false;
  const getToken = () => {
    calls.push({ at: performance.now(), failing });
    if (failing) throw new Error('the token endpoint is down');
    return token({ mode: 'r', exp: now() + 30 });
  };
  const initial = 100;
  const max = 1600;
  // Refresh at once (refreshBefore > the token's life: the 1 s minimum).
  const client = new Client(gw.url, { token: getToken, refreshBefore: 60000, ...fast, backoff: { initial, max } });
  t.after(() => client.close());
  const errors = [];
  const disconnects = [];
  client.on('error', (e) => errors.push(e));
  client.on('disconnected', (d) => disconnects.push(d));
  await client.ready();
  failing = true;
  await until(() => calls.filter((c) => c.failing).length >= 6, 20000, 'six failed refreshes');
  const failed = calls.filter((c) => c.failing);
  // Each retry waited at least half of its ceiling: 50, 100, 200, 400, 800 ms.
  for (let k = 1; k < failed.length; k++) {
    const gap = failed[k].at - failed[k - 1].at;
    const floor = Math.min(max, initial * 2 ** (k - 1)) / 2;
    assert.ok(gap >= floor - 2, `retry ${k}: ${gap.toFixed(0)} ms < ${floor} ms`);
  }
  assert.ok(errors.length >= 6 && errors.every((e) => e instanceof TokenError && e instanceof PgwsError && /endpoint is down/.test(e.reason)));
  assert.ok(errors[0].cause instanceof Error);
  // A success starts the backoff over: after it, the next failure is
  // retried after the first delay again (50–100 ms), not the 6th.
  failing = false;
  await until(() => calls.length > failed.length + 1 && !calls.at(-1).failing, 20000, 'a successful refresh');
  failing = true;
  const before = calls.length;
  await until(() => calls.length >= before + 2, 20000, 'two more failed refreshes');
  const gap = calls[before + 1].at - calls[before].at;
  assert.ok(gap < 800, `after a success the first retry waited ${gap.toFixed(0)} ms`);
  assert.deepEqual(disconnects, [], 'the connection stayed open');
});
