// Test helpers: real pgws-gateway processes (the debug build by default,
// or PGWS_GATEWAY_BIN) against the local PostgreSQL, HS256 tokens, psql
// NOTIFYs, and waiting by polling with a deadline.
import { spawn, execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

export const SECRET = 'reallyreallyreallyreallyverysafe';
export const DB = process.env.PGWS_DB_URI ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const BIN = process.env.PGWS_GATEWAY_BIN
  ?? fileURLToPath(new URL('../../../target/debug/pgws-gateway', import.meta.url));
let counter = 0;

export function unique(prefix) {
  return `${prefix}-${process.pid}-${counter++}-${Date.now() % 100000}`;
}

const b64url = (text) => Buffer.from(text).toString('base64url');

export function token(claims) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/** Wait until `check()` is truthy, polling every 20 ms, for at most `ms`. */
export async function until(check, ms = 15000, what = 'condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A standalone gateway; resolves once it LISTENs. */
export async function startGateway({ port, listenChannel, env = {} } = {}) {
  const channel = listenChannel ?? unique('pgws-js');
  const child = spawn(BIN, [], {
    env: {
      PATH: process.env.PATH,
      PGWS_DB_URI: DB,
      PGWS_JWT_SECRET: SECRET,
      PGWS_HOST: '127.0.0.1',
      PGWS_PORT: String(port ?? 0),
      PGWS_ADMIN_PORT: 'off',
      PGWS_LISTEN_CHANNEL: channel,
      PGWS_LOG_LEVEL: 'info',
      NO_COLOR: '1',
      ...env,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr.on('data', (d) => { log += d.toString(); });
  const gateway = {
    child,
    listenChannel: channel,
    get log() { return log; },
    url: null,
    stop(signal = 'SIGTERM') {
      return new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill(signal);
      });
    },
    notify(payload) {
      const sql = `SELECT pg_notify('${channel}', '${payload.replace(/'/g, "''")}')`;
      execFileSync('psql', [DB, '-Atqc', sql]);
    },
  };
  await until(() => /listening for notifications/.test(log) || child.exitCode !== null, 15000, 'the gateway');
  if (child.exitCode !== null) throw new Error(`gateway exited: ${log}`);
  const addr = log.match(/listening kind="?public"? addr=(\S+)/);
  gateway.url = `ws://${addr[1]}/`;
  return gateway;
}
