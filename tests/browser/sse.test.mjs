// Server-Sent Events and HTTP publish in a real browser, through HAProxy in
// front of the local cluster: an EventSource receives notifications at
// 100/s while every gateway is restarted one after another, and ends with
// every one exactly once, in order, thanks to Last-Event-ID — no reset; a
// page publishes with fetch (POST), and a retry with the same
// Idempotency-Key is not published twice. Run by scripts/test-browser.sh
// (PGWS_SSE_RETRY=250 there, so a reconnect misses less than the
// coordinator's 100 messages of history).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(process.env.PLAYWRIGHT_DIR + '/');
const { chromium } = require('playwright-core');

const lb = `http://127.0.0.1:${process.env.LOCAL_CLUSTER_LB_PORT}`;
const runDir = process.env.LOCAL_CLUSTER_RUN_DIR;
const clusterPid = Number(process.env.LOCAL_CLUSTER_PID);
const listenChannel = process.env.PGWS_LISTEN_CHANNEL;
const secret = process.env.PGWS_JWT_SECRET || 'reallyreallyreallyreallyverysafe';
const shots = process.env.SCREENSHOT_DIR;
const TOTAL = 1000; // 10 s at 100/s

const rolled = () => (existsSync(`${runDir}/rolled`) ? Number(readFileSync(`${runDir}/rolled`, 'utf8')) : 0);

function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`;
}

async function until(check, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** NOTIFY `seq:1` … `seq:TOTAL` on `channel`, 10 every 100 ms, from one psql. */
function notifier(channel) {
  const lines = [];
  for (let k = 0; k < TOTAL / 10; k++) {
    lines.push(`SELECT pg_notify('${listenChannel}', json_build_object('channel', '${channel}', 'payload', 'seq:' || n)::text) FROM generate_series(${k * 10 + 1}, ${k * 10 + 10}) n;`);
    lines.push('SELECT pg_sleep(0.1);');
  }
  const psql = spawn('psql', [process.env.PGWS_DB_URI, '-Atq', '-v', 'ON_ERROR_STOP=1'], { stdio: ['pipe', 'ignore', 'inherit'] });
  psql.stdin.end(lines.join('\n') + '\n');
  return new Promise((resolve, reject) => {
    psql.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`psql exited ${code}`))));
  });
}

/** An EventSource on `path` in the page, recording into window.sse. */
async function listen(page, path) {
  await page.evaluate((path) => {
    const s = { received: [], payloads: [], opens: 0, resets: 0, closes: 0 };
    window.sse = s;
    const es = new EventSource(path);
    es.onopen = () => { s.opens += 1; };
    es.onmessage = (e) => {
      const payload = JSON.parse(e.data).payload;
      s.payloads.push(payload);
      const m = /^seq:(\d+)$/.exec(payload);
      if (m) s.received.push(Number(m[1]));
    };
    es.addEventListener('pgws-reset', () => { s.resets += 1; });
    es.addEventListener('pgws-close', () => { s.closes += 1; });
  }, path);
  await page.waitForFunction(() => window.sse.opens >= 1, null, { timeout: 10000 });
}

test('an EventSource gets every notification once, in order, across a rolling restart; a page publishes with fetch', async () => {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const channel = `${process.env.CHAT_CHANNEL}-sse`;
    const page = await browser.newPage();
    await page.goto(lb + '/');
    await listen(page, `/${channel}/${jwt({ mode: 'r' })}`);

    // fetch: published once, a retry with the same key is a replay.
    const writer = jwt({ mode: 'w', sub: 'browser' });
    const replies = await page.evaluate(async ({ channel, writer }) => {
      const post = () => fetch(`/${channel}`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${writer}`, 'Idempotency-Key': 'browser-key-1' },
        body: 'hello from fetch',
      }).then(async (r) => ({ status: r.status, body: await r.json(), replayed: r.headers.get('idempotent-replayed') }));
      return [await post(), await post()];
    }, { channel, writer });
    assert.deepEqual(replies.map((r) => [r.status, r.body.replayed, r.replayed]),
      [[202, false, 'false'], [202, true, 'true']]);
    await until(() => page.evaluate(() => window.sse.payloads.includes('hello from fetch')), 10000, 'the published message');

    const before = rolled();
    const sending = notifier(channel);
    await until(() => page.evaluate(() => window.sse.received.length > 100), 15000, 'the stream to start');
    process.kill(clusterPid, 'SIGUSR1');
    await until(() => rolled() > before, 60000, 'the rolling restart');
    await sending;
    await until(() => page.evaluate((n) => window.sse.received.length >= n, TOTAL), 30000,
      'every notification to arrive');

    const s = await page.evaluate(() => window.sse);
    const expected = Array.from({ length: TOTAL }, (_, i) => i + 1);
    assert.equal(s.received.length, TOTAL, 'no duplicate');
    assert.deepEqual(s.received, expected, 'every notification once, in order');
    assert.equal(s.payloads.filter((p) => p === 'hello from fetch').length, 1, 'published once');
    assert.ok(s.opens >= 2, `the stream moved gateways (opened ${s.opens} times)`);
    assert.equal(s.resets, 0, 'nothing had to be resynced');
    mkdirSync(shots, { recursive: true });
    await page.screenshot({ path: `${shots}/sse-rolling-restart.png` });
    console.log(`sse rolling restart: ${TOTAL} notifications, ${s.opens} opens, ${s.closes} pgws-close, ${s.resets} resets`);
  } finally {
    await browser.close();
  }
});
