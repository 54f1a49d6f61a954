// The declarations (src/index.d.ts, what users compile against) are
// provided by the code: the module the code's JSDoc types describe
// (emitted by tsc from src/index.js into .tmp/types) must be assignable to
// the declared module — every declared export exists, with a compatible
// type (a declared method the code lacks, a return type it does not
// produce, a narrower state union … fail here).
import type * as Declared from '@pgws/client';
import type * as Code from '../../.tmp/types/index.js';

declare const code: typeof Code;
export const declaredIsProvided: typeof Declared = code;

// Instances too (the module check covers constructors and statics).
declare const client: InstanceType<typeof Code.Client>;
declare const subscription: InstanceType<typeof Code.Subscription>;
export const clientIsDeclared: Declared.Client = client;
export const subscriptionIsDeclared: Declared.Subscription = subscription;
export const stateIsDeclared: Declared.ClientState = client.state;
export const positionIsDeclared: Declared.Position | null = subscription.position;
