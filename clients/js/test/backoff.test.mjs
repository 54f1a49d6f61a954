import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay, tokenExpiry } from '../src/index.js';
import { token } from './helpers.mjs';

test('backoff with full jitter stays within [0, min(max, initial * 2^attempt))', () => {
  const options = { initial: 100, max: 5000 };
  for (let attempt = 0; attempt < 40; attempt++) {
    const ceiling = Math.min(5000, 100 * 2 ** attempt);
    assert.equal(backoffDelay(attempt, options, () => 0), 0);
    const top = backoffDelay(attempt, options, () => 0.999999);
    assert.ok(top < ceiling && top >= ceiling * 0.99, `attempt ${attempt}: ${top} vs ${ceiling}`);
    for (let i = 0; i < 50; i++) {
      const d = backoffDelay(attempt, options);
      assert.ok(d >= 0 && d < ceiling, `attempt ${attempt}: ${d}`);
    }
  }
  // Jitter spreads reconnects: 1,000 clients at attempt 5 are not bunched.
  const delays = Array.from({ length: 1000 }, () => backoffDelay(5, options));
  const mean = delays.reduce((a, b) => a + b) / delays.length;
  assert.ok(mean > 1300 && mean < 1900, `mean ${mean} of U[0, 3200)`);
  assert.ok(new Set(delays).size > 500);
  // Defaults: 500 ms doubling to 30 s.
  assert.ok(backoffDelay(100) < 30000);
});

test('a token\'s exp is read without checking the signature', () => {
  assert.equal(tokenExpiry(token({ mode: 'r', exp: 1700000000 })), 1700000000000);
  assert.equal(tokenExpiry(token({ mode: 'r' })), null);
  assert.equal(tokenExpiry('not a token'), null);
});
