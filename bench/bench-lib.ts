/** What the benchmarks share: a database of their own, a control plane process, ports, RSS. */
import { ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, openSync, readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { Client } from 'pg';

/** The repository root (benchmarks run from bench/dist). */
export const ROOT = join(__dirname, '..', '..');

/** Resolves after `ms`. */
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((res) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => res(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

/** Resident memory of a process, in MiB with one decimal. */
export function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Math.round((Number(m[1]) / 1024) * 10) / 10 : NaN;
}

/** What an interrupted run (SIGINT, SIGTERM) undoes before it exits, newest first. */
const undoOnInterrupt: Array<() => Promise<void>> = [];
let interruptHandled = false;

/**
 * Sets `undo` to run should the run be interrupted (Ctrl-C, SIGTERM; it then exits with status
 * 130); the returned function runs it at the run's end instead.
 */
export function cleanUpOnInterrupt(undo: () => Promise<void>): () => Promise<void> {
  if (!interruptHandled) {
    interruptHandled = true;
    const interrupted = async () => {
      for (const u of undoOnInterrupt.splice(0).reverse()) await u().catch(() => undefined);
      process.exit(130);
    };
    process.once('SIGINT', () => void interrupted());
    process.once('SIGTERM', () => void interrupted());
  }
  undoOnInterrupt.push(undo);
  return async () => {
    const i = undoOnInterrupt.indexOf(undo);
    if (i >= 0) undoOnInterrupt.splice(i, 1);
    await undo();
  };
}

/** Runs `fn` with a fresh PostgreSQL database (named `<prefix>_<time>`), dropped afterwards, also when the run is interrupted. */
export async function withBenchDatabase<T>(prefix: string, fn: (db: { url: string; name: string }) => Promise<T>): Promise<T> {
  const adminUrl = process.env.BENCH_DATABASE_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  const name = `${prefix}_${Date.now().toString(36)}`;
  const admin = new Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  const cleanUp = cleanUpOnInterrupt(async () => {
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => undefined);
    await admin.end();
  });
  try {
    return await fn({ url: url.toString(), name });
  } finally {
    await cleanUp();
  }
}

/** A control-plane process started by a benchmark. */
export interface BenchControlPlane {
  proc: ChildProcess;
  base: string;
  grpcAddress: string;
  env: NodeJS.ProcessEnv;
  /** Headers with the first cluster-admin token. */
  adminHeaders(): Record<string, string>;
}

/** Where a started process's output goes: a file `<name>.log` in BENCH_LOG_DIR when it is set, else nowhere. */
export function logTo(name: string): 'ignore' | number {
  const dir = process.env.BENCH_LOG_DIR;
  if (!dir) return 'ignore';
  mkdirSync(dir, { recursive: true });
  return openSync(join(dir, `${name}.log`), 'a');
}

/**
 * Starts `apps/control-plane/dist/main.js` on free ports against the database and waits for
 * /readyz. `BENCH_NODE_ARGS` adds node flags (e.g. `--cpu-prof`); BENCH_LOG_DIR keeps its log.
 */
export async function startControlPlane(db: { url: string; name: string }, dataDir: string, extraEnv: NodeJS.ProcessEnv = {}): Promise<BenchControlPlane> {
  const [httpPort, grpcPort] = [await freePort(), await freePort()];
  const env = { ...process.env, DATABASE_URL: db.url, HYPERPLANE_HTTP_PORT: String(httpPort), HYPERPLANE_GRPC_PORT: String(grpcPort), HYPERPLANE_DATA_DIR: dataDir, HYPERPLANE_REDIS_PREFIX: db.name, HYPERPLANE_BIND_ADDRESS: '127.0.0.1', ...extraEnv };
  const args = [...(process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean), join(ROOT, 'apps/control-plane/dist/main.js')];
  const proc = spawn(process.execPath, args, { env, stdio: ['ignore', logTo('control-plane'), 'inherit'] });
  const base = `http://127.0.0.1:${httpPort}`;
  for (let i = 0; i < 150 && !(await fetch(`${base}/readyz`).then((r) => r.ok, () => false)); i++) await sleep(200);
  return {
    proc,
    base,
    grpcAddress: `127.0.0.1:${grpcPort}`,
    env,
    adminHeaders: () => ({ authorization: `Bearer ${readFileSync(join(dataDir, 'admin-token'), 'utf8').trim()}`, 'content-type': 'application/json' }),
  };
}

/** Creates a project and a token with `role` in it; returns request headers for that token. */
export async function projectHeaders(cp: BenchControlPlane, role: string): Promise<{ projectId: string; headers: Record<string, string> }> {
  const h = cp.adminHeaders();
  const project = (await (await fetch(`${cp.base}/v1/projects`, { method: 'POST', headers: h, body: JSON.stringify({ name: 'bench' }) })).json()) as { id: string };
  const token = ((await (await fetch(`${cp.base}/v1/projects/${project.id}/tokens`, { method: 'POST', headers: h, body: JSON.stringify({ role }) })).json()) as { token: string }).token;
  return { projectId: project.id, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' } };
}

/** SIGTERM, then SIGKILL for what is still running two seconds later. */
export async function stopAll(children: ChildProcess[]): Promise<void> {
  for (const c of [...children].reverse()) c.kill('SIGTERM');
  await sleep(2000);
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
}

/** CPU ticks (1/100 s) a process used so far: user + system by default (fields of /proc/PID/stat after the command). */
export function ticksOf(pid: number, fields: [number, number] = [11, 13]): number {
  try {
    return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ').slice(...fields).reduce((a, b) => a + Number(b), 0);
  } catch {
    return 0; // exited meanwhile
  }
}

export const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

/** CPU ticks summed over every process whose command is `comm` (all PostgreSQL backends, for instance). */
export function ticksOfComm(comm: string): number {
  let total = 0;
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readFileSync(`/proc/${d}/comm`, 'utf8').trim().startsWith(comm)) total += ticksOf(Number(d));
    } catch {
      // gone
    }
  }
  return total;
}
