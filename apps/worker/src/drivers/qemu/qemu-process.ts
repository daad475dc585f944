/**
 * Host process helpers for QEMU guests that may not be our children (adopted after an agent
 * restart): liveness by pid, identity by command line, pid files; and the QMP connect of a
 * process that is starting.
 */
import { existsSync, readFileSync, watch } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { QmpClient, QmpDisconnectedError, type QmpClientOptions } from '@hyperplane/qmp';

/**
 * True while process `pid` exists and is not a zombie. A zombie counts as gone: an adopted QEMU
 * whose parent (an earlier agent) died is reaped by init, or never, if init does not reap.
 */
export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** True when process `pid`'s command line contains `needle` as one argument or inside one. */
export function cmdlineContains(pid: number, needle: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').some((arg) => arg.includes(needle));
  } catch {
    return false;
  }
}

/** The pid in a QEMU `-pidfile`, or undefined when the file is missing or holds no pid. */
export async function readPidFile(path: string): Promise<number | undefined> {
  return pidOf(await readFile(path, 'utf8').catch(() => ''));
}

/** readPidFile without the thread pool (a few bytes, on a start's critical path). */
export function readPidFileSync(path: string): number | undefined {
  try {
    return pidOf(readFileSync(path, 'utf8'));
  } catch {
    return undefined;
  }
}

function pidOf(text: string): number | undefined {
  const pid = Number.parseInt(text.trim(), 10);
  return Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

/** Sends `signal` to `pid`; false when the process is already gone. */
export function signalPid(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

/** Resolves true once `pid` is gone (polling), false when `timeoutMs` passes first. */
export async function waitForPidExit(pid: number, timeoutMs: number, pollMs = 50): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (pidAlive(pid)) {
    if (Date.now() >= deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
  return true;
}

/** How often {@link socketAppeared} looks for the socket besides what inotify tells it (a fallback). */
const SOCKET_LOOK_MS = 20;

/**
 * Resolves once the unix socket at `path` exists (QEMU binds its QMP socket early in its start),
 * QEMU exited, or `deadline` passed: told by inotify on the directory, with a look every
 * SOCKET_LOOK_MS besides. Connecting again and again until it answered made a socket and an error
 * each time, every few ms: CPU taken from the QEMU that was starting (a migration's destination
 * started 40-60 ms slower through the API than bare on a busy 2-core machine).
 */
export function socketAppeared(path: string, exited: Promise<unknown>, deadline: number, lookMs = SOCKET_LOOK_MS): Promise<void> {
  return new Promise<void>((resolve) => {
    let watcher: ReturnType<typeof watch> | undefined;
    let ended = false;
    const done = () => {
      if (ended) return;
      ended = true;
      clearInterval(timer);
      watcher?.close();
      resolve();
    };
    const look = () => {
      if (existsSync(path) || Date.now() > deadline) done();
    };
    try {
      watcher = watch(dirname(path), (_event, name) => {
        if (name === null || String(name) === basename(path)) look();
      });
      watcher.on('error', () => undefined); // the looks go on
    } catch {
      // No inotify here: the looks alone.
    }
    const timer = setInterval(look, lookMs);
    void exited.then(done, done);
    look();
  });
}

/**
 * Connects to the QMP socket of a process that is starting (QEMU, qemu-storage-daemon): waits
 * until the socket is there ({@link socketAppeared}), then connects, again only in the moment it is
 * bound but not yet listening. The greeting may take until `deadline` (at least
 * `options.connectTimeoutMs`): a process that is still opening its disks on a busy machine greets
 * late. Throws when the process exited first (the caller, which knows how it exited, says so), when
 * `deadline` passed, or when the connect fails otherwise.
 */
export async function connectWhileStarting(path: string, exited: Promise<unknown>, deadline: number, options: QmpClientOptions): Promise<QmpClient> {
  let gone = false;
  void exited.then(() => (gone = true));
  await socketAppeared(path, exited, deadline);
  for (;;) {
    if (gone) throw new Error('the process exited during start');
    try {
      return await QmpClient.connect(path, { ...options, connectTimeoutMs: Math.max(options.connectTimeoutMs ?? 0, deadline - Date.now()) });
    } catch (error) {
      const code = error instanceof QmpDisconnectedError ? (error.cause as NodeJS.ErrnoException | undefined)?.code : undefined;
      if (gone) continue;
      if ((code !== 'ENOENT' && code !== 'ECONNREFUSED') || Date.now() > deadline) throw error;
      await new Promise((r) => setTimeout(r, 2)); // bound, not yet listening (it listens right after)
    }
  }
}
