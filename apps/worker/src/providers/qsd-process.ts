/**
 * One `qemu-storage-daemon` process: spawned detached (it outlives the agent, like guests do) with
 * its QMP monitor on a unix socket and a pid file in its directory, or adopted again after an
 * agent restart through that socket. Tells once when it ends, with a reason.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { chmod, open, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { QmpClient } from '@hyperplane/qmp';
import { cmdlineContains, connectWhileStarting, pidAlive, readPidFile, signalPid } from '../drivers/qemu/qemu-process';

/** How long a daemon may take from spawn to a QMP answer. */
const START_TIMEOUT_MS = 15_000;
/** How long to wait for a daemon to exit after SIGTERM before SIGKILL. */
const TERM_TIMEOUT_MS = 3_000;

/** Files of one daemon, by role name (`provider`, `gateway`). */
export function qsdFiles(dir: string, role: string): { qmp: string; pid: string; log: string } {
  return { qmp: join(dir, `${role}.qmp`), pid: join(dir, `${role}.pid`), log: join(dir, `${role}.log`) };
}

/** A live daemon we manage. */
export interface QsdProcess {
  pid: number;
  qmp: QmpClient;
  /** Resolves once the process is gone, with why it ended. */
  readonly ended: Promise<string>;
  /** True once it ended. */
  readonly isGone: boolean;
  /** SIGTERM, then SIGKILL; resolves once it is gone. */
  kill(): Promise<void>;
}

/** The last lines of a daemon's log (for error messages). */
export async function logTail(path: string, bytes = 600): Promise<string> {
  try {
    const handle = await open(path, 'r');
    try {
      const { size } = await handle.stat();
      const start = Math.max(0, size - bytes);
      const buffer = Buffer.alloc(size - start);
      await handle.read(buffer, 0, buffer.length, start);
      return buffer.toString('utf8').trim().split('\n').slice(-3).join(' ');
    } finally {
      await handle.close();
    }
  } catch {
    return '';
  }
}

/**
 * Spawns `binary --chardev socket,...qmp --monitor chardev=qmp --pidfile ... <args>` in `dir`
 * and resolves once QMP answered and the pid file names the process. `marker` must appear in the
 * command line (a path inside `dir`), so adoption can check a pid is really ours. On failure the
 * process is killed and its runtime files removed.
 */
export async function spawnQsd(binary: string, dir: string, role: string, args: string[]): Promise<QsdProcess> {
  const files = qsdFiles(dir, role);
  await Promise.all([rm(files.qmp, { force: true }), rm(files.pid, { force: true })]);
  const logFd = openSync(files.log, 'a', 0o600);
  let child: ChildProcess;
  try {
    child = spawn(binary, ['--chardev', `socket,id=qmp,path=${files.qmp},server=on,wait=off`, '--monitor', 'chardev=qmp', '--pidfile', files.pid, ...args], {
      detached: true,
      stdio: ['ignore', logFd, logFd],
      cwd: dir,
    });
  } finally {
    closeSync(logFd);
  }
  child.unref();
  const exited = new Promise<string>((resolve) => {
    child.once('exit', (code, signal) => resolve(signal ? `exited with signal ${signal}` : `exited with code ${code}`));
    child.once('error', (error) => resolve(`could not start: ${error.message}`));
  });
  try {
    const qmp = await connectStarted(files.qmp, exited, files.log);
    await chmod(files.qmp, 0o600);
    const pid = await readPidFile(files.pid);
    if (pid === undefined || pid !== child.pid) throw new Error(`pid file says ${pid ?? 'nothing'}, but the process is ${child.pid}`);
    return watch(pid, qmp, exited.then(async (how) => `qemu-storage-daemon ${how}${await tailSuffix(files.log)}`), () => child.kill('SIGKILL'));
  } catch (error) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    await Promise.all([rm(files.qmp, { force: true }), rm(files.pid, { force: true })]);
    throw error;
  }
}

/**
 * Re-attaches to a daemon an earlier agent process left running (its QMP socket answers and its
 * pid file names a live process whose command line mentions `dir`). Undefined when there is none;
 * its stale runtime files are then removed.
 */
export async function adoptQsd(dir: string, role: string): Promise<QsdProcess | undefined> {
  const files = qsdFiles(dir, role);
  const pid = await readPidFile(files.pid);
  const hasSocket = await stat(files.qmp).then(() => true, () => false);
  if (pid === undefined || !hasSocket || !pidAlive(pid) || !cmdlineContains(pid, dir)) {
    await Promise.all([rm(files.qmp, { force: true }), rm(files.pid, { force: true })]);
    return undefined;
  }
  let qmp: QmpClient;
  try {
    qmp = await QmpClient.connect(files.qmp, { connectTimeoutMs: 3_000, commandTimeoutMs: 30_000 });
  } catch {
    return undefined;
  }
  const ended = new Promise<string>((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    const poll = (delay: number) => {
      if (!pidAlive(pid)) {
        resolve('qemu-storage-daemon exited (adopted after an agent restart: exit status unknown)');
        return;
      }
      timer = setTimeout(() => poll(Math.min(delay * 2, 1_000)), delay);
      timer.unref();
    };
    qmp.on('disconnect', () => poll(20));
    void timer;
  });
  return watch(pid, qmp, ended, () => signalPid(pid, 'SIGKILL'));
}

function watch(pid: number, qmp: QmpClient, ended: Promise<string>, sigkill: () => void): QsdProcess {
  let gone = false;
  const done = ended.then(async (reason) => {
    gone = true;
    await qmp.close();
    return reason;
  });
  return {
    pid,
    qmp,
    ended: done,
    get isGone() {
      return gone;
    },
    async kill() {
      if (gone) return;
      signalPid(pid, 'SIGTERM');
      const timer = setTimeout(sigkill, TERM_TIMEOUT_MS);
      await done;
      clearTimeout(timer);
    },
  };
}

async function connectStarted(path: string, exited: Promise<string>, log: string): Promise<QmpClient> {
  let exit: string | undefined;
  void exited.then((how) => (exit = how));
  try {
    return await connectWhileStarting(path, exited, Date.now() + START_TIMEOUT_MS, { connectTimeoutMs: 5_000, commandTimeoutMs: 30_000 });
  } catch (error) {
    if (exit) throw new Error(`qemu-storage-daemon ${exit} during start${await tailSuffix(log)}`);
    throw new Error(`qemu-storage-daemon did not answer on QMP: ${(error as Error).message}`);
  }
}

async function tailSuffix(log: string): Promise<string> {
  const tail = await logTail(log);
  return tail ? `: ${tail}` : '';
}
