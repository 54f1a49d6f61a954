// The example chat page in a real browser, through HAProxy in front of the
// local cluster (deploy/local-cluster.sh): two pages on different gateways
// talk to each other, a pg_notify reaches both, and a page with a token
// the gateways refuse stops (a terminal close) and says so. Run by
// scripts/test-browser.sh, which starts and stops the cluster.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(process.env.PLAYWRIGHT_DIR + '/');
const { chromium } = require('playwright-core');

const lb = `http://127.0.0.1:${process.env.LOCAL_CLUSTER_LB_PORT}`;
const base = Number(process.env.LOCAL_CLUSTER_BASE_PORT);
const admins = [1, 2, 3].map((i) => `http://127.0.0.1:${base + 10 + i}/metrics`);
const channel = process.env.CHAT_CHANNEL;
const shots = process.env.SCREENSHOT_DIR;

async function accepted() {
  const counts = [];
  for (const url of admins) {
    const text = await (await fetch(url)).text();
    const line = text.split('\n').find((l) => l.startsWith('pgws_connections_accepted_total '));
    counts.push(Number(line.split(' ')[1]));
  }
  return counts;
}

async function joinChat(browser, name) {
  const page = await browser.newPage();
  await page.goto(lb + '/');
  await page.fill('#name', name);
  await page.fill('#channel', channel);
  const before = await accepted();
  await page.click('#connect');
  await page.waitForSelector('#status.open', { timeout: 10000 });
  const after = await accepted();
  const gateway = after.findIndex((n, i) => n > before[i]);
  return { page, gateway };
}

test('two browsers on different gateways chat, pg_notify reaches both, and a refused token stops a page', async () => {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const alice = await joinChat(browser, 'alice');
    const bob = await joinChat(browser, 'bob');
    assert.notEqual(alice.gateway, -1);
    assert.notEqual(bob.gateway, -1);
    assert.notEqual(alice.gateway, bob.gateway, 'HAProxy put both pages on one gateway');

    await alice.page.fill('#message', 'hello bob');
    await alice.page.press('#message', 'Enter');
    await bob.page.waitForSelector('#log li:has-text("hello bob")', { timeout: 10000 });
    await alice.page.waitForSelector('#log li:has-text("hello bob")', { timeout: 10000 });

    const payload = JSON.stringify({ channel, payload: 'hello from SQL' });
    execFileSync('psql', [process.env.PGWS_DB_URI, '-Atqc',
      `SELECT pg_notify('${process.env.PGWS_LISTEN_CHANNEL}', '${payload}')`]);
    for (const { page } of [alice, bob]) {
      await page.waitForSelector('#log li:has-text("hello from SQL")', { timeout: 10000 });
    }
    mkdirSync(shots, { recursive: true });
    await bob.page.screenshot({ path: `${shots}/chat.png` });

    // A token the gateways refuse (signed with another secret): the page's
    // client stops at the terminal close (4401) instead of retrying, and
    // says so.
    const mallory = await browser.newPage();
    await mallory.goto(lb + '/');
    await mallory.fill('#channel', channel);
    await mallory.fill('#secret', 'not-the-secret-not-the-secret-00');
    await mallory.click('#connect');
    await mallory.waitForSelector('#log li:has-text("stopped: 4401")', { timeout: 10000 });
    assert.equal(await mallory.textContent('#status'), 'failed');
    assert.equal(await mallory.evaluate(() => window.pgwsStats.connects), 0);
  } finally {
    await browser.close();
  }
});
