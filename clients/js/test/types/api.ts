// The API used as the README uses it, with the types an application sees;
// and what must not compile (@ts-expect-error fails when the line compiles).
import {
  Client, PgwsError, NotConnectedError, PublishQueueFullError, TerminalCloseError, TokenError,
  TERMINAL_CLOSE_CODES, backoffDelay, tokenExpiry,
  type Position, type PublishReply, type SubscribedInfo, type ClientState,
} from '@pgws/client';

declare function render(message: unknown): void;

export async function usage(): Promise<void> {
  const client = new Client('wss://realtime.example.com/', {
    token: async () => (await fetch('https://app.example.com/api/realtime-token')).text(),
    readyTimeout: 5000,
    backoff: { initial: 100, max: 1000 },
  });
  const stored: Position | null = JSON.parse(localStorage.getItem('chat-position') ?? 'null');
  const chat = client.subscribe('chat', {
    since: stored,
    message(data, position) {
      const text: string = data;
      const at: Position = position;
      localStorage.setItem('chat-position', JSON.stringify(at));
      render(JSON.parse(text));
    },
    subscribed(info) {
      const i: SubscribedInfo = info;
      const recovered: boolean | undefined = i.recovered;
      const replayed: number = i.replayed;
      void recovered;
      void replayed;
    },
    resync({ reason }) {
      const r: string = reason;
      void r;
    },
    error(e) {
      const code: number = e.code;
      void code;
    },
  });
  chat.on('message', (data, position) => void [data.length, position.offset]);
  const position: Position | null = chat.position;
  void position;

  await client.ready();
  const reply: PublishReply = await client.publish('chat', 'hello');
  const id: number = reply.id;
  const type: 'reply' = reply.type;
  void [id, type];

  client.on('error', (error) => {
    const e: PgwsError = error;
    if (error instanceof TerminalCloseError) {
      const closeCode: number = error.code;
      void closeCode;
    }
    void e;
  });
  client.on('disconnected', ({ code, reason }) => void [code.toFixed(), reason.length]);
  client.on('resync', (subscription, { reason }) => void [subscription.channel, reason]);
  const state: ClientState = client.state;
  if (state === 'failed') client.connect();
  const failure: TerminalCloseError | null = client.failure;
  void failure;

  try {
    await client.publish('chat', 'x');
  } catch (error) {
    if (error instanceof NotConnectedError || error instanceof PublishQueueFullError) {
      const c: number = error.code;
      void c;
    }
    if (error instanceof TokenError) void error.cause;
  }
  const codes: readonly number[] = TERMINAL_CLOSE_CODES;
  const delay: number = backoffDelay(3, { initial: 100, max: 1000, jitter: 'equal' });
  const exp: number | null = tokenExpiry('a.b.c');
  void [codes, delay, exp];
  client.close();
}

export function mistakes(client: Client): void {
  // @ts-expect-error the token is required
  new Client('wss://x/', {});
  // @ts-expect-error data is a string (JSON.stringify it)
  client.publish('chat', { text: 'hi' });
  // @ts-expect-error not a client event
  client.on('message', () => {});
  // @ts-expect-error a position has an epoch
  client.subscribe('chat', { since: { offset: 3 } });
  // @ts-expect-error message data is a string
  client.subscribe('chat', { message(data: number) { void data; } });
  // @ts-expect-error disconnected carries {code, reason}
  client.on('disconnected', (info: string) => void info);
  // @ts-expect-error publish replies carry no payload
  client.publish('chat', 'x').then((reply) => reply.payload);
  // @ts-expect-error the state is read-only
  client.state = 'connected';
  // @ts-expect-error not a state
  const state: ClientState = 'open';
  void state;
}
