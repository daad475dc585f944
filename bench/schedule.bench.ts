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
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { ROOT, projectHeaders, rssMiB, sleep, startControlPlane, stopAll, withBenchDatabase } from './bench-lib';

const NODES = Number(process.env.BENCH_NODES ?? 1000);
const PARTITIONS = Number(process.env.BENCH_PARTITIONS_TOTAL ?? 10_000);
const BATCH = 100;
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

async function main(): Promise<void> {
  await withBenchDatabase('hp_bench_sched', run);
}

async function run(database: { url: string; name: string }): Promise<void> {
  const dbUrl = database.url;
  const dir = mkdtempSync(join(tmpdir(), 'hp-bench-sched-'));
  const children: ChildProcess[] = [];
  try {
    const cp = await startControlPlane(database, join(dir, 'cp'));
    children.push(cp.proc);
    const base = cp.base;
    const env = cp.env;
    const worker = spawn(process.execPath, [join(ROOT, 'apps/worker/dist/main.js'), '--node', 'hollow', '--address', '127.0.0.1', '--control-plane', cp.grpcAddress, '--data-dir', join(dir, 'nodes'), '--driver', 'simulated', '--count', String(NODES), '--sim-start-ms', '200'], { env: { ...env, HYPERPLANE_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'ignore', 'inherit'] });
    children.push(worker);
    const db = new Client({ connectionString: dbUrl });
    await db.connect();
    const t0reg = Date.now();
    for (;;) {
      const { rows } = await db.query(`SELECT count(*)::int AS n FROM nodes WHERE status = 'ready'`);
      if (rows[0].n >= NODES) break;
      if (Date.now() - t0reg > 120_000) throw new Error(`only ${rows[0].n} of ${NODES} hollow nodes registered`);
      await sleep(250);
    }
    console.log(`${NODES} hollow nodes registered in ${Date.now() - t0reg} ms`);
    const th = (await projectHeaders(cp, 'operator')).headers;

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
    const cpuTicks = () => readFileSync(`/proc/${cp.proc.pid}/stat`, 'utf8').split(') ')[1]!.split(' ').slice(11, 13).reduce((a, b) => a + Number(b), 0);
    const cpu0 = cpuTicks();
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
    const cpuMsPerPlacement = ((cpuTicks() - cpu0) * 10) / Math.max(1, latencies.length);
    const placed = latencies.length;
    const placementsPerSecond = placed / seconds;
    const rss = rssMiB(cp.proc.pid!);

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
    const out = execFileSync('pgbench', ['-n', '-c', '8', '-j', '2', '-T', '10', '-f', script, dbUrl], { encoding: 'utf8' });
    const pgbenchTps = Number(/tps = ([\d.]+)/.exec(out)?.[1] ?? NaN);
    await db.end();

    console.log(`placed ${placed} partitions (${failures} requests refused) in ${seconds.toFixed(2)} s on ${NODES} hollow nodes, ${spread[0].used} nodes used`);
    console.log(`placements/s: ${placementsPerSecond.toFixed(0)} (goal >= 0.5 x pgbench = ${(pgbenchTps / 2).toFixed(0)})`);
    console.log(`placement latency: p50 ${pct(latencies, 50).toFixed(1)} ms, p99 ${pct(latencies, 99).toFixed(1)} ms (goal p99 <= 250)`);
    console.log(`pgbench single-row insert, 8 clients: ${pgbenchTps.toFixed(0)} tps`);
    console.log(`control-plane RSS: ${rss} MiB (goal <= 400); control-plane CPU per placement: ${cpuMsPerPlacement.toFixed(2)} ms`);
    console.log(`overcommitted nodes: ${overcommitted}`);
    console.log(JSON.stringify({ placementsPerSecond: Math.round(placementsPerSecond), pgbenchTps: Math.round(pgbenchTps), p50Ms: Number(pct(latencies, 50).toFixed(1)), p99Ms: Number(pct(latencies, 99).toFixed(1)), overcommittedNodes: overcommitted, rssMiB: rss }));
  } finally {
    await stopAll(children);
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
