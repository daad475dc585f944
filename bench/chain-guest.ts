/**
 * What the service-chain benchmarks do inside a guest: type commands on its serial console and
 * read the output (a socket chardev kept open for the whole run), and the I/O loops they time.
 */
import { createConnection, type Socket } from 'node:net';
import { sleep } from './bench-lib';

/** A guest's serial console over its socket: type a command, wait for output matching a pattern. */
export class GuestConsole {
  private seen = '';
  private constructor(private readonly socket: Socket) {
    socket.on('data', (d) => (this.seen += d.toString('latin1')));
    socket.on('error', () => undefined);
  }

  /** Connects to a console socket (retrying while QEMU starts). */
  static async open(path: string, timeoutMs = 30_000): Promise<GuestConsole> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      try {
        const s = await new Promise<Socket>((resolve, reject) => {
          const c = createConnection(path);
          c.once('connect', () => resolve(c));
          c.once('error', reject);
        });
        return new GuestConsole(s);
      } catch (error) {
        if (Date.now() > end) throw error;
        await sleep(50);
      }
    }
  }

  /** Everything the console printed so far. */
  get output(): string {
    return this.seen;
  }

  /** Types `command` (in small pieces: the UART is slow) and waits for `until` in the output that follows. */
  async run(command: string, until: RegExp, timeoutMs = 120_000): Promise<RegExpMatchArray> {
    const from = this.seen.length;
    for (let i = 0; i < command.length; i += 64) {
      this.socket.write(command.slice(i, i + 64));
      await sleep(5);
    }
    this.socket.write('\n');
    const end = Date.now() + timeoutMs;
    for (;;) {
      const m = this.seen.slice(from).replaceAll('\r', '').match(until);
      if (m) return m;
      if (Date.now() > end) throw new Error(`no ${until} on the console within ${timeoutMs} ms; it showed: ${JSON.stringify(this.seen.slice(-800))}`);
      await sleep(20);
    }
  }

  /** Waits until the output contains `text`. */
  async waitFor(text: string, timeoutMs = 120_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!this.seen.includes(text)) {
      if (Date.now() > end) throw new Error(`no ${JSON.stringify(text)} on the console within ${timeoutMs} ms`);
      await sleep(20);
    }
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Seconds of guest uptime a command took, measured by the guest (/proc/uptime, 10 ms resolution). */
export async function timed(c: GuestConsole, command: string, tag: string): Promise<number> {
  const m = await c.run(`read a x </proc/uptime; ${command}; read b x </proc/uptime; echo "${tag} $a $b-$((40+2))"`, new RegExp(`${tag} ([\\d.]+) ([\\d.]+)-42`));
  return Number(m[2]) - Number(m[1]);
}

/**
 * A write loop for failover measurements: `count` writes of 64 KiB (O_DIRECT) cycling over the
 * first 4 MiB of `disk`, each followed by the guest's uptime. Resolves with the gaps between
 * consecutive completions (s) and the number of failed writes.
 */
export function writeLoop(c: GuestConsole, disk: string, count: number): { started: Promise<void>; done: Promise<{ gaps: number[]; errors: number; stamps: number[] }> } {
  const from = c.output.length;
  const done = c
    .run(`i=0; e=0; while [ $i -lt ${count} ]; do b=$((i % 64)); dd if=/tmp/pat of=/dev/${disk} bs=64k skip=$b seek=$b count=1 oflag=direct 2>/dev/null || e=$((e+1)); read u x </proc/uptime; echo "T $i $u"; i=$((i+1)); done; echo "LOOP $e-$((40+2))"`, /LOOP (\d+)-42/, 600_000)
    .then((m) => {
      const stamps = [...c.output.slice(from).replaceAll('\r', '').matchAll(/^T \d+ ([\d.]+)$/gm)].map((x) => Number(x[1]));
      const gaps = stamps.slice(1).map((t, i) => t - stamps[i]!);
      return { gaps, errors: Number(m[1]), stamps };
    });
  const started = (async () => {
    const end = Date.now() + 120_000;
    while (!/^T 20 /m.test(c.output.slice(from).replaceAll('\r', ''))) {
      if (Date.now() > end) throw new Error('the write loop did not start');
      await sleep(20);
    }
  })();
  return { started, done };
}

/** The median of a list. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}
