/**
 * Several control planes schedule at once against one PostgreSQL and one Redis: no node is ever
 * overcommitted, and every node's allocation equals what its partitions hold.
 */
import { Api, clusterAdminToken, startInProcess, InProcess } from '../helpers/control-plane';
import { seedNode, sql } from '../helpers/db';

jest.setTimeout(120_000);

const REPLICAS = 3;
const NODES = 10;
let cps: InProcess[] = [];

beforeAll(async () => {
  for (let i = 0; i < REPLICAS; i++) cps.push(await startInProcess());
  for (let i = 0; i < NODES; i++) {
    const id = await seedNode(`conc-node-${i}`, { vcpus: 4, memoryMiB: 4096 });
    await sql(`UPDATE nodes SET cpu_allocation_ratio = 1, labels = '{"pool":"conc"}' WHERE id = $1`, [id]);
  }
});

afterAll(async () => {
  await Promise.all(cps.map((c) => c.close()));
});

it('never overcommits a node when replicas place concurrently', async () => {
  const token = await clusterAdminToken();
  const admin = new Api(cps[0]!.url, token);
  const { token: pt } = await admin.newProject('concurrency');
  const clients = cps.map((c) => new Api(c.url, pt));
  // 10 nodes × 4 vcpus = 40 fit; ask for 120 at once, spread over the replicas.
  const results = await Promise.all(
    Array.from({ length: 120 }, (_, i) =>
      clients[i % REPLICAS]!.post('/v1/partitions', { name: `c-${i}`, vcpus: 1, memoryMiB: 256, image: 'sample', placement: { nodeSelector: { pool: 'conc' } } }),
    ),
  );
  const statuses = results.map((r) => r.status);
  expect(statuses.filter((s) => s === 202)).toHaveLength(40);
  expect(results.filter((r) => r.status !== 202 && r.status !== 422).map((r) => r.body)).toEqual([]);
  const refused = results.find((r) => r.status === 422)!;
  expect(refused.body.detail).toMatch(/^no node fits: /);

  const nodes = await sql<{ name: string; allocated_vcpus: number; vcpus: number; held: string }>(
    `SELECT n.name, n.allocated_vcpus, n.vcpus, (SELECT COALESCE(sum(p.vcpus), 0) FROM partitions p WHERE p.node_id = n.id) AS held
     FROM nodes n WHERE n.labels->>'pool' = 'conc'`,
  );
  expect(nodes).toHaveLength(NODES);
  for (const n of nodes) {
    expect({ node: n.name, allocated: n.allocated_vcpus }).toEqual({ node: n.name, allocated: Number(n.held) });
    expect(n.allocated_vcpus).toBeLessThanOrEqual(n.vcpus);
  }
});

it('keeps a hard anti-affinity group one per node under concurrency', async () => {
  const token = await clusterAdminToken();
  const admin = new Api(cps[0]!.url, token);
  const { token: pt } = await admin.newProject('concurrency-aa');
  const clients = cps.map((c) => new Api(c.url, pt));
  for (let i = 0; i < 5; i++) {
    const id = await seedNode(`conc-aa-${i}`);
    await sql(`UPDATE nodes SET labels = '{"pool":"conc-aa"}' WHERE id = $1`, [id]);
  }
  const results = await Promise.all(
    Array.from({ length: 15 }, (_, i) =>
      clients[i % REPLICAS]!.post('/v1/partitions', { name: `aa-${i}`, vcpus: 1, memoryMiB: 16, diskGiB: 1, image: 'sample', placement: { group: 'replicas', nodeSelector: { pool: 'conc-aa' } } }),
    ),
  );
  const ok = results.filter((r) => r.status === 202);
  expect(ok).toHaveLength(5);
  const perNode = new Map<string, number>();
  for (const r of ok) perNode.set(r.body.partition.node, (perNode.get(r.body.partition.node) ?? 0) + 1);
  expect([...perNode.values()].every((n) => n === 1)).toBe(true);
  const refused = results.filter((r) => r.status === 422);
  expect(ok.length + refused.length).toBe(15);
  for (const r of refused) expect(r.body.reasons.map((x: any) => x.reason)).toEqual(expect.arrayContaining(['anti-affinity']));
});
