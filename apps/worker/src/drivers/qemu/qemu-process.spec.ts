import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { socketAppeared } from './qemu-process';

describe('socketAppeared', () => {
  let dir: string;
  let server: Server | undefined;
  const never = new Promise<never>(() => undefined);

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'hp-socket-'));
  });
  afterEach(async () => {
    if (server) await new Promise((r) => server!.close(r));
    server = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  it('resolves as soon as the socket is bound, not at its next look', async () => {
    const path = join(dir, 'qmp.sock');
    // Looks only every 10 s: what ends the wait within moments is inotify.
    const appeared = socketAppeared(path, never, Date.now() + 60_000, 10_000);
    // Other files of the directory change first: they do not end the wait.
    writeFileSync(join(dir, 'console.log'), 'x');
    let done = false;
    void appeared.then(() => (done = true));
    await new Promise((r) => setTimeout(r, 50));
    expect(done).toBe(false);
    const bound = Date.now();
    server = createServer();
    await new Promise<void>((r) => server!.listen(path, r));
    await appeared;
    expect(Date.now() - bound).toBeLessThan(2_000);
  });

  it('resolves at once for a socket that is there already', async () => {
    const path = join(dir, 'qmp.sock');
    server = createServer();
    await new Promise<void>((r) => server!.listen(path, r));
    const t0 = Date.now();
    await socketAppeared(path, never, Date.now() + 60_000, 10_000);
    expect(Date.now() - t0).toBeLessThan(2_000);
  });

  it('resolves when the process exits first, or at the deadline', async () => {
    const path = join(dir, 'qmp.sock');
    let exit!: () => void;
    const exited = new Promise<void>((r) => (exit = r));
    const waiting = socketAppeared(path, exited, Date.now() + 60_000, 10_000);
    setTimeout(exit, 30);
    const t0 = Date.now();
    await waiting;
    expect(Date.now() - t0).toBeLessThan(2_000);
    const t1 = Date.now();
    await socketAppeared(path, never, Date.now() + 100);
    expect(Date.now() - t1).toBeGreaterThanOrEqual(95);
    expect(Date.now() - t1).toBeLessThan(2_000);
  });

  it('still sees the socket where the directory cannot be watched (the looks alone)', async () => {
    const path = join(dir, 'missing-dir', 'qmp.sock'); // watch throws: no such directory
    const waiting = socketAppeared(path, never, Date.now() + 10_000);
    await new Promise((r) => setTimeout(r, 30));
    mkdirSync(join(dir, 'missing-dir'));
    server = createServer();
    await new Promise<void>((r) => server!.listen(path, r));
    const t0 = Date.now();
    await waiting; // at the next look, 20 ms on
    expect(Date.now() - t0).toBeLessThan(2_000);
  });
});
