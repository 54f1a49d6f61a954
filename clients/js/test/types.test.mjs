// The TypeScript declarations checked with tsc: (1) the code's own JSDoc
// types (src/index.js, strict) emitted as declarations, which must provide
// everything src/index.d.ts declares (test/types/conformance.ts); (2) the
// API used as the README does, and misuse refused (test/types/api.ts);
// (3) every README example, as TypeScript. And that the conformance check
// does fail when the declarations promise what the code lacks.
//
// tsc: clients/js/node_modules (npm install: the devDependency), the
// repository's .tmp/tools/npm-typescript (scripts/tools.sh
// pgws_ensure_typescript), or PATH.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { readmeExamples, APP_FUNCTIONS } from './readme.mjs';

const dir = fileURLToPath(new URL('..', import.meta.url));
const pkg = JSON.parse(readFileSync(`${dir}/package.json`, 'utf8'));

function findTsc() {
  const tools = process.env.PGWS_TOOLS ?? `${dir}/../../.tmp/tools`;
  for (const candidate of [`${dir}/node_modules/.bin/tsc`, `${tools}/npm-typescript/node_modules/.bin/tsc`]) {
    if (existsSync(candidate)) return candidate;
  }
  const onPath = spawnSync('tsc', ['--version'], { encoding: 'utf8' });
  if (onPath.status === 0) return 'tsc';
  throw new Error('no tsc: run `npm install` in clients/js, or `source scripts/tools.sh && pgws_ensure_typescript` at the repository root');
}

function tsc(...args) {
  const result = spawnSync(findTsc(), args, { cwd: dir, encoding: 'utf8' });
  return { ok: result.status === 0, output: `${result.stdout}${result.stderr}` };
}

test('tsc is the version package.json pins', () => {
  const version = execFileSync(findTsc(), ['--version'], { encoding: 'utf8' }).trim();
  assert.equal(version, `Version ${pkg.devDependencies.typescript}`);
});

test('the declarations match the code, the README\'s use of the API compiles and misuse does not', () => {
  // The README's examples as TypeScript modules, with the application's
  // functions they call declared.
  const out = `${dir}/.tmp/readme-types`;
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  writeFileSync(`${out}/app.d.ts`, APP_FUNCTIONS.map((f) => `declare function ${f}(...args: unknown[]): void;`).join('\n') + '\n');
  readmeExamples().forEach(({ code }, i) => writeFileSync(`${out}/example-${i + 1}.ts`, `${code}\nexport {};\n`));
  const emitted = tsc('-p', 'tsconfig.json');
  assert.ok(emitted.ok, `src/index.js does not type-check:\n${emitted.output}`);
  const checked = tsc('-p', 'test/types/tsconfig.json');
  assert.ok(checked.ok, `type tests:\n${checked.output}`);
});

test('the conformance check fails when the declarations promise what the code lacks', () => {
  // A copy of the package whose declarations add a method and narrow a
  // reply: tsc must reject both.
  const copy = `${dir}/.tmp/drift`;
  rmSync(copy, { recursive: true, force: true });
  mkdirSync(`${copy}/src`, { recursive: true });
  mkdirSync(`${copy}/test/types`, { recursive: true });
  mkdirSync(`${copy}/.tmp/types`, { recursive: true });
  copyFileSync(`${dir}/package.json`, `${copy}/package.json`);
  copyFileSync(`${dir}/src/index.js`, `${copy}/src/index.js`);
  copyFileSync(`${dir}/.tmp/types/index.d.ts`, `${copy}/.tmp/types/index.d.ts`);
  copyFileSync(`${dir}/test/types/conformance.ts`, `${copy}/test/types/conformance.ts`);
  writeFileSync(`${copy}/test/types/tsconfig.json`, readFileSync(`${dir}/test/types/tsconfig.json`, 'utf8').replace(/"include": \[[^\]]*\]/, '"include": ["conformance.ts"]'));
  const declared = readFileSync(`${dir}/src/index.d.ts`, 'utf8');
  const drifted = declared
    .replace('  close(): void;', '  close(): void;\n  pause(): void;')
    .replace('export interface PublishReply {\n  type: \'reply\';\n  id: number;', 'export interface PublishReply {\n  type: \'reply\';\n  id: number;\n  offset: number;');
  assert.notEqual(drifted, declared);
  writeFileSync(`${copy}/src/index.d.ts`, drifted);
  const result = tsc('-p', `${copy}/test/types/tsconfig.json`);
  rmSync(copy, { recursive: true, force: true });
  assert.ok(!result.ok, 'tsc accepted declarations the code does not provide');
  assert.match(result.output, /conformance\.ts/);
});
