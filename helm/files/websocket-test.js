// helm test: open a websocket through the gateways' Service with a token
// signed by the release's JWT secret; exit 0 once it is open. Also run by
// scripts/test-image.sh against the image's gateway.
//   PGWS_URL=ws://host:port PGWS_JWT_SECRET=… [PGWS_JWT_SECRET_BASE64=true] node websocket-test.js
const { createHmac } = require('node:crypto');

const base = process.env.PGWS_URL;
const raw = process.env.PGWS_JWT_SECRET || '';
const secret = process.env.PGWS_JWT_SECRET_BASE64 === 'true' ? Buffer.from(raw, 'base64') : raw;
const channel = `helm-test-${process.pid}-${Date.now()}`;
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
const unsigned = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ mode: 'r', channel, exp: Math.floor(Date.now() / 1000) + 300 })}`;
const token = `${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`;

const fail = (why) => { console.error(`websocket test failed: ${why}`); process.exit(1); };
const timer = setTimeout(() => fail(`no websocket open within 20 s at ${base}`), 20000);
const ws = new WebSocket(`${base}/${channel}/${token}`);
ws.onopen = () => {
  console.log(`websocket open at ${base}/${channel}/…`);
  clearTimeout(timer);
  ws.close(1000);
  process.exit(0);
};
ws.onerror = (e) => fail(`socket error ${e.message || ''}`);
ws.onclose = (e) => fail(`closed before open: ${e.code} ${e.reason}`);
