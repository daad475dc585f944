/**
 * `npm run bench:search`: image search at scale. Seeds 1,000,000 images with realistic metadata
 * into one project (the hardest case for tenancy scoping: the project filter selects everything),
 * then runs typical searches through the REST API (auth, Nest, Fastify, SQL, JSON) and the very
 * same SQL (ImageRepository.searchSql) straight against PostgreSQL, in the same run, one request
 * at a time. Also runs libs/disk-formats' metadata read on a 10 GiB image. Last line JSON:
 * {"images", "apiP50Ms", "apiP99Ms", "sqlP99Ms", "metadataReadMs10GiB"}.
 */
import { ChildProcess, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { ImageRepository, ImageSearch } from '@hyperplane/control-plane/dist/images/image.repository';
import { ROOT, cleanUpOnInterrupt, projectHeaders, startControlPlane, stopAll, withBenchDatabase } from './bench-lib';

const IMAGES = Number(process.env.BENCH_IMAGES ?? 1_000_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 100);
const PAGE = 50;

/** A typical search: its query string for the API and its criteria for the SQL. */
interface Case {
  name: string;
  query: string;
  search: ImageSearch;
}

const CASES: Case[] = [
  { name: 'tag (common)', query: 'tag=web', search: { tags: ['web'] } },
  { name: 'two tags', query: 'tag=db&tag=tag-17', search: { tags: ['db', 'tag-17'] } },
  { name: 'label', query: 'label=team:team-42', search: { labels: { team: 'team-42' } } },
  { name: 'label and tag', query: 'label=env:prod&tag=tag-99', search: { labels: { env: 'prod' }, tags: ['tag-99'] } },
  { name: 'free text (rare)', query: 'text=appliance-7777', search: { text: 'appliance-7777' } },
  { name: 'free text (common)', query: 'text=postgresql', search: { text: 'postgresql' } },
  { name: 'os equals', query: 'filter=content.os%3Ddebian-12', search: { filters: [{ path: ['content', 'os'], op: '=', value: 'debian-12' }] } },
  { name: 'memory >= 2 GiB', query: 'filter=hardware.minMemoryMiB%3E%3D2048', search: { filters: [{ path: ['hardware', 'minMemoryMiB'], op: '>=', value: '2048' }] } },
  { name: 'memory >= 64 GiB (rare)', query: 'filter=hardware.minMemoryMiB%3E%3D65536', search: { filters: [{ path: ['hardware', 'minMemoryMiB'], op: '>=', value: '65536' }] } },
  { name: 'tag + range + label', query: 'tag=web&label=env:prod&filter=hardware.minVcpus%3E%3D4', search: { tags: ['web'], labels: { env: 'prod' }, filters: [{ path: ['hardware', 'minVcpus'], op: '>=', value: '4' }] } },
  { name: 'include expired', query: 'tag=ubuntu&includeExpired=true', search: { tags: ['ubuntu'], includeExpired: true } },
  {
    name: 'compatible with node',
    query: 'compatibleWith=bench-node&tag=db',
    // what ImagesService derives from the node row seeded below (flags in both spellings)
    search: { tags: ['db'], compatibleWith: { vcpus: 8, memoryMiB: 16384, cpuFlags: ['avx2', 'sse4_2', 'sse4.2', 'sse4-2'], machineTypes: ['q35', 'pc'], kvm: false } },
  },
];

/** Seeds `n` images with metadata shaped like what users write (about 1 KiB each). */
async function seed(db: Client, projectId: string, n: number): Promise<void> {
  const batch = 100_000;
  for (let from = 1; from <= n; from += batch) {
    const to = Math.min(n, from + batch - 1);
    await db.query(
      `INSERT INTO images (id, project_id, name, format, size_bytes, virtual_size_bytes, storage_path, metadata, expires_at)
       SELECT id, $1, 'img-' || i, 'qcow2', 200000 + i, 10737418240, '/bench/' || i || '.qcow2', m, (m ->> 'expiresAt')::timestamptz
       FROM (
         SELECT i, (lpad(to_hex(1700000000000 + i), 12, '0') || '7000' || '8' || lpad(to_hex(i), 15, '0'))::uuid AS id,
           jsonb_build_object(
             'schemaVersion', 1,
             'description', (ARRAY['PostgreSQL database server', 'Nginx web frontend', 'Ubuntu desktop', 'Build agent', 'Redis cache', 'Windows Server', 'Kafka broker', 'Router appliance'])[1 + i % 8]
                            || ' build ' || i || ', appliance-' || i,
             'content', jsonb_build_object('os', (ARRAY['debian-12', 'ubuntu-24.04', 'ubuntu-22.04', 'alpine-3.20', 'rhel-9', 'windows-2022', 'fedora-40'])[1 + i % 7],
                                           'summary', 'Golden image ' || i || ' maintained by team-' || (i % 200)),
             'hardware', jsonb_build_object('arch', CASE WHEN i % 10 = 0 THEN 'aarch64' ELSE 'x86_64' END, 'minVcpus', 1 << (i % 5),
                                            'minMemoryMiB', 128 << (i % 10), 'cpuFeatures', CASE WHEN i % 3 = 0 THEN '["avx2"]'::jsonb ELSE '[]'::jsonb END,
                                            'machineTypes', CASE WHEN i % 10 = 0 THEN '["virt"]'::jsonb ELSE '["q35","pc"]'::jsonb END,
                                            'firmware', CASE WHEN i % 4 = 0 THEN 'uefi' ELSE 'bios' END),
             'hostCompatibility', jsonb_build_object('os', '["debian-12"]'::jsonb, 'hypervisor', '["qemu>=7.2"]'::jsonb),
             'expiresAt', CASE WHEN i % 10 = 0 THEN '2024-01-01T00:00:00Z' WHEN i % 10 < 4 THEN '2030-01-01T00:00:00Z' END,
             'usagePolicy', jsonb_build_object('allowedProjects', '[]'::jsonb, 'maxConcurrentPartitions', i % 20, 'licence', 'proprietary'),
             'patchState', jsonb_build_object('level', '2026-' || lpad((1 + i % 12)::text, 2, '0'), 'applied', jsonb_build_array('CVE-2026-' || (i % 9999))),
             'tags', jsonb_build_array((ARRAY['web', 'db', 'cache', 'ci', 'desktop', 'ubuntu', 'debian', 'net'])[1 + i % 8], 'tag-' || (i % 1000), 'team-' || (i % 200)),
             'labels', jsonb_build_object('env', (ARRAY['prod', 'staging', 'dev'])[1 + i % 3], 'team', 'team-' || (i % 200), 'tier', 'tier-' || (i % 4)),
             'history', jsonb_build_array(jsonb_build_object('at', '2026-01-01T00:00:00Z', 'operation', 'created', 'by', 'ci'))
           ) AS m
         FROM generate_series($2::int, $3::int) AS i
       ) s`,
      [projectId, from, to],
    );
    process.stdout.write(`  seeded ${to} images\n`);
  }
  await db.query('VACUUM ANALYZE images');
}

/** Percentile of sorted samples (nearest rank). */
function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}
const round = (x: number) => Math.round(x * 100) / 100;

async function main(): Promise<void> {
  await withBenchDatabase('hp_bench_search', run);
}

async function run(database: { url: string; name: string }): Promise<void> {
  const dataDir = mkdtempSync(join(tmpdir(), 'hp-bench-search-'));
  const children: ChildProcess[] = [];
  /** Stops what this run started and removes its files: when it ends, and when it is interrupted. */
  const cleanUp = cleanUpOnInterrupt(async () => {
    await stopAll(children);
    rmSync(dataDir, { recursive: true, force: true });
  });
  try {
    const cp = await startControlPlane(database, dataDir);
    children.push(cp.proc);
    const { projectId, headers } = await projectHeaders(cp, 'viewer');
    const db = new Client({ connectionString: database.url });
    await db.connect();
    const t0 = Date.now();
    await seed(db, projectId, IMAGES);
    await db.query(
      `INSERT INTO nodes (id, name, address, vcpus, memory_mib, disk_bytes, cpu_flags, machine_types, last_heartbeat_at)
       VALUES ('00000000-0000-7000-8000-000000000001', 'bench-node', '127.0.0.9', 8, 16384, 1e12, '{avx2,sse4_2}', '{q35,pc}', now() + interval '1 day')`,
    );
    console.log(`seeded and analysed ${IMAGES} images in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

    const api: number[] = [];
    const sql: number[] = [];
    const perCase: Array<{ name: string; rows: number; apiP50: number; apiP99: number; sqlP50: number; sqlP99: number }> = [];
    for (const c of CASES) {
      // warm both paths
      for (let i = 0; i < 5; i++) {
        await fetch(`${cp.base}/v1/images?pageSize=${PAGE}&${c.query}`, { headers }).then((r) => r.arrayBuffer());
        const q = ImageRepository.searchSql(projectId, { pageSize: PAGE, afterId: null }, c.search);
        await db.query(q.text, q.params);
      }
      const a: number[] = [];
      const s: number[] = [];
      let rows = 0;
      for (let i = 0; i < ROUNDS; i++) {
        // interleaved: one API request, then the same SQL directly
        let t = performance.now();
        const res = await fetch(`${cp.base}/v1/images?pageSize=${PAGE}&${c.query}`, { headers });
        const body = (await res.json()) as { items?: unknown[] };
        a.push(performance.now() - t);
        if (res.status !== 200) throw new Error(`${c.name}: ${res.status} ${JSON.stringify(body)}`);
        rows = body.items!.length;
        const q = ImageRepository.searchSql(projectId, { pageSize: PAGE, afterId: null }, c.search);
        t = performance.now();
        await db.query(q.text, q.params);
        s.push(performance.now() - t);
      }
      a.sort((x, y) => x - y);
      s.sort((x, y) => x - y);
      perCase.push({ name: c.name, rows, apiP50: round(pct(a, 50)), apiP99: round(pct(a, 99)), sqlP50: round(pct(s, 50)), sqlP99: round(pct(s, 99)) });
      api.push(...a);
      sql.push(...s);
    }
    console.table(perCase);
    api.sort((x, y) => x - y);
    sql.sort((x, y) => x - y);
    await db.end();

    // Metadata read on 10 GiB images: libs/disk-formats' own benchmark, in this run.
    const out = execFileSync(process.execPath, [join(ROOT, 'libs/disk-formats/dist/bench-read.js')], { encoding: 'utf8' });
    const last = JSON.parse(out.trim().split('\n').pop()!) as { metadataReadMs10GiB: number };

    const result = { images: IMAGES, apiP50Ms: round(pct(api, 50)), apiP99Ms: round(pct(api, 99)), sqlP99Ms: round(pct(sql, 99)), metadataReadMs10GiB: last.metadataReadMs10GiB };
    console.log(`${CASES.length} searches x ${ROUNDS} rounds, page size ${PAGE}: API p50 ${result.apiP50Ms} ms, p99 ${result.apiP99Ms} ms; SQL p50 ${round(pct(sql, 50))} ms, p99 ${result.sqlP99Ms} ms`);
    console.log(`goals: API p99 <= 50 ms: ${result.apiP99Ms <= 50 ? 'met' : 'MISSED'}; API p99 <= 2 x SQL p99: ${result.apiP99Ms <= 2 * result.sqlP99Ms ? 'met' : 'MISSED'}; metadata read <= 5 ms: ${result.metadataReadMs10GiB <= 5 ? 'met' : 'MISSED'}`);
    console.log(JSON.stringify(result));
  } finally {
    await cleanUp();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
