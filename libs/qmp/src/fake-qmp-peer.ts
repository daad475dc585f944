import { Duplex } from 'node:stream';
import { QmpLineDecoder } from './qmp-line-decoder';
import type { QemuVersionTriple } from './qmp-types';

/** A command the fake peer received, as the client sent it. */
export interface FakeQmpCommand {
  id: unknown;
  execute: string;
  arguments?: Record<string, unknown>;
}

/** How a fake peer answers a command: a return value, or a QMP error. */
export type FakeQmpAnswer = { return: unknown } | { error: { class: string; desc: string } };

/** How the fake peer greets; defaults give QEMU 7.2's real greeting and handshake. */
export interface FakeQmpPeerOptions {
  /** Version in the greeting. Default 7.2.0. */
  version?: QemuVersionTriple;
  /** Raw first line to send instead of the real greeting (no newline needed); `null` sends none. */
  greeting?: string | null;
  /** Answer `qmp_capabilities` by itself (default true); if false, it is queued like any command. */
  autoHandshake?: boolean;
}

/**
 * Test double of QEMU's side of a QMP connection: sends the greeting, answers `qmp_capabilities`,
 * then queues every command until the test takes it with `nextCommand()` and answers it (in any
 * order), unless a `handle()` rule answers it first. Raw writes let tests split or corrupt lines.
 * Build one with `FakeQmpPeer.pair()` (in-memory) or around a socket a `net.Server` accepted.
 */
export class FakeQmpPeer {
  /** Every command received, in arrival order, `qmp_capabilities` included. */
  readonly received: FakeQmpCommand[] = [];
  /** Resolves once the connection is closed from either side. */
  readonly closed: Promise<void>;
  private readonly queue: FakeQmpCommand[] = [];
  private readonly handlers = new Map<string, (command: FakeQmpCommand) => FakeQmpAnswer | undefined>();
  private readonly decoder = new QmpLineDecoder(16 * 1024 * 1024);
  private waiter: { resolve(command: FakeQmpCommand): void; reject(error: Error): void; timer: NodeJS.Timeout } | undefined;
  private readonly autoHandshake: boolean;

  /** Takes over `stream` (the server side of a connection) and greets at once. */
  constructor(
    private readonly stream: Duplex,
    options: FakeQmpPeerOptions = {},
  ) {
    this.autoHandshake = options.autoHandshake ?? true;
    this.closed = new Promise<void>((resolve) =>
      stream.once('close', () => {
        this.rejectWaiter(new Error('FakeQmpPeer: connection closed while waiting for a command'));
        resolve();
      }),
    );
    stream.on('error', () => undefined);
    stream.on('data', (chunk: Buffer) => this.onData(chunk));
    const { major, minor, micro } = options.version ?? { major: 7, minor: 2, micro: 0 };
    const greeting =
      options.greeting === undefined
        ? JSON.stringify({ QMP: { version: { qemu: { micro, minor, major }, package: 'fake-qmp-peer' }, capabilities: ['oob'] } })
        : options.greeting;
    if (greeting !== null) this.sendRaw(`${greeting}\r\n`);
  }

  /** A fake peer on one end of an in-memory connection; hand `clientStream` to `QmpClient.fromStream`. */
  static pair(options: FakeQmpPeerOptions = {}): { peer: FakeQmpPeer; clientStream: Duplex } {
    const [clientStream, serverStream] = duplexPair();
    return { peer: new FakeQmpPeer(serverStream, options), clientStream };
  }

  /** Answers every later `command` with `answer` (or what the function returns; `undefined` never answers). */
  handle(command: string, answer: FakeQmpAnswer | ((command: FakeQmpCommand) => FakeQmpAnswer | undefined)): this {
    this.handlers.set(command, typeof answer === 'function' ? answer : () => answer);
    return this;
  }

  /** The next command no `handle()` rule answered; rejects if none arrives within `timeoutMs`. */
  nextCommand(timeoutMs = 2_000): Promise<FakeQmpCommand> {
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
    if (this.waiter) return Promise.reject(new Error('FakeQmpPeer: nextCommand() is already waiting'));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`FakeQmpPeer: no command within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = { resolve, reject, timer };
    });
  }

  /** Sends `{"return": value, "id": ...}` for `command`. */
  reply(command: FakeQmpCommand, value: unknown = {}): void {
    this.send({ return: value, id: command.id });
  }

  /** Sends `{"error": {"class", "desc"}, "id": ...}` for `command`. */
  replyError(command: FakeQmpCommand, errorClass: string, desc: string): void {
    this.send({ id: command.id, error: { class: errorClass, desc } });
  }

  /** Sends an event the way QEMU does (data omitted when undefined). */
  sendEvent(event: string, data?: Record<string, unknown>): void {
    const now = Date.now();
    const timestamp = { seconds: Math.floor(now / 1000), microseconds: (now % 1000) * 1000 };
    this.send(data === undefined ? { timestamp, event } : { timestamp, event, data });
  }

  /** Writes `text` exactly as given (no newline added), e.g. half a message or garbage. */
  sendRaw(text: string | Buffer): void {
    if (!this.stream.destroyed && !this.stream.writableEnded) this.stream.write(text);
  }

  /** Closes QEMU's side, as QEMU does on exit; resolves once the connection is closed. */
  async end(): Promise<void> {
    this.stream.end();
    await this.closed;
  }

  private rejectWaiter(error: Error): void {
    if (!this.waiter) return;
    const { reject, timer } = this.waiter;
    this.waiter = undefined;
    clearTimeout(timer);
    reject(error);
  }

  private send(message: unknown): void {
    this.sendRaw(`${JSON.stringify(message)}\r\n`);
  }

  private onData(chunk: Buffer): void {
    for (const line of this.decoder.push(chunk)) {
      const command = JSON.parse(line) as FakeQmpCommand;
      this.received.push(command);
      if (command.execute === 'qmp_capabilities' && this.autoHandshake) {
        this.reply(command);
        continue;
      }
      const handler = this.handlers.get(command.execute);
      if (handler) {
        const answer = handler(command);
        if (answer) this.send({ ...answer, id: command.id });
        continue;
      }
      if (this.waiter) {
        const { resolve, timer } = this.waiter;
        this.waiter = undefined;
        clearTimeout(timer);
        resolve(command);
      } else {
        this.queue.push(command);
      }
    }
  }
}

/** Two connected in-memory Duplex streams that behave like the ends of a socket. */
function duplexPair(): [Duplex, Duplex] {
  const sides: Duplex[] = [];
  const eofSent = [false, false];
  const deliver = (to: number, chunk: Buffer | null): void => {
    const side = sides[to];
    if (side.destroyed || eofSent[1 - to]) return;
    if (chunk === null) eofSent[1 - to] = true;
    side.push(chunk);
  };
  for (const index of [0, 1]) {
    sides.push(
      new Duplex({
        allowHalfOpen: false,
        read() {},
        write(chunk: Buffer, _encoding, callback) {
          deliver(1 - index, chunk);
          callback();
        },
        final(callback) {
          deliver(1 - index, null);
          callback();
        },
        destroy(error, callback) {
          deliver(1 - index, null);
          callback(error);
        },
      }),
    );
  }
  return [sides[0], sides[1]];
}
