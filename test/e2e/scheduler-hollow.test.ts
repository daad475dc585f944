/**
 * 200 partitions on 20 hollow nodes (one simulated worker process speaking the real agent
 * protocol), in 10 hard anti-affinity groups of 20: every group lands one per node. Then two
 * control-plane processes share the database and Redis: a partition created through the replica
 * that does not hold the nodes' streams still starts (commands are routed through Redis).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Api, ChildControlPlane, clusterAdminToken, freePort, spawnControlPlane, testEnv, waitUntil } from '../helpers/control-plane';
import { spawnWorker, WorkerProcess } from '../helpers/worker';
import { retireAllNodes } from '../helpers/db';

jest.setTimeout(240_000);

const dir = mkdtempSync(join(tmpdir(), 'hp-hollow-'));
let cp1: ChildControlPlane | undefined;
let cp2: ChildControlPlane | undefined;
let worker: WorkerProcess | undefined;
let admin: Api;

beforeAll(async () => {
  await retireAllNodes();
  const env = (n: string) => freePort().then(async (h) => testEnv({ HYPERPLANE_HTTP_PORT: String(h), HYPERPLANE_GRPC_PORT: String(await freePort()), HYPERPLANE_DATA_DIR: join(dir, n) }));
  cp1 = await spawnControlPlane(await env('cp1'));
  cp2 = await spawnControlPlane(await env('cp2'));
  worker = spawnWorker({ name: 'hollow', address: '127.0.0.41', controlPlane: cp1.grpcAddress, dataDir: join(dir, 'w'), driver: 'simulated', extra: ['--count', '20', '--sim-start-ms', '50'] });
  admin = new Api(cp1.url, await clusterAdminToken());
  await waitUntil(async () => {
    const r = await admin.get('/v1/nodes?state=ready&pageSize=1000');
    return (r.body.items ?? []).filter((n: any) => n.name.startsWith('hollow-')).length === 20;
  }, 60_000, '20 hollow nodes');
});

afterAll(async () => {
  await worker?.stop();
  cp1?.proc.kill('SIGTERM');
  cp2?.proc.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 1000));
  rmSync(dir, { recursive: true, force: true });
});

it('spreads 10 anti-affinity groups of 20 over 20 hollow nodes, one per node each', async () => {
  const { api } = await admin.newProject('hollow-spread');
  const ops: string[] = [];
  for (let g = 0; g < 10; g++) {
    const r = await api.post('/v1/partitions', { name: `g${g}`, count: 20, vcpus: 1, memoryMiB: 64, image: 'sample', placement: { group: `group-${g}`, nodeSelector: {} } });
    expect(r.status).toBe(202);
    expect(r.body.partitions).toHaveLength(20);
    ops.push(...r.body.operations.map((o: any) => o.id));
  }
  const extra = await api.post('/v1/partitions', { name: 'g0-21', vcpus: 1, memoryMiB: 64, image: 'sample', placement: { group: 'group-0' } });
  expect(extra.status).toBe(422);
  expect(extra.body.detail).toContain("already runs a partition of group 'group-0'");

  for (const id of ops) expect((await api.waitOperation(id, 120)).status).toBe('succeeded');
  const all: any[] = [];
  let token = '';
  do {
    const r = await api.get(`/v1/partitions?pageSize=100${token ? `&pageToken=${token}` : ''}`);
    all.push(...r.body.items);
    token = r.body.nextPageToken;
  } while (token);
  expect(all).toHaveLength(200);
  expect(all.every((p) => p.state === 'running')).toBe(true);
  const perNode = new Map<string, number>();
  const perGroupNode = new Set<string>();
  for (const p of all) {
    perNode.set(p.node, (perNode.get(p.node) ?? 0) + 1);
    const key = `${p.name.split('-')[0]}@${p.node}`;
    expect(perGroupNode.has(key)).toBe(false);
    perGroupNode.add(key);
  }
  expect(perNode.size).toBe(20);
  expect([...perNode.values()].every((n) => n === 10)).toBe(true);
});

it('starts a partition created through the other replica (routing through Redis)', async () => {
  const { token } = await admin.newProject('two-replicas');
  const via2 = new Api(cp2!.url, token);
  const r = await via2.post('/v1/partitions', { name: 'cross', vcpus: 1, memoryMiB: 64, image: 'sample' });
  expect(r.status).toBe(202);
  expect((await via2.waitOperation(r.body.operation.id, 60)).status).toBe('succeeded');
  const c = await via2.get(`/v1/partitions/${r.body.partition.id}/console`);
  expect(c.status).toBe(200);
  const stop = await via2.post(`/v1/partitions/${r.body.partition.id}/stop`, { force: true });
  expect((await via2.waitOperation(stop.body.operation.id, 60)).status).toBe('succeeded');
});
