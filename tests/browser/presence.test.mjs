// Presence in real browsers, through HAProxy in front of the local
// cluster (PGWS_PRESENCE=true, set by scripts/test-browser.sh): two pages,
// each running the JavaScript client, see each other join and leave, and
// presence()/presenceStats() list them both across gateways.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { createRequire } from 'node:module';

const require = createRequire(process.env.PLAYWRIGHT_DIR + '/');
const { chromium } = require('playwright-core');

const lb = `http://127.0.0.1:${process.env.LOCAL_CLUSTER_LB_PORT}`;
const channel = `${process.env.CHAT_CHANNEL}-presence`;
const SECRET = process.env.PGWS_JWT_SECRET ?? 'reallyreallyreallyreallyverysafe';

function token(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}

/** A page with a client subscribed to `channel` with presence events. */
async function open(browser, sub) {
  const page = await browser.newPage();
  await page.goto(lb + '/');
  const t = token({ mode: 'rw', sub, presence: true, presence_info: { name: sub } });
  await page.evaluate(async ({ url, t, channel }) => {
    const { Client } = await import('/src/index.js');
    window.events = [];
    window.client = new Client(url, { token: t });
    window.watch = () => window.client.subscribe(channel, {
      join: (m) => window.events.push(`join ${m.sub}`),
      leave: (m) => window.events.push(`leave ${m.sub}`),
    });
    window.sub = window.watch();
  }, { url: lb.replace('http', 'ws') + '/', t, channel });
  await seen(page, `join ${sub}`);
  return page;
}

const seen = (page, event) => page.waitForFunction((e) => window.events.includes(e), event, { timeout: 15000 });
const count = (page, event) => page.evaluate((e) => window.events.filter((x) => x === e).length, event);

test('two pages see each other join and leave, and presence lists both', async () => {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const alice = await open(browser, 'alice');
    const bob = await open(browser, 'bob');
    await seen(alice, 'join bob');

    const members = await bob.evaluate((c) => window.client.presence(c), channel);
    assert.deepEqual(members.map((m) => m.sub).sort(), ['alice', 'bob']);
    assert.deepEqual(await alice.evaluate((c) => window.client.presenceStats(c), channel), { clients: 2, users: 2 });

    // alice leaves and comes back: bob sees both.
    await alice.evaluate(() => window.sub.unsubscribe());
    await seen(bob, 'leave alice');
    await alice.evaluate(() => { window.sub = window.watch(); });
    await bob.waitForFunction(() => window.events.filter((e) => e === 'join alice').length === 1, null, { timeout: 15000 });
    assert.equal(await count(bob, 'join alice'), 1);

    // bob's page goes away: alice sees him leave.
    await bob.close();
    await seen(alice, 'leave bob');
  } finally {
    await browser.close();
  }
});
