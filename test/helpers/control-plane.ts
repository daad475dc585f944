/**
 * Test harness: a real control plane (in this process or as a child process) on the run's own
 * PostgreSQL database and Redis prefix (test/global-setup.ts), with random free ports.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Client } from 'pg';
import { uuidv7 } from '@hyperplane/domain';
import { loadConfig, Config } from '../../apps/control-plane/src/config';
import { startControlPlane, ControlPlane } from '../../apps/control-plane/src/bootstrap';
import { AuthService } from '../../apps/control-plane/src/projects/auth.service';

/** The repository root. */
export const ROOT = resolve(__dirname, '../..');

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => res(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

/** Environment for a control plane under test. */
export function testEnv(extra: Record<string, string> = {}): Record<string, string> {
  if (!process.env.DATABASE_URL || !process.env.HYPERPLANE_REDIS_PREFIX) throw new Error('test/global-setup.ts did not run');
  return {
    DATABASE_URL: process.env.DATABASE_URL,
    REDIS_URL: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
    HYPERPLANE_REDIS_PREFIX: process.env.HYPERPLANE_REDIS_PREFIX,
    HYPERPLANE_LOG_LEVEL: process.env.HP_TEST_LOG_LEVEL ?? 'silent',
    HYPERPLANE_BIND_ADDRESS: '127.0.0.1',
    ...extra,
  };
}

/** A control plane running inside the test process. */
export interface InProcess {
  cp: ControlPlane;
  config: Config;
  url: string;
  grpcAddress: string;
  dataDir: string;
  close(): Promise<void>;
}

/** Starts a control plane in this process on free ports. */
export async function startInProcess(extra: Record<string, string> = {}): Promise<InProcess> {
  const dataDir = mkdtempSync(join(tmpdir(), 'hp-cp-'));
  const env = testEnv({ HYPERPLANE_HTTP_PORT: String(await freePort()), HYPERPLANE_GRPC_PORT: String(await freePort()), HYPERPLANE_DATA_DIR: dataDir, ...extra });
  const config = loadConfig(env);
  const cp = await startControlPlane(config);
  return {
    cp,
    config,
    url: `http://127.0.0.1:${cp.httpPort}`,
    grpcAddress: `127.0.0.1:${cp.grpcPort}`,
    dataDir,
    close: async () => {
      await cp.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** A control plane running as a child process (for SIGKILL tests). */
export interface ChildControlPlane {
  proc: ChildProcess;
  url: string;
  grpcAddress: string;
  httpPort: number;
  grpcPort: number;
  env: Record<string, string>;
  output(): string;
}

/** Spawns `node apps/control-plane/dist/main.js` and waits for /readyz. */
export async function spawnControlPlane(env: Record<string, string>): Promise<ChildControlPlane> {
  const proc = spawn(process.execPath, [join(ROOT, 'apps/control-plane/dist/main.js')], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d) => (out = (out + d).slice(-20000)));
  proc.stderr!.on('data', (d) => (out = (out + d).slice(-20000)));
  const url = `http://127.0.0.1:${env.HYPERPLANE_HTTP_PORT}`;
  await waitUntil(async () => {
    if (proc.exitCode !== null) throw new Error(`control plane exited: ${out}`);
    try {
      return (await fetch(`${url}/readyz`)).status === 200;
    } catch {
      return false;
    }
  }, 30_000, 'control plane ready');
  return { proc, url, grpcAddress: `127.0.0.1:${env.HYPERPLANE_GRPC_PORT}`, httpPort: Number(env.HYPERPLANE_HTTP_PORT), grpcPort: Number(env.HYPERPLANE_GRPC_PORT), env, output: () => out };
}

/** Polls `fn` until it returns true. */
export async function waitUntil(fn: () => Promise<boolean> | boolean, timeoutMs: number, what: string, everyMs = 100): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Creates a cluster-admin token straight in the database (the first-start token exists only once per database). */
export async function clusterAdminToken(): Promise<string> {
  const { secret, hash, prefix } = AuthService.newSecret();
  const c = new Client({ connectionString: process.env.DATABASE_URL });
  await c.connect();
  try {
    await c.query(`INSERT INTO api_tokens (id, project_id, role, token_hash, prefix, description) VALUES ($1, NULL, 'cluster-admin', $2, $3, 'test')`, [uuidv7(), hash, prefix]);
  } finally {
    await c.end();
  }
  return secret;
}

/** A tiny REST client for tests. */
export class Api {
  constructor(
    readonly url: string,
    readonly token?: string,
  ) {}

  /** Same client, another token. */
  as(token: string | undefined): Api {
    return new Api(this.url, token);
  }

  /** Sends a request; returns status, parsed body and headers. */
  async call<T = any>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: T; headers: Headers }> {
    const h: Record<string, string> = { ...headers };
    if (this.token) h.authorization = `Bearer ${this.token}`;
    let payload: string | undefined;
    if (body !== undefined) {
      h['content-type'] = 'application/json';
      payload = typeof body === 'string' ? body : JSON.stringify(body);
    }
    const res = await fetch(this.url + path, { method, headers: h, body: payload });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      /* not JSON */
    }
    return { status: res.status, body: parsed as T, headers: res.headers };
  }

  get<T = any>(path: string, headers?: Record<string, string>) { return this.call<T>('GET', path, undefined, headers); }
  post<T = any>(path: string, body?: unknown, headers?: Record<string, string>) { return this.call<T>('POST', path, body, headers); }
  patch<T = any>(path: string, body?: unknown, headers?: Record<string, string>) { return this.call<T>('PATCH', path, body, headers); }
  delete<T = any>(path: string, headers?: Record<string, string>) { return this.call<T>('DELETE', path, undefined, headers); }

  /** Creates a project and an admin token in it; returns a client acting as that admin. */
  async newProject(name: string, role = 'admin'): Promise<{ api: Api; projectId: string; token: string }> {
    const p = await this.post('/v1/projects', { name });
    if (p.status !== 201) throw new Error(`create project ${name}: ${p.status} ${JSON.stringify(p.body)}`);
    const t = await this.post(`/v1/projects/${p.body.id}/tokens`, { role });
    if (t.status !== 201) throw new Error(`create token: ${t.status} ${JSON.stringify(t.body)}`);
    return { api: this.as(t.body.token), projectId: p.body.id, token: t.body.token };
  }

  /** Waits for an operation to finish and returns it. */
  async waitOperation(id: string, timeoutSeconds = 60): Promise<any> {
    const end = Date.now() + timeoutSeconds * 1000;
    for (;;) {
      const r = await this.get(`/v1/operations/${id}/wait?timeoutSeconds=${Math.min(30, timeoutSeconds)}`);
      if (r.status !== 200) throw new Error(`wait ${id}: ${r.status} ${JSON.stringify(r.body)}`);
      if (['succeeded', 'failed', 'cancelled'].includes(r.body.status)) return r.body;
      if (Date.now() > end) throw new Error(`operation ${id} still ${r.body.status} after ${timeoutSeconds} s`);
    }
  }
}
