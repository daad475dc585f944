/**
 * HYPERPLANE_ROLE splits the control plane into processes: an `api` process serves the public API
 * and runs no operation, an `operations` process runs operations and holds the agent streams (and
 * answers health probes only). A partition created through the api process starts on a hollow
 * node connected to the operations process, which alone runs its operation; a worker pointed at
 * the api process is not taken.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Api, ChildControlPlane, clusterAdminToken, freePort, spawnControlPlane, testEnv, waitUntil } from '../helpers/control-plane';
import { spawnWorker, WorkerProcess } from '../helpers/worker';
import { retireAllNodes, sql } from '../helpers/db';

jest.setTimeout(180_000);

const dir = mkdtempSync(join(tmpdir(), 'hp-roles-'));
let api: ChildControlPlane | undefined;
let ops: ChildControlPlane | undefined;
let worker: WorkerProcess | undefined;
let admin: Api;

const stop = async (cp: ChildControlPlane | undefined) => {
  if (!cp || cp.proc.exitCode !== null || cp.proc.signalCode !== null) return;
  const exited = new Promise((r) => cp.proc.once('exit', r));
  cp.proc.kill('SIGTERM');
  await exited;
};

beforeAll(async () => {
  await retireAllNodes();
  api = await spawnControlPlane(testEnv({ HYPERPLANE_ROLE: 'api', HYPERPLANE_HTTP_PORT: String(await freePort()), HYPERPLANE_GRPC_PORT: String(await freePort()), HYPERPLANE_DATA_DIR: join(dir, 'api') }));
  const opsEnv = testEnv({ HYPERPLANE_ROLE: 'operations', HYPERPLANE_HTTP_PORT: String(await freePort()), HYPERPLANE_GRPC_PORT: String(await freePort()), HYPERPLANE_DATA_DIR: join(dir, 'ops') });
  ops = await spawnControlPlane(opsEnv);
  worker = spawnWorker({ name: 'roles', address: '127.0.0.42', controlPlane: ops.grpcAddress, dataDir: join(dir, 'w'), driver: 'simulated', extra: ['--count', '2', '--sim-start-ms', '50'] });
  admin = new Api(api.url, await clusterAdminToken());
  await waitUntil(async () => ((await admin.get('/v1/nodes?state=ready&pageSize=1000')).body.items ?? []).filter((n: any) => n.name.startsWith('roles-')).length === 2, 60_000, '2 hollow nodes');
});

afterAll(async () => {
  await worker?.stop();
  await Promise.all([stop(api), stop(ops)]);
  rmSync(dir, { recursive: true, force: true });
});

it('serves the public API only from the api process, and health probes from both', async () => {
  const onOps = new Api(ops!.url, admin.token);
  expect((await onOps.get('/v1/partitions')).status).toBe(404);
  expect((await onOps.get('/readyz')).status).toBe(200);
  expect((await admin.get('/readyz')).status).toBe(200);
});

it('runs the operations of creates made through the api process in the operations process', async () => {
  const { api: p } = await admin.newProject('roles');
  const r = await p.post('/v1/partitions', { name: 'r', count: 4, vcpus: 1, memoryMiB: 64, image: 'sample', placement: { nodeSelector: {} } });
  expect(r.status).toBe(202);
  for (const o of r.body.operations) expect((await p.waitOperation(o.id, 60)).status).toBe('succeeded');
  const nodes = new Set(r.body.partitions.map((x: any) => x.node));
  const names = await sql<{ name: string }>(`SELECT name FROM nodes WHERE id = ANY($1::uuid[])`, [[...nodes]]);
  expect(names.every((n) => n.name.startsWith('roles-'))).toBe(true);
});

it('takes no agent in the api process', async () => {
  const refused = spawnWorker({ name: 'refused', address: '127.0.0.43', controlPlane: api!.grpcAddress, dataDir: join(dir, 'refused'), driver: 'simulated', extra: ['--count', '1'] });
  try {
    await new Promise((r) => setTimeout(r, 3000));
    const [row] = await sql<{ n: number }>(`SELECT count(*)::int AS n FROM nodes WHERE name LIKE 'refused-%'`);
    expect(row!.n).toBe(0);
  } finally {
    await refused.stop();
  }
});

it('runs no operation in the api process: while the operations process is frozen, a create waits for it', async () => {
  const { api: p } = await admin.newProject('roles-frozen');
  process.kill(ops!.proc.pid!, 'SIGSTOP'); // its agent streams stay open, the nodes stay ready
  let id: string;
  try {
    const r = await p.post('/v1/partitions', { name: 'frozen', vcpus: 1, memoryMiB: 64, image: 'sample' });
    expect(r.status).toBe(202);
    id = r.body.operation.id;
    await new Promise((res) => setTimeout(res, 2000));
    expect((await p.get(`/v1/operations/${id}`)).body.status).toBe('pending');
  } finally {
    process.kill(ops!.proc.pid!, 'SIGCONT');
  }
  expect((await p.waitOperation(id, 60)).status).toBe('succeeded');
});
