/**
 * `npm run bench:schedule`: 1,000 hollow nodes (one simulated worker process speaking the real
 * agent protocol), 10,000 partitions created through the API as fast as it accepts them — half in
 * creates with `count` (100 each), half one by one, 32 requests in flight. Prints placements/s
 * (API accepted → placement committed: the create answers after its transaction commits), p50/p99
 * placement latency per partition, the control plane's RSS, and, in the same run against the same
 * PostgreSQL, pgbench single-row-insert TPS with 8 clients. Then waits until every one of the
 * 10,000 `partition.create` operations is final (each partition told to its hollow node and
 * reported running) and checks that no node is overcommitted and that every node's allocation
 * equals what its partitions hold. Also prints where the machine's CPU went while placing.
 * The last line is JSON; `rssMiB` is the control plane's peak RSS over the whole run.
 */
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import { Agent, request } from 'node:http';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { mulberry32 } from '@hyperplane/scheduler';
import { ROOT, cleanUpOnInterrupt, projectHeaders, rssMiB, sleep, startControlPlane, stopAll, sum, ticksOf, ticksOfComm, withBenchDatabase } from './bench-lib';

const NODES = Number(process.env.BENCH_NODES ?? 1000);
const PARTITIONS = Number(process.env.BENCH_PARTITIONS_TOTAL ?? 10_000);
const BATCH = 100;
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);

/** How long the run waits for the 10,000 operations to finish after the last create. */
const OPS_TIMEOUT_MS = Number(process.env.BENCH_OPS_TIMEOUT_MS ?? 300_000);
const cores = cpus().length;
const loadBefore = loadavg().map((x) => x.toFixed(2)).join(' ');

const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

/** CPU ticks (1/100 s) used so far: by the machine, and by the processes of this run. */
interface CpuSnapshot {
  total: number;
  busy: number;
  procs: { controlPlane: number; worker: number; bench: number; postgres: number; redis: number };
  /** The control plane's time in the kernel (system calls: sockets to PostgreSQL, Redis, clients). */
  controlPlaneSys: number;
}

function cpuSnapshot(p: { controlPlane: number[]; worker: number; bench: number }): CpuSnapshot {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = f[3]! + f[4]!;
  return { total: total / cores, busy: (total - idle) / cores, controlPlaneSys: sum(p.controlPlane.map((pid) => ticksOf(pid, [12, 13]))), procs: { controlPlane: sum(p.controlPlane.map((pid) => ticksOf(pid))), worker: ticksOf(p.worker), bench: ticksOf(p.bench), postgres: ticksOfComm('postgres'), redis: ticksOfComm('redis-server') } };
}

/** POSTs `body` and reads the whole answer; resolves with the status code. */
function post(agent: Agent, base: string, path: string, headers: Record<string, string>, body: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(`${base}${path}`, { method: 'POST', agent, headers: { ...headers, 'content-length': Buffer.byteLength(body) } }, (res) => {
      res.on('data', () => undefined);
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Peak resident memory (VmHWM) of a process, in MiB. */
function peakRssMiB(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Math.round((Number(m[1]) / 1024) * 10) / 10 : NaN;
}

async function main(): Promise<void> {
  await withBenchDatabase('hp_bench_sched', run);
}

async function run(database: { url: string; name: string }): Promise<void> {
  const dbUrl = database.url;
  const dir = mkdtempSync(join(tmpdir(), 'hp-bench-sched-'));
  // The 1,000 hollow nodes stand for 1,000 machines, each with its own disk: their partition
  // records go to memory (tmpfs) where there is one, not to the disk PostgreSQL writes its WAL to.
  const nodesDir = mkdtempSync(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'hp-bench-nodes-'));
  const children: ChildProcess[] = [];
  /** Stops what this run started and removes its files: when it ends, and when it is interrupted. */
  const cleanUp = cleanUpOnInterrupt(async () => {
    await stopAll(children);
    rmSync(dir, { recursive: true, force: true });
    rmSync(nodesDir, { recursive: true, force: true });
  });
  try {
    // BENCH_CP_ENV='K=V K=V' adds control-plane settings (experiments; printed below when set).
    const cpEnv = Object.fromEntries((process.env.BENCH_CP_ENV ?? '').split(' ').filter(Boolean).map((kv) => kv.split('=', 2) as [string, string]));
    if (Object.keys(cpEnv).length) console.log(`control-plane settings: ${JSON.stringify(cpEnv)}`);
    // BENCH_ROLES=split runs the control plane as two processes (HYPERPLANE_ROLE): `api` takes the
    // creates, `operations` runs the operations and holds the 1,000 agent streams. Default: one
    // process (role `all`).
    const split = process.env.BENCH_ROLES === 'split';
    const cp = await startControlPlane(database, join(dir, 'cp'), { ...cpEnv, ...(split ? { HYPERPLANE_ROLE: 'api' } : {}) });
    children.push(cp.proc);
    const opsCp = split ? await startControlPlane(database, join(dir, 'cp-ops'), { ...cpEnv, HYPERPLANE_ROLE: 'operations' }) : cp;
    if (split) {
      children.push(opsCp.proc);
      console.log('control plane: two processes, HYPERPLANE_ROLE=api (creates) and HYPERPLANE_ROLE=operations (operations, agent streams)');
    }
    const cpPids = split ? [cp.proc.pid!, opsCp.proc.pid!] : [cp.proc.pid!];
    const base = cp.base;
    const env = cp.env;
    const worker = spawn(process.execPath, [...(process.env.BENCH_WORKER_NODE_ARGS ?? '').split(' ').filter(Boolean), join(ROOT, 'apps/worker/dist/main.js'), '--node', 'hollow', '--address', '127.0.0.1', '--control-plane', opsCp.grpcAddress, '--data-dir', nodesDir, '--driver', 'simulated', '--count', String(NODES), '--sim-start-ms', '200'], { env: { ...env, HYPERPLANE_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'ignore', 'inherit'] });
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
    // Fisher-Yates with a seeded generator (mulberry32): the same order in every run. (The order
    // before 2026-12-01, j = 7919·i mod (i+1), was no shuffle: it put 25 of the 50 count creates
    // back to back; BENCH_ORDER=clumped keeps it, to compare.)
    const random = mulberry32(Number(process.env.BENCH_SEED ?? 20261201));
    for (let i = tasks.length - 1; i > 0; i--) {
      const j = process.env.BENCH_ORDER === 'clumped' ? (i * 7919) % (i + 1) : Math.floor(random() * (i + 1));
      [tasks[i], tasks[j]] = [tasks[j]!, tasks[i]!];
    }
    const latencies: number[] = [];
    const singleMs: number[] = [];
    const batchMs: number[] = [];
    let failures = 0;
    let next = 0;
    // node:http with kept-alive connections, one per client: fetch costs the load generator several
    // times more CPU per request, and that CPU is taken from the machine under test.
    const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENCY });
    const procs = { controlPlane: cpPids, worker: worker.pid!, bench: process.pid };
    const cpu0 = cpuSnapshot(procs);
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        for (;;) {
          const t = tasks[next++];
          if (!t) return;
          const s = performance.now();
          const status = await post(agent, base, '/v1/partitions', th, JSON.stringify({ name: t.name, vcpus: 1, memoryMiB: 64, image: 'sample', ...(t.count ? { count: t.count } : {}) }));
          const ms = performance.now() - s;
          if (status !== 202) {
            failures++;
            continue;
          }
          (t.count ? batchMs : singleMs).push(ms);
          for (let i = 0; i < (t.count ?? 1); i++) latencies.push(ms);
        }
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    agent.destroy();
    const cpu1 = cpuSnapshot(procs);
    const placed = latencies.length;
    const placementsPerSecond = placed / seconds;
    const rssAtPlaced = Math.round(sum(cpPids.map(rssMiB)) * 10) / 10;

    // Every create started an operation (BullMQ job → node told → node's report → finished): wait
    // for all of them, so the run ends with every partition really running, or says which did not.
    const tOps = performance.now();
    let opCounts: Record<string, number> = {};
    for (;;) {
      const { rows } = await db.query(`SELECT status, count(*)::int AS n FROM operations WHERE kind = 'partition.create' GROUP BY status`);
      opCounts = Object.fromEntries(rows.map((r) => [r.status, r.n]));
      if ((opCounts.pending ?? 0) + (opCounts.running ?? 0) === 0) break;
      if (performance.now() - tOps > OPS_TIMEOUT_MS) break;
      await sleep(200);
    }
    const opsDoneSeconds = (performance.now() - t0) / 1000;
    const cpu2 = cpuSnapshot(procs);
    const { rows: states } = await db.query(`SELECT state, count(*)::int AS n FROM partitions GROUP BY state ORDER BY state`);
    const rssPeaks = cpPids.map(peakRssMiB);
    const rssPeak = Math.round(sum(rssPeaks) * 10) / 10;

    const { rows: over } = await db.query(
      `SELECT count(*)::int AS n FROM nodes n WHERE n.allocated_vcpus > floor(n.vcpus * n.cpu_allocation_ratio)
         OR n.allocated_memory_mib > floor(n.memory_mib * n.memory_allocation_ratio)
         OR n.allocated_vcpus <> (SELECT COALESCE(sum(p.vcpus), 0) FROM partitions p WHERE p.node_id = n.id)
         OR n.allocated_memory_mib <> (SELECT COALESCE(sum(p.memory_mib), 0) FROM partitions p WHERE p.node_id = n.id)`,
    );
    const overcommitted = over[0].n as number;
    const { rows: spread } = await db.query(`SELECT count(DISTINCT node_id)::int AS used, max(c)::int AS most, min(c)::int AS least FROM (SELECT node_id, count(*) AS c FROM partitions GROUP BY node_id) x`);

    // pgbench in the same run, same server: single-row inserts, 8 clients.
    await db.query(`CREATE TABLE bench_insert (id bigserial PRIMARY KEY, v integer NOT NULL, at timestamptz NOT NULL DEFAULT now())`);
    const script = join(dir, 'insert.sql');
    writeFileSync(script, 'INSERT INTO bench_insert (v) VALUES (1);\n');
    const out = execFileSync('pgbench', ['-n', '-c', '8', '-j', '2', '-T', '10', '-f', script, dbUrl], { encoding: 'utf8' });
    const pgbenchTps = Number(/tps = ([\d.]+)/.exec(out)?.[1] ?? NaN);
    await db.end();

    const unfinished = (opCounts.pending ?? 0) + (opCounts.running ?? 0);
    const share = (a: CpuSnapshot, b: CpuSnapshot, k: keyof CpuSnapshot['procs']) => `${k} ${(((b.procs[k] - a.procs[k]) / (b.total - a.total)) * 100).toFixed(0)}%`;
    const busy = (a: CpuSnapshot, b: CpuSnapshot) => `machine busy ${(((b.busy - a.busy) / (b.total - a.total)) * 100).toFixed(0)}% of ${cores} cores`;
    console.log(`placed ${placed} partitions (${failures} requests refused) in ${seconds.toFixed(2)} s on ${NODES} hollow nodes, ${spread[0].used} nodes used (${spread[0].least}-${spread[0].most} partitions each)`);
    console.log(`placements/s: ${placementsPerSecond.toFixed(0)} (goal >= 0.5 x pgbench = ${(pgbenchTps / 2).toFixed(0)})`);
    console.log(`placement latency: p50 ${pct(latencies, 50).toFixed(1)} ms, p99 ${pct(latencies, 99).toFixed(1)} ms (goal p99 <= 250); single creates p50 ${pct(singleMs, 50).toFixed(1)} / p99 ${pct(singleMs, 99).toFixed(1)} ms, count=${BATCH} creates p50 ${pct(batchMs, 50).toFixed(1)} / p99 ${pct(batchMs, 99).toFixed(1)} ms`);
    console.log(`operations: ${JSON.stringify(opCounts)}; all final ${opsDoneSeconds.toFixed(2)} s after the first create${unfinished ? ` (TIMED OUT with ${unfinished} unfinished)` : ''}; partitions by state ${states.map((r) => `${r.state} ${r.n}`).join(', ')}`);
    console.log(`pgbench single-row insert, 8 clients: ${pgbenchTps.toFixed(0)} tps`);
    console.log(`control-plane RSS: ${rssAtPlaced} MiB when placed, peak ${rssPeak} MiB${split ? ` (api ${rssPeaks[0]} + operations ${rssPeaks[1]})` : ''} (goal <= 400); control-plane CPU per placement: ${(((cpu1.procs.controlPlane - cpu0.procs.controlPlane) * 10) / Math.max(1, placed)).toFixed(2)} ms while placing, ${(((cpu2.procs.controlPlane - cpu0.procs.controlPlane) * 10) / Math.max(1, placed)).toFixed(2)} ms placing + running the operations`);
    console.log(`CPU while placing: ${busy(cpu0, cpu1)}; ${share(cpu0, cpu1, 'controlPlane')} (kernel ${(((cpu1.controlPlaneSys - cpu0.controlPlaneSys) / (cpu1.total - cpu0.total)) * 100).toFixed(0)}%), ${share(cpu0, cpu1, 'worker')}, ${share(cpu0, cpu1, 'bench')}, ${share(cpu0, cpu1, 'postgres')}, ${share(cpu0, cpu1, 'redis')} (of one core); load average before ${loadBefore}, after ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
    console.log(`overcommitted nodes: ${overcommitted}`);
    console.log(JSON.stringify({ placementsPerSecond: Math.round(placementsPerSecond), pgbenchTps: Math.round(pgbenchTps), p50Ms: Number(pct(latencies, 50).toFixed(1)), p99Ms: Number(pct(latencies, 99).toFixed(1)), overcommittedNodes: overcommitted, rssMiB: rssPeak, operationsUnfinished: unfinished, operationsFailed: opCounts.failed ?? 0, allOperationsDoneSeconds: Number(opsDoneSeconds.toFixed(2)) }));
  } finally {
    await cleanUp();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
