/**
 * Lists stay fast with 100,000 partitions in a project: every page is one index range scan
 * (checked with EXPLAIN, which does not depend on the machine's speed), and paging reaches the
 * last row without offsets.
 */
import { Api, clusterAdminToken, startInProcess, InProcess } from '../helpers/control-plane';
import { seedNode, sql } from '../helpers/db';

jest.setTimeout(120_000);

let cp: InProcess;
let api: Api;
let projectId: string;
const N = 100_000;

beforeAll(async () => {
  cp = await startInProcess();
  const admin = new Api(cp.url, await clusterAdminToken());
  const p = await admin.newProject('scale-100k');
  api = p.api;
  projectId = p.projectId;
  const node = await seedNode('scale-node');
  await sql(
    `INSERT INTO partitions (id, project_id, name, state, node_id, vcpus, memory_mib, disk_gib, image, labels)
     SELECT (lpad(to_hex(1700000000000 + i), 12, '0') || '7000' || '8' || lpad(to_hex(i), 15, '0'))::uuid, $1, 'p-' || i,
            CASE WHEN i % 10 = 0 THEN 'stopped' ELSE 'running' END, $2, 1, 128, 1, 'sample',
            jsonb_build_object('env', CASE WHEN i % 2 = 0 THEN 'prod' ELSE 'dev' END)
     FROM generate_series(1, $3) AS i`,
    [projectId, node, N],
  );
  await sql('ANALYZE partitions');
});

afterAll(async () => {
  await sql(`DELETE FROM partitions WHERE project_id = $1`, [projectId]);
  await cp?.close();
});

it('serves first, middle and last pages with one index scan each', async () => {
  // The shapes the repository sends for a first page and for a later one.
  const middleId = (await sql<{ id: string }>(`SELECT id FROM partitions WHERE project_id = $1 ORDER BY id OFFSET 49999 LIMIT 1`, [projectId]))[0]!.id;
  for (const [query, params] of [
    ['SELECT * FROM partitions WHERE project_id = $1 ORDER BY id LIMIT $2', [projectId, 1001]],
    ['SELECT * FROM partitions WHERE project_id = $1 AND id > $2 ORDER BY id LIMIT $3', [projectId, middleId, 1001]],
  ] as const) {
    const plan = await sql<{ 'QUERY PLAN': string }>(`EXPLAIN (ANALYZE, BUFFERS) ${query}`, [...params]);
    const text = plan.map((r) => r['QUERY PLAN']).join('\n');
    expect(text).toMatch(/Index Scan using partitions_(project_id|pkey)/);
    expect(text).not.toMatch(/Seq Scan|Sort|Rows Removed by Filter: [1-9]/);
    const hits = Number(/Buffers: shared hit=(\d+)/.exec(text)?.[1] ?? 0);
    expect(hits).toBeLessThan(200);
  }
  const t0 = Date.now();
  const first = await api.get('/v1/partitions?pageSize=1000');
  expect(first.status).toBe(200);
  expect(first.body.items).toHaveLength(1000);
  expect(first.body.items[0].name).toBe('p-1');
  // Jump to the middle with a page token for row 50,000 and read on to the end.
  let token = Buffer.from(`k1:${middleId}`).toString('base64url');
  let seen = 0;
  let last = '';
  while (token) {
    const r = await api.get(`/v1/partitions?pageSize=1000&pageToken=${token}`);
    expect(r.status).toBe(200);
    seen += r.body.items.length;
    last = r.body.items[r.body.items.length - 1]?.name ?? last;
    token = r.body.nextPageToken;
  }
  expect(seen).toBe(50_000);
  expect(last).toBe(`p-${N}`);
  console.log(`51 pages of 1000 over ${N} partitions in ${Date.now() - t0} ms`);
});

it('filters by state and label through their indexes', async () => {
  const byState = await api.get('/v1/partitions?state=stopped&pageSize=5');
  expect(byState.body.items.map((p: any) => p.state)).toEqual(Array(5).fill('stopped'));
  const byLabel = await api.get('/v1/partitions?label=env:prod&pageSize=5');
  expect(byLabel.body.items.every((p: any) => p.labels.env === 'prod')).toBe(true);
  const plan = await sql<{ 'QUERY PLAN': string }>(
    `EXPLAIN SELECT * FROM partitions WHERE project_id = $1 AND state = 'stopped' ORDER BY id LIMIT 51`,
    [projectId],
  );
  expect(plan.map((r) => r['QUERY PLAN']).join('\n')).toMatch(/Index Scan using partitions_project_(state|id)/);
});
