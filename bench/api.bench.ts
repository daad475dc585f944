/**
 * `npm run bench:api`: GET /v1/partitions/{id} through the full control plane (auth, Nest,
 * Fastify, TypeORM, logging) against a bare Fastify + pg handler doing the same query on the same
 * database, with 100,000 partitions stored. Rounds are interleaved; the best round of each counts.
 * Prints both req/s, their ratio and the control plane's RSS; the last line is JSON.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import autocannon from 'autocannon';
import { Client } from 'pg';
import { cleanUpOnInterrupt, freePort, projectHeaders, rssMiB, sleep, startControlPlane, stopAll, withBenchDatabase } from './bench-lib';

const PARTITIONS = Number(process.env.BENCH_PARTITIONS ?? 100_000);
const DURATION = Number(process.env.BENCH_SECONDS ?? 8);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 32);

async function load(url: string, token?: string): Promise<number> {
  const r = await autocannon({ url, connections: CONNECTIONS, duration: DURATION, headers: token ? { authorization: `Bearer ${token}` } : {} });
  if (r.non2xx > 0 || r.errors > 0) throw new Error(`${url}: ${r.non2xx} non-2xx answers, ${r.errors} errors`);
  return r.requests.average;
}

async function waitOk(url: string, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await fetch(url).then((r) => r.ok, () => false)) return;
    await sleep(200);
  }
  throw new Error(`timed out waiting for ${url}`);
}

async function main(): Promise<void> {
  await withBenchDatabase('hp_bench_api', run);
}

async function run(database: { url: string; name: string }): Promise<void> {
  const dbUrl = database.url;
  const dataDir = mkdtempSync(join(tmpdir(), 'hp-bench-'));
  const children: ChildProcess[] = [];
  /** Stops what this run started and removes its files: when it ends, and when it is interrupted. */
  const cleanUp = cleanUpOnInterrupt(async () => {
    await stopAll(children);
    rmSync(dataDir, { recursive: true, force: true });
  });
  try {
    const barePort = await freePort();
    const cp = await startControlPlane(database, dataDir);
    children.push(cp.proc);
    const base = cp.base;
    const { projectId, headers } = await projectHeaders(cp, 'viewer');
    const project = { id: projectId };
    const token = headers.authorization.slice('Bearer '.length);

    const db = new Client({ connectionString: dbUrl });
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

    const bare = spawn(process.execPath, [join(__dirname, 'bare-server.js'), String(barePort), dbUrl, project.id], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(bare);
    await waitOk(`http://127.0.0.1:${barePort}/v1/partitions/${id}`, 15_000);
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
    const rss = rssMiB(cp.proc.pid!);
    const ratio = stackRps / bareBest;
    console.log(`GET /v1/partitions/{id}, ${CONNECTIONS} connections, ${DURATION} s x ${ROUNDS} rounds, ${PARTITIONS} partitions stored`);
    console.log(`full stack: ${stackRps.toFixed(0)} req/s`);
    console.log(`bare Fastify + pg: ${bareBest.toFixed(0)} req/s`);
    console.log(`ratio: ${ratio.toFixed(3)} (goal >= 0.8)`);
    console.log(`control-plane RSS with ${PARTITIONS} partitions stored: ${rss} MiB (goal <= 250)`);
    console.log(JSON.stringify({ stackRps: Math.round(stackRps), bareRps: Math.round(bareBest), ratio: Number(ratio.toFixed(3)), rssMiB100k: rss }));
  } finally {
    await cleanUp();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
