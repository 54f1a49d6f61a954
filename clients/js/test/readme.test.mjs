// Every ```js example of README.md runs here, as written, against a real
// gateway: the placeholder URLs become the gateway's and a local token
// endpoint's (a real `fetch`), the channel a fresh one, and the
// application's functions (render, …) record their calls. The module
// imports '@pgws/client' by name (the package's own "exports"). Each
// example has a check, found by the heading it stands under; an example
// without one fails, so the README cannot go stale.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Client } from '../src/index.js';
import { readmeExamples, APP_FUNCTIONS } from './readme.mjs';
import { startGateway, token, unique, until } from './helpers.mjs';

const dir = fileURLToPath(new URL('..', import.meta.url));
const out = `${dir}/.tmp/readme-run-${process.pid}`;

// Every client an example makes, to close it afterwards (the examples, like
// a page, never do).
const made = new Set();
const open = Client.prototype.open;
Client.prototype.open = function trackedOpen() {
  made.add(this);
  return open.call(this);
};

/** The application around an example: its functions' calls, a token endpoint, localStorage. */
function application() {
  const calls = Object.fromEntries(APP_FUNCTIONS.map((f) => [f, []]));
  for (const f of APP_FUNCTIONS) globalThis[f] = (...args) => calls[f].push(args);
  const stored = new Map();
  const localStorage = {
    getItem: (k) => (stored.has(k) ? stored.get(k) : null),
    setItem: (k, v) => stored.set(k, String(v)),
    removeItem: (k) => stored.delete(k),
  };
  Object.defineProperty(globalThis, 'localStorage', { value: localStorage, configurable: true, writable: true });
  return { calls, stored };
}

/** A backend's token endpoint: serves whatever `tokenFor()` returns. */
async function tokenEndpoint(tokenFor) {
  const server = createServer((req, res) => {
    if (req.url !== '/api/realtime-token') return res.writeHead(404).end();
    res.writeHead(200, { 'content-type': 'text/plain' }).end(tokenFor());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}/api/realtime-token`, close: () => server.close() };
}

let runs = 0;
/** Run an example as a module, with the placeholders replaced. */
async function run(code, { gatewayUrl, tokenUrl, channel }) {
  const replaced = code
    .replaceAll("'wss://realtime.example.com/'", `'${gatewayUrl}'`)
    .replaceAll('https://app.example.com/api/realtime-token', tokenUrl)
    .replaceAll("'chat'", `'${channel}'`);
  assert.ok(code.includes("from '@pgws/client'"), 'an example imports the package by name');
  assert.ok(replaced.includes(gatewayUrl), 'the example connects to the placeholder URL');
  mkdirSync(out, { recursive: true });
  const file = `${out}/example-${runs++}.mjs`;
  writeFileSync(file, replaced);
  await import(pathToFileURL(file).href);
}

function closeAll() {
  for (const client of made) client.close();
  made.clear();
}

/** What each example must do, by the heading it stands under. */
const CHECKS = {
  async 'Quick start'(code, gw) {
    const app = application();
    const endpoint = await tokenEndpoint(() => token({ mode: 'rw' }));
    const channel = unique('chat');
    try {
      // Top-level `await client.publish(...)` right after subscribe: it
      // resolves (it used to reject with 503 not connected) …
      await run(code, { gatewayUrl: gw.url, tokenUrl: endpoint.url, channel });
      // … and the subscription receives the message.
      await until(() => app.calls.render.length === 1, 15000, 'render to be called');
      const [[message]] = app.calls.render;
      assert.equal(message.payload, 'hello');
      assert.equal(message.channel, channel);
      assert.equal(app.calls.reloadFromDatabase.length, 0);
    } finally {
      closeAll();
      endpoint.close();
    }
  },

  async 'Resume after a page reload'(code, gw) {
    const app = application();
    const endpoint = await tokenEndpoint(() => token({ mode: 'r' }));
    const channel = unique('chat');
    const notify = (n) => gw.notify(JSON.stringify({ channel, n }));
    const shown = () => app.calls.render.map(([m]) => m.n);
    try {
      // First visit: nothing stored.
      await run(code, { gatewayUrl: gw.url, tokenUrl: endpoint.url, channel });
      await Promise.all([...made].map((c) => c.ready()));
      notify(1);
      notify(2);
      await until(() => shown().length === 2, 15000, 'two messages');
      assert.equal(JSON.parse(app.stored.get('chat-position')).offset, 2);
      // The page goes away; two messages are published meanwhile.
      closeAll();
      notify(3);
      notify(4);
      // Reload: the same code resumes from the stored position.
      await run(code, { gatewayUrl: gw.url, tokenUrl: endpoint.url, channel });
      await until(() => shown().length === 4, 15000, 'the two missed messages');
      notify(5);
      await until(() => shown().length === 5, 15000, 'a live message');
      assert.deepEqual(shown(), [1, 2, 3, 4, 5]);
      assert.equal(app.calls.reloadFromDatabase.length, 0);
      assert.equal(JSON.parse(app.stored.get('chat-position')).offset, 5);
    } finally {
      closeAll();
      endpoint.close();
    }
  },

  async 'When the server says no'(code, gw) {
    const app = application();
    // The backend hands out a token the gateway refuses (another secret).
    const forged = token({ mode: 'rw' }).slice(0, -4) + 'AAAA';
    const endpoint = await tokenEndpoint(() => forged);
    try {
      await run(code, { gatewayUrl: gw.url, tokenUrl: endpoint.url, channel: unique('chat') });
      assert.equal(app.calls.showSignIn.length, 1);
      assert.match(app.calls.showSignIn[0][0], /^4401: /);
      assert.equal(app.calls.showOffline.length, 1);
      assert.match(app.calls.showOffline[0][0], /for good/);
      assert.deepEqual([...made].map((c) => c.state), ['failed']);
    } finally {
      closeAll();
      endpoint.close();
    }
  },
};

test('every README example runs against a real gateway and does what the README says', async (t) => {
  const gw = await startGateway();
  t.after(() => gw.stop());
  t.after(() => rmSync(out, { recursive: true, force: true }));
  const examples = readmeExamples();
  assert.ok(examples.length >= 3, `${examples.length} examples`);
  for (const { heading, code } of examples) {
    const check = CHECKS[heading];
    assert.ok(check, `README example under "${heading}" has no check in readme.test.mjs`);
    await t.test(heading, () => check(code, gw));
  }
});
