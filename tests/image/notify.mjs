// One websocket through the running image receives one NOTIFY.
//   node tests/image/notify.mjs PORT LISTEN_CHANNEL DB_URI
// Exits 0 when the payload arrived, 1 (with the reason) otherwise.
import { createHmac, randomUUID } from 'node:crypto';
import { execFileSync } from 'node:child_process';

const [port, listenChannel, dbUri] = process.argv.slice(2);
const secret = process.env.PGWS_JWT_SECRET;
const channel = `image-${randomUUID()}`;
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
const head = b64({ alg: 'HS256', typ: 'JWT' });
const body = b64({ mode: 'r', channel });
const sig = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
const payload = `hello from the image ${randomUUID()}`;

const fail = (why) => { console.error(`image websocket: ${why}`); process.exit(1); };
const deadline = setTimeout(() => fail('no notification within 15 s'), 15000);
const ws = new WebSocket(`ws://127.0.0.1:${port}/${channel}/${head}.${body}.${sig}`);
ws.onerror = (e) => fail(`socket error ${e.message ?? ''}`);
ws.onopen = () => {
  const message = JSON.stringify({ channel, payload });
  execFileSync('psql', [dbUri, '-Atqc', `SELECT pg_notify('${listenChannel}', '${message}')`]);
};
ws.onmessage = (event) => {
  const text = String(event.data);
  if (!text.includes(payload)) fail(`unexpected message ${text}`);
  console.log('ok: a websocket through the image received the NOTIFY');
  clearTimeout(deadline);
  ws.close();
  process.exit(0);
};
