/**
 * Creates that arrive together are committed together (one transaction for the lot), yet each
 * gets the answer it would have got alone: a taken name is 409 for that create only, a name asked
 * twice at once succeeds once, a create too big for any node is 422, an unknown image is 400, a
 * project quota counts the creates of the same batch, and allocations equal what was placed. Two
 * replicas batching the same names at once: each name is created once, the others are 409.
 */
import { Api, clusterAdminToken, InProcess, startInProcess, waitUntil } from '../helpers/control-plane';
import { seedNode, sql } from '../helpers/db';

jest.setTimeout(120_000);

let cp: InProcess;
let cp2: InProcess;
let admin: Api;
const nodeIds: string[] = [];

beforeAll(async () => {
  cp = await startInProcess();
  cp2 = await startInProcess();
  admin = new Api(cp.url, await clusterAdminToken());
  for (let i = 0; i < 4; i++) {
    const id = await seedNode(`batch-node-${i}`, { vcpus: 8, memoryMiB: 4096 });
    await sql(`UPDATE nodes SET cpu_allocation_ratio = 1, labels = '{"pool":"batch"}' WHERE id = $1`, [id]);
    nodeIds.push(id);
  }
});

afterAll(async () => {
  await Promise.all([cp.close(), cp2.close()]);
});

const create = (api: Api, name: string, extra: Record<string, unknown> = {}) =>
  api.post('/v1/partitions', { name, vcpus: 1, memoryMiB: 128, image: 'sample', placement: { nodeSelector: { pool: 'batch' } }, ...extra });

it('answers each create of a batch on its own', async () => {
  const { api, projectId } = await admin.newProject('batch-creates');
  expect((await create(api, 'taken')).status).toBe(202);

  const asks: Array<[string, Promise<{ status: number; body: any }>]> = [
    ...Array.from({ length: 8 }, (_, i) => [`single-${i}`, create(api, `single-${i}`)] as [string, Promise<any>]),
    ['taken', create(api, 'taken')],
    ['twin-a', create(api, 'twin')],
    ['twin-b', create(api, 'twin')],
    ['huge', create(api, 'huge', { memoryMiB: 8192 })],
    ['nope', create(api, 'nope', { image: 'no-such-image' })],
    ['trio', create(api, 'trio', { count: 3 })],
  ];
  const answers = new Map<string, { status: number; body: any }>();
  for (const [label, p] of asks) answers.set(label, await p);

  for (let i = 0; i < 8; i++) expect(answers.get(`single-${i}`)!.status).toBe(202);
  expect(answers.get('taken')!.status).toBe(409);
  expect(answers.get('taken')!.body.detail).toContain('taken');
  expect([answers.get('twin-a')!.status, answers.get('twin-b')!.status].sort()).toEqual([202, 409]);
  expect(answers.get('huge')!.status).toBe(422);
  expect(answers.get('huge')!.body.reasons.map((r: any) => r.reason)).toContain('memory');
  expect(answers.get('nope')!.status).toBe(400);
  expect(answers.get('trio')!.status).toBe(202);
  expect(answers.get('trio')!.body.partitions.map((p: any) => p.name)).toEqual(['trio-1', 'trio-2', 'trio-3']);
  expect(answers.get('trio')!.body.operations).toHaveLength(3);

  // Exactly what was answered 202 exists, each with its create operation.
  const rows = await sql<{ name: string; created_at: Date; ops: number }>(
    `SELECT p.name, p.created_at, (SELECT count(*)::int FROM operations o WHERE o.target_id = p.id AND o.kind = 'partition.create') AS ops
       FROM partitions p WHERE p.project_id = $1 ORDER BY p.name`,
    [projectId],
  );
  expect(rows.map((r) => r.name)).toEqual(['single-0', 'single-1', 'single-2', 'single-3', 'single-4', 'single-5', 'single-6', 'single-7', 'taken', 'trio-1', 'trio-2', 'trio-3', 'twin']);
  expect(rows.every((r) => r.ops === 1)).toBe(true);
  // The creates sent together did share transactions (a transaction's now() is its start).
  const perStart = new Map<number, number>();
  for (const r of rows) perStart.set(r.created_at.getTime(), (perStart.get(r.created_at.getTime()) ?? 0) + 1);
  expect(Math.max(...perStart.values())).toBeGreaterThan(1);

  // Allocations equal what the partitions hold.
  const alloc = await sql<{ id: string; allocated_vcpus: number; allocated_memory_mib: string; held_vcpus: number; held_mib: string }>(
    `SELECT n.id, n.allocated_vcpus, n.allocated_memory_mib,
            (SELECT COALESCE(sum(vcpus), 0)::int FROM partitions p WHERE p.node_id = n.id) AS held_vcpus,
            (SELECT COALESCE(sum(memory_mib), 0) FROM partitions p WHERE p.node_id = n.id) AS held_mib
       FROM nodes n WHERE n.id = ANY($1::uuid[])`,
    [nodeIds],
  );
  for (const n of alloc) {
    expect(n.allocated_vcpus).toBe(n.held_vcpus);
    expect(Number(n.allocated_memory_mib)).toBe(Number(n.held_mib));
  }
});

it('counts the creates of one batch against the project quota', async () => {
  const { api, projectId } = await admin.newProject('batch-quota');
  expect((await admin.patch(`/v1/projects/${projectId}`, { quota: { maxPartitions: 3 } })).status).toBe(200);
  const answers = await Promise.all(Array.from({ length: 6 }, (_, i) => create(api, `q-${i}`)));
  const statuses = answers.map((a) => a.status);
  expect(statuses.filter((s) => s === 202)).toHaveLength(3);
  expect(statuses.filter((s) => s !== 202).every((s) => s === 422)).toBe(true);
  const [row] = await sql<{ n: number }>(`SELECT count(*)::int AS n FROM partitions WHERE project_id = $1`, [projectId]);
  expect(row!.n).toBe(3);
});

it('creates each name once when two replicas batch the same names at once', async () => {
  const { api, projectId, token } = await admin.newProject('batch-race');
  const other = new Api(cp2.url, token);
  const names = ['x0', 'x1', 'x2', 'x3', 'x4'];
  const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => create(i % 2 ? other : api, names[i % names.length]!)));
  const statuses = answers.map((a) => a.status);
  expect(statuses.filter((s) => s === 202)).toHaveLength(names.length);
  expect(statuses.filter((s) => s !== 202)).toEqual(Array(20 - names.length).fill(409));
  const rows = await sql<{ name: string }>(`SELECT name FROM partitions WHERE project_id = $1 ORDER BY name`, [projectId]);
  expect(rows.map((r) => r.name)).toEqual(names);
});

it('runs as many operations of a batch as the replica has room for under its lease, queues the rest, and all of them end', async () => {
  const small = await startInProcess({ HYPERPLANE_OPERATION_CONCURRENCY: '2' });
  try {
    const api = (await new Api(small.url, await clusterAdminToken()).newProject('batch-leases')).api;
    const r = await create(api, 'leased', { count: 3 });
    expect(r.status).toBe(202);
    // Answered as recorded: the first two running under this replica's lease, the third pending for its job.
    expect(r.body.operations.map((o: any) => o.status)).toEqual(['running', 'running', 'pending']);
    const ids = r.body.operations.map((o: any) => o.id);
    const owners = await sql<{ id: string; lease_owner: string | null; attempts: number }>(`SELECT id, lease_owner, attempts FROM operations WHERE id = ANY($1::uuid[])`, [ids]);
    const byId = new Map(owners.map((o) => [o.id, o]));
    expect(byId.get(ids[0])!.lease_owner).toEqual(expect.any(String));
    expect(byId.get(ids[1])!.lease_owner).toBe(byId.get(ids[0])!.lease_owner);
    expect(byId.get(ids[2])!.lease_owner).toBeNull();
    // The seeded nodes have no agent: every create ends failed (node unreachable), the leased ones
    // run here and the queued one by a job, each once.
    await waitUntil(async () => (await sql<{ n: number }>(`SELECT count(*)::int AS n FROM operations WHERE id = ANY($1::uuid[]) AND status IN ('pending', 'running')`, [ids]))[0]!.n === 0, 30_000, 'the three operations to end');
    const ended = await sql<{ status: string; attempts: number }>(`SELECT status, attempts FROM operations WHERE id = ANY($1::uuid[]) ORDER BY id`, [ids]);
    expect(ended.map((o) => o.status)).toEqual(['failed', 'failed', 'failed']);
    expect(ended.every((o) => o.attempts === 1)).toBe(true);
  } finally {
    await small.close();
  }
});
