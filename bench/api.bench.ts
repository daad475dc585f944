/**
 * `npm run bench:api`: GET /v1/partitions/{id} through the full control plane (auth, Nest,
 * Fastify, TypeORM, logging) against a bare Fastify + pg handler doing the same query on the same
 * database, with 100,000 partitions stored. Rounds are interleaved; the best round of each counts.
 * Prints both req/s, their ratio and the control plane's RSS; the last line is JSON.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import autocannon from 'autocannon';
import { Client } from 'pg';

const ROOT = join(__dirname, '..', '..');
const PARTITIONS = Number(process.env.BENCH_PARTITIONS ?? 100_000);
const DURATION = Number(process.env.BENCH_SECONDS ?? 8);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 32);

function freePort(): Promise<number> {
  return new Promise((res) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => res(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

async function waitFor(fn: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await fn().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}`);
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Math.round(Number(m[1]) / 1024) : NaN;
}

async function load(url: string, token?: string): Promise<number> {
  const r = await autocannon({ url, connections: CONNECTIONS, duration: DURATION, headers: token ? { authorization: `Bearer ${token}` } : {} });
  if (r.non2xx > 0 || r.errors > 0) throw new Error(`${url}: ${r.non2xx} non-2xx answers, ${r.errors} errors`);
  return r.requests.average;
}

async function main(): Promise<void> {
  const adminUrl = process.env.BENCH_DATABASE_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  const dbName = `hp_bench_${Date.now().toString(36)}`;
  const admin = new Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${dbName}`);
  const dbUrl = new URL(adminUrl);
  dbUrl.pathname = `/${dbName}`;
  const dataDir = mkdtempSync(join(tmpdir(), 'hp-bench-'));
  const children: ChildProcess[] = [];
  try {
    const [httpPort, grpcPort, barePort] = [await freePort(), await freePort(), await freePort()];
    const cp = spawn(process.execPath, [...(process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean), join(ROOT, 'apps/control-plane/dist/main.js')], {
      env: { ...process.env, DATABASE_URL: dbUrl.toString(), HYPERPLANE_HTTP_PORT: String(httpPort), HYPERPLANE_GRPC_PORT: String(grpcPort), HYPERPLANE_DATA_DIR: dataDir, HYPERPLANE_REDIS_PREFIX: dbName, HYPERPLANE_BIND_ADDRESS: '127.0.0.1' },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    children.push(cp);
    const base = `http://127.0.0.1:${httpPort}`;
    await waitFor(async () => (await fetch(`${base}/readyz`)).ok, 30_000, 'control plane');
    const adminToken = readFileSync(join(dataDir, 'admin-token'), 'utf8').trim();
    const h = { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' };
    const project = await (await fetch(`${base}/v1/projects`, { method: 'POST', headers: h, body: JSON.stringify({ name: 'bench' }) })).json() as { id: string };
    const token = (await (await fetch(`${base}/v1/projects/${project.id}/tokens`, { method: 'POST', headers: h, body: JSON.stringify({ role: 'viewer' }) })).json() as { token: string }).token;

    const db = new Client({ connectionString: dbUrl.toString() });
    await db.connect();
    const t0 = Date.now();
    await db.query(`INSERT INTO nodes (id, name, address, vcpus, memory_mib, disk_bytes, last_heartbeat_at) VALUES ('00000000-0000-7000-8000-000000000001', 'bench-node', '127.0.0.9', 1000000, 100000000, 1e15, now() + interval '1 day')`);
    await db.query(
      `INSERT INTO partitions (id, project_id, name, state, node_id, vcpus, memory_mib, disk_gib, image, labels)
       SELECT (lpad(to_hex(extract(epoch from now())::bigint * 1000 + i), 12, '0') || '7000' || '8' || lpad(to_hex(i), 15, '0'))::text::uuid,
              $1, 'p-' || i, 'running', '00000000-0000-7000-8000-000000000001', 1, 128, 1, 'sample', jsonb_build_object('env', CASE WHEN i % 2 = 0 THEN 'prod' ELSE 'dev' END)
       FROM generate_series(1, $2) AS i`,
      [project.id, PARTITIONS],
    );
    await db.query('ANALYZE partitions');
    const { rows } = await db.query(`SELECT id FROM partitions WHERE project_id = $1 ORDER BY id OFFSET $2 LIMIT 1`, [project.id, Math.floor(PARTITIONS / 2)]);
    await db.end();
    const id = rows[0].id as string;
    console.log(`seeded ${PARTITIONS} partitions in ${Date.now() - t0} ms; target ${id}`);

    const bare = spawn(process.execPath, [join(__dirname, 'bare-server.js'), String(barePort), dbUrl.toString(), project.id], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(bare);
    await waitFor(async () => (await fetch(`http://127.0.0.1:${barePort}/v1/partitions/${id}`)).ok, 15_000, 'bare server');
    const stackUrl = `${base}/v1/partitions/${id}`;
    const check = await fetch(stackUrl, { headers: { authorization: `Bearer ${token}` } });
    if (!check.ok) throw new Error(`stack answered ${check.status}`);

    // Warm both up, then interleave rounds.
    await autocannon({ url: stackUrl, connections: 8, duration: 2, headers: { authorization: `Bearer ${token}` } });
    await autocannon({ url: `http://127.0.0.1:${barePort}/v1/partitions/${id}`, connections: 8, duration: 2 });
    const stack: number[] = [];
    const bareRps: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      stack.push(await load(stackUrl, token));
      bareRps.push(await load(`http://127.0.0.1:${barePort}/v1/partitions/${id}`));
      console.log(`round ${i + 1}: stack ${stack[i]!.toFixed(0)} req/s, bare ${bareRps[i]!.toFixed(0)} req/s`);
    }
    const stackRps = Math.max(...stack);
    const bareBest = Math.max(...bareRps);
    const rss = rssMiB(cp.pid!);
    const ratio = stackRps / bareBest;
    console.log(`GET /v1/partitions/{id}, ${CONNECTIONS} connections, ${DURATION} s x ${ROUNDS} rounds, ${PARTITIONS} partitions stored`);
    console.log(`full stack: ${stackRps.toFixed(0)} req/s`);
    console.log(`bare Fastify + pg: ${bareBest.toFixed(0)} req/s`);
    console.log(`ratio: ${ratio.toFixed(3)} (goal >= 0.8)`);
    console.log(`control-plane RSS with ${PARTITIONS} partitions stored: ${rss} MiB (goal <= 250)`);
    console.log(JSON.stringify({ stackRps: Math.round(stackRps), bareRps: Math.round(bareBest), ratio: Number(ratio.toFixed(3)), rssMiB100k: rss }));
  } finally {
    for (const c of children) c.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 1500));
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => undefined);
    await admin.end();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
