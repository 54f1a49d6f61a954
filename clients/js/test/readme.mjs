// The README's examples: each ```js block with the heading it stands
// under, shared by readme.test.mjs (runs them) and types.test.mjs
// (type-checks them).
import { readFileSync } from 'node:fs';

/** @returns {{heading: string, code: string}[]} */
export function readmeExamples(path = new URL('../README.md', import.meta.url)) {
  const examples = [];
  let heading = '';
  let block = null;
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (block !== null) {
      if (line.startsWith('```')) {
        examples.push({ heading, code: block.join('\n') });
        block = null;
      } else {
        block.push(line);
      }
    } else if (/^```(js|javascript)\s*$/.test(line)) {
      block = [];
    } else if (line.startsWith('## ')) {
      heading = line.slice(3).trim();
    }
  }
  return examples;
}

/** What the examples call and the application would define. */
export const APP_FUNCTIONS = ['render', 'reloadFromDatabase', 'showSignIn', 'showOffline'];
