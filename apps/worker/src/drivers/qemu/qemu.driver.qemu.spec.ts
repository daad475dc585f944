/**
 * The QEMU driver against real QEMU and the sample guest (TCG). Guests run one after the other;
 * afterAll kills every QEMU whose command line names this spec's data dir, even after a failure.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import pino from 'pino';
import type { GuestExit } from '../driver';
import { findOnPath } from './host-tools';
import { QemuDriver } from './qemu.driver';
import { pidAlive, waitForPidExit } from './qemu-process';

const REPO_ROOT = join(__dirname, '../../../../..');
const GUEST_DIR = process.env.HYPERPLANE_GUEST_DIR ?? join(REPO_ROOT, '.hyperplane', 'guest');
const MARKER = 'HYPERPLANE-GUEST-READY';
const BOOT_TIMEOUT_MS = 60_000;

const missing = !findOnPath('qemu-system-x86_64')
  ? 'qemu-system-x86_64 is not on PATH'
  : !findOnPath('qemu-img')
    ? 'qemu-img is not on PATH'
    : !existsSync(join(GUEST_DIR, 'sample.qcow2'))
      ? `no sample guest at ${join(GUEST_DIR, 'sample.qcow2')} (run npm run guest:build)`
      : '';
if (missing) console.warn(`Skipping the real-QEMU driver spec: ${missing}.`);
const describeWithQemu = missing ? describe.skip : describe;

const ID1 = '01900000-0000-7000-8000-0000000000a1';
const ID2 = '01900000-0000-7000-8000-0000000000a2';
const ID3 = '01900000-0000-7000-8000-0000000000a3';
const ID4 = '01900000-0000-7000-8000-0000000000a4';
const ID5 = '01900000-0000-7000-8000-0000000000a5';
const silent = pino({ level: 'silent' });

/** Pids of every QEMU whose command line mentions `needle`. */
function qemusMentioning(needle: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (cmdline.startsWith(findOnPath('qemu-system-x86_64') ?? 'qemu-system') && cmdline.includes(needle) && pidAlive(Number(entry))) pids.push(Number(entry));
    } catch {
      continue;
    }
  }
  return pids;
}

/** Records exits per partition and lets a test wait for one. */
class ExitLog {
  readonly exits = new Map<string, GuestExit>();
  private readonly waiters = new Map<string, (exit: GuestExit) => void>();
  onExit = (id: string, exit: GuestExit) => {
    this.exits.set(id, exit);
    this.waiters.get(id)?.(exit);
  };
  onEvent = () => undefined;
  next(id: string, timeoutMs: number): Promise<GuestExit> {
    const seen = this.exits.get(id);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no exit of ${id} within ${timeoutMs} ms`)), timeoutMs);
      this.waiters.set(id, (exit) => {
        clearTimeout(timer);
        resolve(exit);
      });
    });
  }
}

describeWithQemu(`QemuDriver against real QEMU${missing ? ` (skipped: ${missing})` : ''}`, () => {
  let dataDir: string;
  const drivers: QemuDriver[] = [];

  function driver(extra: Partial<ConstructorParameters<typeof QemuDriver>[0]> = {}): { driver: QemuDriver; exits: ExitLog } {
    const d = new QemuDriver({ dataDir, accel: 'tcg', log: silent, ...extra });
    const exits = new ExitLog();
    d.setListener(exits);
    drivers.push(d);
    return { driver: d, exits };
  }

  const spec = (id: string) => ({ id, name: `spec-${id.slice(-2)}`, vcpus: 1, memoryMiB: 128, diskGiB: 0, image: 'sample' });
  const dirOf = (id: string) => join(dataDir, 'partitions', id);

  /** Waits until the guest's console.log matches `re` (after byte `from`); fails if QEMU dies. */
  async function waitConsole(id: string, pid: number, re: RegExp, timeoutMs = BOOT_TIMEOUT_MS): Promise<number> {
    const started = Date.now();
    for (;;) {
      const text = await readFile(join(dirOf(id), 'console.log'), 'utf8').catch(() => '');
      if (re.test(text.replaceAll('\r', ''))) return Date.now() - started;
      if (!pidAlive(pid)) throw new Error(`QEMU ${pid} died while waiting for ${re}: ${text.slice(-500)}`);
      if (Date.now() - started > timeoutMs) throw new Error(`no ${re} within ${timeoutMs} ms: ${text.slice(-500)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Types a line on the serial console until `expect` shows in the bytes read back. */
  async function converse(port: Duplex, line: string, expected: RegExp): Promise<string> {
    let seen = '';
    port.on('data', (b: Buffer) => (seen += b.toString('utf8')));
    for (let attempt = 0; attempt < 10; attempt++) {
      port.write(`${line}\n`);
      const until = Date.now() + 2_000;
      while (Date.now() < until) {
        if (expected.test(seen.replaceAll('\r', ''))) return seen;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    throw new Error(`typed ${JSON.stringify(line)}, never saw ${expected}; got ${JSON.stringify(seen.slice(-300))}`);
  }

  beforeAll(async () => {
    // Short path: unix socket paths are limited to 107 bytes.
    dataDir = await mkdtemp('/tmp/hpw-');
    const seeded = await new QemuDriver({ dataDir, accel: 'tcg', log: silent }).images.seed(GUEST_DIR);
    expect(['linked', 'copied']).toContain(seeded);
  });

  afterAll(async () => {
    for (const d of drivers) await d.close();
    for (const pid of qemusMentioning(dataDir)) {
      process.kill(pid, 'SIGKILL');
      await waitForPidExit(pid, 5_000);
    }
    expect(qemusMentioning(dataDir)).toEqual([]);
    await rm(dataDir, { recursive: true, force: true });
  }, 30_000);

  describe('one guest from start to graceful stop', () => {
    let d: QemuDriver;
    let exits: ExitLog;
    let pid: number;

    beforeAll(() => {
      ({ driver: d, exits } = driver());
    });

    it('starts the sample guest, which prints the ready marker on its serial console', async () => {
      const t0 = Date.now();
      ({ pid } = await d.start(spec(ID1)));
      const startMs = Date.now() - t0;

      expect(d.isRunning(ID1)).toBe(true);
      expect(readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')).toEqual(expect.arrayContaining(['-uuid', ID1, '-accel', 'tcg']));
      const readyMs = await waitConsole(ID1, pid, new RegExp(`^${MARKER}`, 'm'));
      console.log(`QEMU start (spawn → cont) ${startMs} ms; ready marker ${startMs + readyMs} ms after start() under TCG`);
    }, BOOT_TIMEOUT_MS + 10_000);

    it('keeps its runtime files private: dir 0700, qmp.sock and console.sock 0600; the disk is an overlay of the image', async () => {
      expect((await stat(dirOf(ID1))).mode & 0o777).toBe(0o700);
      expect((await stat(join(dirOf(ID1), 'qmp.sock'))).mode & 0o777).toBe(0o600);
      expect((await stat(join(dirOf(ID1), 'console.sock'))).mode & 0o777).toBe(0o600);
      expect(Number(await readFile(join(dirOf(ID1), 'qemu.pid'), 'utf8'))).toBe(pid);
      expect(await readdir(join(dataDir, 'images'))).toEqual(['sample.qcow2']);
    });

    it('answers on the interactive serial console: echo hp-$((6*7)) gives hp-42', async () => {
      const port = d.openConsole(ID1);
      try {
        await converse(port, 'echo hp-$((6*7))', /^hp-42$/m);
      } finally {
        port.destroy();
      }
      const tail = await d.consoleTail(ID1, 4096);
      expect(tail.data).toMatch(/hp-42/);
    }, 30_000);

    it('a graceful stop (ACPI power button) makes QEMU exit and removes the sockets and pid file', async () => {
      const t0 = Date.now();
      await d.stop(ID1, { force: false, graceMs: 30_000 });

      expect(Date.now() - t0).toBeLessThan(30_000);
      expect(pidAlive(pid)).toBe(false);
      expect(d.isRunning(ID1)).toBe(false);
      expect((await readdir(dirOf(ID1))).sort()).toEqual(['console.log', 'disk.qcow2', 'qemu.log']);
      expect((await d.consoleTail(ID1, 65536)).data).toMatch(/power button pressed/);
      await expect(exits.next(ID1, 1_000)).resolves.toEqual({ pid, state: 'stopped', reason: 'stopped on request', requested: true });
    }, 40_000);
  });

  describe('a failed start leaves no process, socket or file behind', () => {
    it('QEMU that refuses its command line: the error carries its message', async () => {
      const { driver: d } = driver({ extraArgs: ['-no-such-option'] });

      await expect(d.start(spec(ID2))).rejects.toThrow(/qemu exited during start \(code 1\).*-no-such-option/);

      expect(existsSync(dirOf(ID2))).toBe(false);
      expect(qemusMentioning(ID2)).toEqual([]);
      expect(d.isRunning(ID2)).toBe(false);
    }, 20_000);

    it('a failure after QEMU is up (pid file mismatch) kills it and removes everything it created', async () => {
      const elsewhere = await mkdtemp('/tmp/hpw-pid-');
      try {
        const { driver: d } = driver({ extraArgs: ['-pidfile', join(elsewhere, 'other.pid')] });

        await expect(d.start(spec(ID2))).rejects.toThrow(/pid file says nothing/);

        expect(existsSync(dirOf(ID2))).toBe(false);
        expect(qemusMentioning(ID2)).toEqual([]);
      } finally {
        await rm(elsewhere, { recursive: true, force: true });
      }
    }, 20_000);

    it('an image that is not in the store is refused before anything is created', async () => {
      const { driver: d } = driver();

      await expect(d.start({ ...spec(ID2), image: 'nope' })).rejects.toThrow(/image "nope" is not in this node's store/);
      await expect(d.start({ ...spec(ID2), image: '../etc/passwd' })).rejects.toThrow(/not a valid image name/);
      expect(existsSync(dirOf(ID2))).toBe(false);
    });

    it('a QEMU binary that exits at once', async () => {
      const { driver: d } = driver({ qemuBinary: '/bin/false' });

      await expect(d.start(spec(ID2))).rejects.toThrow(/qemu exited during start \(code 1\)/);
      expect(existsSync(dirOf(ID2))).toBe(false);
    });
  });

  it('SIGKILL of QEMU is detected: failed, with the signal as reason; its sockets are cleaned up', async () => {
    const { driver: d, exits } = driver();
    const { pid } = await d.start(spec(ID3));

    process.kill(pid, 'SIGKILL');
    const exit = await exits.next(ID3, 10_000);

    expect(exit).toEqual({ pid, state: 'failed', reason: 'qemu exited with signal SIGKILL', requested: false });
    expect(d.isRunning(ID3)).toBe(false);
    expect((await readdir(dirOf(ID3))).sort()).toEqual(['console.log', 'disk.qcow2', 'qemu.log']);
    await d.destroy(ID3);
    expect(existsSync(dirOf(ID3))).toBe(false);
  }, 20_000);

  it('a guest that powers itself off is reported stopped: "guest powered off"', async () => {
    const { driver: d, exits } = driver();
    const { pid } = await d.start(spec(ID5));
    await waitConsole(ID5, pid, new RegExp(`^${MARKER}`, 'm'));

    const port = d.openConsole(ID5);
    try {
      port.on('data', () => undefined);
      for (let i = 0; i < 5 && !exits.exits.has(ID5); i++) {
        port.write('poweroff\n');
        await exits.next(ID5, 5_000).catch(() => undefined);
      }
    } finally {
      port.destroy();
    }

    await expect(exits.next(ID5, 1_000)).resolves.toEqual({ pid, state: 'stopped', reason: 'guest powered off', requested: false });
    expect(pidAlive(pid)).toBe(false);
  }, BOOT_TIMEOUT_MS + 30_000);

  it('re-attach: a second driver over the same data dir adopts the running guest (same pid), reaches its console and stops it', async () => {
    const first = driver();
    const { pid } = await first.driver.start(spec(ID4));
    await waitConsole(ID4, pid, new RegExp(`^${MARKER}`, 'm'));
    await first.driver.close(); // the agent goes away; the guest does not

    const second = driver();
    const found = await second.driver.recover();

    expect(found).toEqual([{ id: ID4, alive: true, pid, status: 'running' }]);
    expect(second.driver.isRunning(ID4)).toBe(true);
    expect(pidAlive(pid)).toBe(true);
    // The adopted guest's console works; once its shell answers, acpid (started before the shell) hears the power button.
    const port = second.driver.openConsole(ID4);
    try {
      await converse(port, 'echo hp-$((6*7))', /^hp-42$/m);
    } finally {
      port.destroy();
    }
    const t0 = Date.now();
    await second.driver.stop(ID4, { force: false, graceMs: 30_000 });
    expect(Date.now() - t0).toBeLessThan(25_000);
    expect(pidAlive(pid)).toBe(false);
    await expect(second.exits.next(ID4, 1_000)).resolves.toEqual({ pid, state: 'stopped', reason: 'stopped on request', requested: true });
    expect(first.exits.exits.size).toBe(0);

    // A third driver finds nothing left to adopt: the runtime files are gone.
    await expect(driver().driver.recover()).resolves.toEqual([]);
  }, BOOT_TIMEOUT_MS + 40_000);
});
