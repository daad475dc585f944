/**
 * `npm run bench:schedule`: 1,000 hollow nodes (one simulated worker process speaking the real
 * agent protocol), 10,000 partitions created through the API as fast as it accepts them — half in
 * creates with `count` (100 each), half one by one, 32 requests in flight. Prints placements/s
 * (API accepted → placement committed: the create answers after its transaction commits), p50/p99
 * placement latency per partition, the control plane's RSS, and, in the same run against the same
 * PostgreSQL, pgbench single-row-insert TPS with 8 clients; checks that no node is overcommitted.
 * The last line is JSON.
 */
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';

const ROOT = join(__dirname, '..', '..');
const NODES = Number(process.env.BENCH_NODES ?? 1000);
const PARTITIONS = Number(process.env.BENCH_PARTITIONS_TOTAL ?? 10_000);
const BATCH = 100;
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

function freePort(): Promise<number> {
  return new Promise((res) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => res(typeof a === 'object' && a ? a.port : 0));
    });
  });
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Math.round(Number(m[1]) / 1024) : NaN;
}

async function main(): Promise<void> {
  const adminUrl = process.env.BENCH_DATABASE_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  const dbName = `hp_bench_sched_${Date.now().toString(36)}`;
  const admin = new Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${dbName}`);
  const dbUrl = new URL(adminUrl);
  dbUrl.pathname = `/${dbName}`;
  const dir = mkdtempSync(join(tmpdir(), 'hp-bench-sched-'));
  const children: ChildProcess[] = [];
  try {
    const [httpPort, grpcPort] = [await freePort(), await freePort()];
    const env = { ...process.env, DATABASE_URL: dbUrl.toString(), HYPERPLANE_HTTP_PORT: String(httpPort), HYPERPLANE_GRPC_PORT: String(grpcPort), HYPERPLANE_DATA_DIR: join(dir, 'cp'), HYPERPLANE_REDIS_PREFIX: dbName, HYPERPLANE_BIND_ADDRESS: '127.0.0.1' };
    const cp = spawn(process.execPath, [join(ROOT, 'apps/control-plane/dist/main.js')], { env, stdio: ['ignore', 'ignore', 'inherit'] });
    children.push(cp);
    const base = `http://127.0.0.1:${httpPort}`;
    for (let i = 0; i < 150 && !(await fetch(`${base}/readyz`).then((r) => r.ok, () => false)); i++) await sleep(200);
    const worker = spawn(process.execPath, [join(ROOT, 'apps/worker/dist/main.js'), '--node', 'hollow', '--address', '127.0.0.1', '--control-plane', `127.0.0.1:${grpcPort}`, '--data-dir', join(dir, 'nodes'), '--driver', 'simulated', '--count', String(NODES), '--sim-start-ms', '200'], { env: { ...env, HYPERPLANE_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'ignore', 'inherit'] });
    children.push(worker);
    const adminToken = readFileSync(join(dir, 'cp', 'admin-token'), 'utf8').trim();
    const h = { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' };
    const db = new Client({ connectionString: dbUrl.toString() });
    await db.connect();
    const t0reg = Date.now();
    for (;;) {
      const { rows } = await db.query(`SELECT count(*)::int AS n FROM nodes WHERE status = 'ready'`);
      if (rows[0].n >= NODES) break;
      if (Date.now() - t0reg > 120_000) throw new Error(`only ${rows[0].n} of ${NODES} hollow nodes registered`);
      await sleep(250);
    }
    console.log(`${NODES} hollow nodes registered in ${Date.now() - t0reg} ms`);
    const project = (await (await fetch(`${base}/v1/projects`, { method: 'POST', headers: h, body: JSON.stringify({ name: 'bench' }) })).json()) as { id: string };
    const token = ((await (await fetch(`${base}/v1/projects/${project.id}/tokens`, { method: 'POST', headers: h, body: JSON.stringify({ role: 'operator' }) })).json()) as { token: string }).token;
    const th = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };

    // Half in batches of 100, half one by one, interleaved.
    type Task = { name: string; count?: number };
    const tasks: Task[] = [];
    const batches = Math.floor(PARTITIONS / 2 / BATCH);
    for (let b = 0; b < batches; b++) tasks.push({ name: `b${b}`, count: BATCH });
    for (let i = 0; i < PARTITIONS - batches * BATCH; i++) tasks.push({ name: `s${i}` });
    for (let i = tasks.length - 1; i > 0; i--) {
      const j = (i * 7919) % (i + 1);
      [tasks[i], tasks[j]] = [tasks[j]!, tasks[i]!];
    }
    const latencies: number[] = [];
    let failures = 0;
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        for (;;) {
          const t = tasks[next++];
          if (!t) return;
          const s = performance.now();
          const r = await fetch(`${base}/v1/partitions`, { method: 'POST', headers: th, body: JSON.stringify({ name: t.name, vcpus: 1, memoryMiB: 64, image: 'sample', ...(t.count ? { count: t.count } : {}) }) });
          const ms = performance.now() - s;
          await r.arrayBuffer();
          if (r.status !== 202) {
            failures++;
            continue;
          }
          for (let i = 0; i < (t.count ?? 1); i++) latencies.push(ms);
        }
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    const placed = latencies.length;
    const placementsPerSecond = placed / seconds;
    const rss = rssMiB(cp.pid!);

    const { rows: over } = await db.query(
      `SELECT count(*)::int AS n FROM nodes n WHERE n.allocated_vcpus > floor(n.vcpus * n.cpu_allocation_ratio)
         OR n.allocated_memory_mib > floor(n.memory_mib * n.memory_allocation_ratio)
         OR n.allocated_vcpus <> (SELECT COALESCE(sum(p.vcpus), 0) FROM partitions p WHERE p.node_id = n.id)`,
    );
    const overcommitted = over[0].n as number;
    const { rows: spread } = await db.query(`SELECT count(DISTINCT node_id)::int AS used FROM partitions`);

    // pgbench in the same run, same server: single-row inserts, 8 clients.
    await db.query(`CREATE TABLE bench_insert (id bigserial PRIMARY KEY, v integer NOT NULL, at timestamptz NOT NULL DEFAULT now())`);
    const script = join(dir, 'insert.sql');
    writeFileSync(script, 'INSERT INTO bench_insert (v) VALUES (1);\n');
    const out = execFileSync('pgbench', ['-n', '-c', '8', '-j', '2', '-T', '10', '-f', script, dbUrl.toString()], { encoding: 'utf8' });
    const pgbenchTps = Number(/tps = ([\d.]+)/.exec(out)?.[1] ?? NaN);
    await db.end();

    console.log(`placed ${placed} partitions (${failures} requests refused) in ${seconds.toFixed(2)} s on ${NODES} hollow nodes, ${spread[0].used} nodes used`);
    console.log(`placements/s: ${placementsPerSecond.toFixed(0)} (goal >= 0.5 x pgbench = ${(pgbenchTps / 2).toFixed(0)})`);
    console.log(`placement latency: p50 ${pct(latencies, 50).toFixed(1)} ms, p99 ${pct(latencies, 99).toFixed(1)} ms (goal p99 <= 250)`);
    console.log(`pgbench single-row insert, 8 clients: ${pgbenchTps.toFixed(0)} tps`);
    console.log(`control-plane RSS: ${rss} MiB (goal <= 400)`);
    console.log(`overcommitted nodes: ${overcommitted}`);
    console.log(JSON.stringify({ placementsPerSecond: Math.round(placementsPerSecond), pgbenchTps: Math.round(pgbenchTps), p50Ms: Number(pct(latencies, 50).toFixed(1)), p99Ms: Number(pct(latencies, 99).toFixed(1)), overcommittedNodes: overcommitted, rssMiB: rss }));
  } finally {
    for (const c of children.reverse()) c.kill('SIGTERM');
    await sleep(2000);
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => undefined);
    await admin.end();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
