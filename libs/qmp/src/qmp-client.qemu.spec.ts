import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { QmpClient } from './qmp-client';
import { QmpCommandError, QmpDisconnectedError } from './qmp-errors';

function findOnPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    try {
      accessSync(join(dir, name), constants.X_OK);
      return join(dir, name);
    } catch {
      continue;
    }
  }
  return undefined;
}

const qemuBinary = findOnPath('qemu-system-x86_64');
const describeWithQemu = qemuBinary ? describe : describe.skip;
if (!qemuBinary) console.warn('Skipping the real-QEMU QMP spec: qemu-system-x86_64 is not on PATH.');

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** QEMU creates the socket shortly after it starts: retry while it is missing or refusing. */
async function connectWhenReady(path: string, exited: Promise<Exit>, stderr: () => string, timeoutMs: number): Promise<QmpClient> {
  const deadline = Date.now() + timeoutMs;
  let gone = false;
  void exited.then(() => (gone = true));
  for (;;) {
    try {
      return await QmpClient.connect(path, { connectTimeoutMs: 2_000 });
    } catch (error) {
      const code = error instanceof QmpDisconnectedError ? (error.cause as NodeJS.ErrnoException | undefined)?.code : undefined;
      if (gone) throw new Error(`QEMU exited before its QMP socket was ready: ${stderr()}`);
      if ((code !== 'ENOENT' && code !== 'ECONNREFUSED') || Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

describeWithQemu(`QmpClient against real QEMU${qemuBinary ? '' : ' (skipped: qemu-system-x86_64 is not on PATH)'}`, () => {
  let dir: string | undefined;
  let qemu: ChildProcess | undefined;
  let exited: Promise<Exit>;
  let client: QmpClient;
  let stderr = '';

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'qmp-qemu-spec-'));
    const socketPath = join(dir, 'qmp.sock');
    const args = ['-S', '-nodefaults', '-display', 'none', '-machine', 'pc', '-accel', 'tcg', '-m', '64', '-qmp', `unix:${socketPath},server=on,wait=off`];
    const child = spawn(qemuBinary!, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    qemu = child;
    exited = new Promise<Exit>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
      child.once('error', (error) => {
        stderr += String(error);
        resolve({ code: null, signal: null });
      });
    });
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    client = await connectWhenReady(socketPath, exited, () => stderr, 15_000);
  }, 30_000);

  afterAll(async () => {
    await client?.close();
    if (qemu && qemu.exitCode === null && qemu.signalCode === null) {
      qemu.kill('SIGKILL');
      await exited;
    }
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('greets with a QEMU 7.x version and reports a -S VM as prelaunch', async () => {
    expect(client.version.major).toBe(7);
    await expect(client.queryVersion()).resolves.toMatchObject({ qemu: client.version });
    await expect(client.queryStatus()).resolves.toEqual({ running: false, singlestep: false, status: 'prelaunch' });
  });

  it('resume (cont) starts the VM: RESUME event and status running', async () => {
    const resumed = client.waitForEvent('RESUME', undefined, 10_000);
    await client.resume();
    await resumed;
    await expect(client.queryStatus()).resolves.toMatchObject({ running: true, status: 'running' });
  });

  it('pause (stop) pauses it again: STOP event and status paused', async () => {
    const stopped = client.waitForEvent('STOP', undefined, 10_000);
    await client.pause();
    await stopped;
    await expect(client.queryStatus()).resolves.toMatchObject({ running: false, status: 'paused' });
  });

  it('an unknown command fails with CommandNotFound, and the probe says QEMU is alive', async () => {
    const error = await client.execute('no-such-command').catch((e: unknown) => e);

    expect(error).toBeInstanceOf(QmpCommandError);
    expect(error).toMatchObject({ errorClass: 'CommandNotFound', command: 'no-such-command' });
    await expect(client.classifyFailure(error)).resolves.toBe('command-failed');
  });

  it('quit makes QEMU exit: SHUTDOWN event, the client sees the disconnect, the process ends', async () => {
    const shutdown = client.waitForEvent('SHUTDOWN', undefined, 10_000);
    await client.quit();

    await expect(shutdown).resolves.toMatchObject({ data: { guest: false, reason: 'host-qmp-quit' } });
    await expect(client.waitForDisconnect(10_000)).resolves.toBeInstanceOf(QmpDisconnectedError);
    expect(client.closed).toBe(true);
    await expect(client.queryStatus()).rejects.toThrow(QmpDisconnectedError);
    await expect(exited).resolves.toEqual({ code: 0, signal: null });
  }, 20_000);
});
