// The headline test of protocol v2: the example page (clients/js) in a real
// browser, through HAProxy in front of the local cluster, receives
// notifications at 200/s while every gateway is restarted one after
// another (SIGTERM, start again — a rolling upgrade). It must end with
// every notification exactly once, in order, and say that it recovered.
// Run by scripts/test-browser.sh, which starts and stops the cluster.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(process.env.PLAYWRIGHT_DIR + '/');
const { chromium } = require('playwright-core');

const lb = `http://127.0.0.1:${process.env.LOCAL_CLUSTER_LB_PORT}`;
const runDir = process.env.LOCAL_CLUSTER_RUN_DIR;
const clusterPid = Number(process.env.LOCAL_CLUSTER_PID);
const listenChannel = process.env.PGWS_LISTEN_CHANNEL;
const channel = `${process.env.CHAT_CHANNEL}-rolling`;
const shots = process.env.SCREENSHOT_DIR;
const TOTAL = 3000; // 15 s at 200/s

const rolled = () => (existsSync(`${runDir}/rolled`) ? Number(readFileSync(`${runDir}/rolled`, 'utf8')) : 0);

async function until(check, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** NOTIFY `seq:1` … `seq:TOTAL` on the channel, 10 every 50 ms, from one psql. */
function notifier() {
  const lines = [];
  for (let k = 0; k < TOTAL / 10; k++) {
    lines.push(`SELECT pg_notify('${listenChannel}', json_build_object('channel', '${channel}', 'payload', 'seq:' || n)::text) FROM generate_series(${k * 10 + 1}, ${k * 10 + 10}) n;`);
    lines.push('SELECT pg_sleep(0.05);');
  }
  const psql = spawn('psql', [process.env.PGWS_DB_URI, '-Atq', '-v', 'ON_ERROR_STOP=1'], { stdio: ['pipe', 'ignore', 'inherit'] });
  psql.stdin.end(lines.join('\n') + '\n');
  return new Promise((resolve, reject) => {
    psql.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`psql exited ${code}`))));
  });
}

test('notifications at 200/s reach the page exactly once, in order, across a rolling restart of every gateway', async () => {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage();
    await page.goto(lb + '/');
    await page.fill('#name', 'watcher');
    await page.fill('#channel', channel);
    await page.selectOption('#mode', 'r');
    await page.click('#connect');
    await page.waitForSelector('#log li:has-text("subscribed to")', { timeout: 10000 });

    const before = rolled();
    const sending = notifier();
    // Roll once the stream is flowing.
    await until(() => page.evaluate(() => window.pgwsStats.received.length > 200), 15000, 'the stream to start');
    process.kill(clusterPid, 'SIGUSR1');
    await until(() => rolled() > before, 60000, 'the rolling restart');
    await sending;
    await until(() => page.evaluate((n) => window.pgwsStats.received.length >= n, TOTAL), 30000,
      'every notification to arrive');

    const stats = await page.evaluate(() => window.pgwsStats);
    const expected = Array.from({ length: TOTAL }, (_, i) => i + 1);
    assert.equal(stats.received.length, TOTAL, 'no duplicate');
    assert.deepEqual(stats.received, expected, 'every notification once, in order');
    assert.ok(stats.connects >= 2, `the page moved gateways (connected ${stats.connects} times)`);
    assert.ok(stats.recoveries >= 1, 'it recovered after reconnecting');
    assert.equal(stats.resyncs, 0, 'nothing had to be resynced');
    await page.waitForSelector('#notice.recovered', { timeout: 5000 });
    mkdirSync(shots, { recursive: true });
    await page.screenshot({ path: `${shots}/rolling-restart.png`, fullPage: true });
    console.log(`rolling restart: ${TOTAL} notifications, ${stats.connects} connections, ` +
      `${stats.recoveries} recoveries replaying ${stats.replayed} messages, ${stats.resyncs} resyncs`);
  } finally {
    await browser.close();
  }
});
