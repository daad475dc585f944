/**
 * The control plane is SIGKILLed with operations in flight; after a restart every operation
 * reaches a final status and the partitions end where the operations said. Real control-plane
 * processes, real PostgreSQL and Redis, a worker on the simulated driver (slow starts keep the
 * operations in flight long enough to kill the control plane under them).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Api, ChildControlPlane, clusterAdminToken, freePort, spawnControlPlane, testEnv, waitUntil } from '../helpers/control-plane';
import { spawnWorker, WorkerProcess } from '../helpers/worker';
import { retireAllNodes, sql } from '../helpers/db';

jest.setTimeout(180_000);

let cp: ChildControlPlane | undefined;
let worker: WorkerProcess | undefined;
const dir = mkdtempSync(join(tmpdir(), 'hp-crash-'));

afterAll(async () => {
  await worker?.stop();
  cp?.proc.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

it('takes up every in-flight operation after a SIGKILL and carries it to a final status', async () => {
  await retireAllNodes();
  const env = testEnv({ HYPERPLANE_HTTP_PORT: String(await freePort()), HYPERPLANE_GRPC_PORT: String(await freePort()), HYPERPLANE_DATA_DIR: join(dir, 'cp'), HYPERPLANE_LOG_LEVEL: 'info' });
  cp = await spawnControlPlane(env);
  worker = spawnWorker({ name: 'crash-w1', address: '127.0.0.21', controlPlane: cp.grpcAddress, dataDir: join(dir, 'w1'), driver: 'simulated', extra: ['--sim-start-ms', '4000'] });
  const admin = new Api(cp.url, await clusterAdminToken());
  await waitUntil(async () => (await admin.get('/v1/nodes?state=ready')).body.items?.some((n: any) => n.name === 'crash-w1'), 30_000, 'worker registered');
  const { api } = await admin.newProject('crash');

  // A running partition to stop, and a batch of creates, all in flight at the kill.
  const first = await api.post('/v1/partitions', { name: 'to-stop', vcpus: 1, memoryMiB: 64, image: 'sample' });
  expect((await api.waitOperation(first.body.operation.id, 60)).status).toBe('succeeded');
  const ops: string[] = [];
  for (let i = 0; i < 8; i++) {
    const r = await api.post('/v1/partitions', { name: `inflight-${i}`, vcpus: 1, memoryMiB: 64, image: 'sample' });
    expect(r.status).toBe(202);
    ops.push(r.body.operation.id);
  }
  const stop = await api.post(`/v1/partitions/${first.body.partition.id}/stop`, { force: true });
  ops.push(stop.body.operation.id);
  await waitUntil(async () => (await api.get(`/v1/operations/${ops[0]}`)).body.status === 'running', 10_000, 'operations running');

  cp.proc.kill('SIGKILL');
  await new Promise((r) => cp!.proc.once('exit', r));
  const live = (await sql<{ status: string }>(`SELECT status FROM operations WHERE id = ANY($1::uuid[])`, [ops])).map((r) => r.status);
  expect(live.some((s) => s === 'running' || s === 'pending')).toBe(true);

  cp = await spawnControlPlane(env);
  const api2 = new Api(cp.url, api.token);
  for (const id of ops) {
    const op = await api2.waitOperation(id, 120);
    expect({ id, status: op.status }).toEqual({ id, status: 'succeeded' });
  }
  const list = await api2.get('/v1/partitions?pageSize=100');
  const states = Object.fromEntries(list.body.items.map((p: any) => [p.name, p.state]));
  for (let i = 0; i < 8; i++) expect(states[`inflight-${i}`]).toBe('running');
  expect(states['to-stop']).toBe('stopped');

  // Cancel works on a running operation too: a slow start is cancelled and the partition ends stopped.
  const slow = await api2.post('/v1/partitions', { name: 'to-cancel', vcpus: 1, memoryMiB: 64, image: 'sample' });
  await waitUntil(async () => (await api2.get(`/v1/operations/${slow.body.operation.id}`)).body.status === 'running', 10_000, 'create running');
  const cancel = await api2.post(`/v1/operations/${slow.body.operation.id}/cancel`);
  expect(cancel.status).toBe(200);
  const cancelled = await api2.waitOperation(slow.body.operation.id, 60);
  expect(cancelled.status).toBe('cancelled');
  await waitUntil(async () => (await api2.get(`/v1/partitions/${slow.body.partition.id}`)).body.state === 'stopped', 30_000, 'cancelled partition stopped');
});
