// The package as npm would publish it: its contents (npm pack --dry-run),
// the fields the registry page and installers read, the license file,
// README links that work on the registry page (absolute, to files that
// exist in this repository), and the package's own name resolving to the
// code (exports).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as code from '../src/index.js';

const dir = fileURLToPath(new URL('..', import.meta.url));
const root = fileURLToPath(new URL('../../..', import.meta.url));
const pkg = JSON.parse(readFileSync(`${dir}/package.json`, 'utf8'));
const REPO = 'https://github.com/pgws-rs/postgres-websockets-clustered';

test('npm pack contains the code, its types, README, LICENSE and package.json — nothing else', () => {
  const [packed] = JSON.parse(execFileSync('npm', ['pack', '--dry-run', '--json'], { cwd: dir, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }));
  assert.deepEqual(packed.files.map((f) => f.path).sort(), ['LICENSE', 'README.md', 'package.json', 'src/index.d.ts', 'src/index.js']);
  assert.equal(packed.name, '@pgws/client');
});

test('package.json has what publishing and the registry page need', () => {
  assert.deepEqual(pkg.publishConfig, { access: 'public' });
  assert.equal(pkg.license, 'MIT');
  assert.deepEqual(pkg.repository, { type: 'git', url: `git+${REPO}.git`, directory: 'clients/js' });
  assert.equal(pkg.homepage, `${REPO}/tree/main/clients/js#readme`);
  assert.deepEqual(pkg.bugs, { url: `${REPO}/issues` });
  assert.deepEqual(pkg.dependencies, undefined, 'no runtime dependencies');
  assert.equal(pkg.exports['.'].types, './src/index.d.ts');
  assert.equal(pkg.exports['.'].default, './src/index.js');
  assert.equal(pkg.types, './src/index.d.ts');
  // The repository the release is made from (docs/releasing.md), and
  // the package its workflow publishes.
  assert.ok(readFileSync(`${root}/docs/releasing.md`, 'utf8').includes(`${REPO}/`));
  assert.match(readFileSync(`${root}/.github/workflows/release.yml`, 'utf8'), /working-directory: clients\/js\n.*\n.*\n.*\n\s+run: npm publish/);
});

test('engines: Node 20 and later (the WebSocket global, behind a flag on 20 and 21, as the README says)', () => {
  assert.deepEqual(pkg.engines, { node: '>=20' });
  const major = Number(process.versions.node.split('.')[0]);
  assert.ok(major >= 20);
  // This run has the global (test.sh passes the flag on Node 20).
  assert.equal(typeof WebSocket, 'function');
  const readme = readFileSync(`${dir}/README.md`, 'utf8');
  assert.match(readme, /Node 20 and 21 have the\s+`WebSocket` global behind a flag \(`node --experimental-websocket/);
});

test('the LICENSE is the repository\'s', () => {
  assert.equal(readFileSync(`${dir}/LICENSE`, 'utf8'), readFileSync(`${root}/LICENSE`, 'utf8'));
});

test('README links work on the registry page: absolute, to files and headings that exist', () => {
  const readme = readFileSync(`${dir}/README.md`, 'utf8');
  const headings = new Set([...readme.matchAll(/^#+ (.+)$/gm)].map((m) => m[1].toLowerCase().replace(/[^a-z0-9 -]/g, '').replace(/ /g, '-')));
  const links = [...readme.matchAll(/\]\(([^)]+)\)/g)].map((m) => m[1]);
  assert.ok(links.length >= 5, `${links.length} links`);
  for (const link of links) {
    if (link.startsWith('#')) {
      assert.ok(headings.has(link.slice(1)), `no heading for ${link}`);
      continue;
    }
    assert.ok(link.startsWith(`${REPO}`), `not an absolute link into the repository: ${link}`);
    const path = link.slice(REPO.length).replace(/#.*$/, '');
    if (path === '' || path === '/issues') continue;
    const file = path.match(/^\/(?:blob|tree)\/main\/(.+)$/);
    assert.ok(file, `not a link to a file on main: ${link}`);
    assert.ok(existsSync(`${root}/${file[1]}`), `${file[1]} does not exist (${link})`);
    const anchor = link.match(/\.md#(.+)$/);
    if (anchor) {
      const target = readFileSync(`${root}/${file[1]}`, 'utf8');
      const ids = [...target.matchAll(/^#+ (.+)$/gm)].map((m) => m[1].toLowerCase().replace(/[^a-z0-9 -]/g, '').replace(/ /g, '-'));
      assert.ok(ids.includes(anchor[1]), `${file[1]} has no heading #${anchor[1]}`);
    }
  }
});

test('the package\'s own name resolves to the code', async () => {
  // Self-reference through "exports", as an installed package resolves.
  const byName = await import('@pgws/client');
  assert.equal(byName.Client, code.Client);
  assert.deepEqual(Object.keys(byName).sort(), Object.keys(code).sort());
});
