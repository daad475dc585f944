/**
 * A partition created through the public API boots a real Linux guest under QEMU (TCG) on a real
 * worker agent, through REST and again through gRPC: ready marker on the console, a command typed
 * into the interactive console, stop, start, reboot, delete, and nothing left behind.
 */
import { execSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import WebSocket from 'ws';
import { Api, clusterAdminToken, startInProcess, InProcess, waitUntil } from '../helpers/control-plane';
import { GrpcApi } from '../helpers/grpc-client';
import { describeWithGuest, GUEST } from '../helpers/guest';
import { retireAllNodes } from '../helpers/db';
import { spawnWorker, WorkerProcess } from '../helpers/worker';

const d = describeWithGuest('QEMU end-to-end tests');

jest.setTimeout(240_000);

let cp: InProcess;
let worker: WorkerProcess;
let admin: Api;
let api: Api;
let token: string;
const dir = mkdtempSync(join(tmpdir(), 'hp-qemu-e2e-'));
const workerDir = join(dir, 'w1');

/** QEMU processes whose command line mentions this test's data dir. */
function ourQemus(): string[] {
  try {
    return execSync(`pgrep -af qemu-system || true`, { encoding: 'utf8' }).split('\n').filter((l) => l.includes(dir));
  } catch {
    return [];
  }
}

async function consoleText(id: string): Promise<string> {
  const r = await api.get(`/v1/partitions/${id}/console?tailBytes=65536`);
  return r.status === 200 ? r.body.data : '';
}

d('QEMU partitions end to end', () => {
  beforeAll(async () => {
    await retireAllNodes();
    cp = await startInProcess({ HYPERPLANE_GUEST_DIR: GUEST });
    worker = spawnWorker({ name: 'qemu-w1', address: '127.0.0.31', controlPlane: cp.grpcAddress, dataDir: workerDir, driver: 'qemu', env: { HYPERPLANE_GUEST_DIR: GUEST, HYPERPLANE_DATA_DIR: dir } });
    admin = new Api(cp.url, await clusterAdminToken());
    await waitUntil(async () => (await admin.get('/v1/nodes?state=ready')).body.items?.some((n: any) => n.name === 'qemu-w1'), 60_000, 'worker registered');
    const p = await admin.newProject('qemu-e2e', 'operator');
    api = p.api;
    token = p.token;
  });

  afterAll(async () => {
    await worker?.stop();
    for (const line of ourQemus()) {
      const pid = Number(line.trim().split(/\s+/)[0]);
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    await cp?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('through REST: create, ready marker, interactive console, stop, start, reboot, delete; nothing left behind', async () => {
    const c = await api.post('/v1/partitions', { name: 'rest-vm', vcpus: 1, memoryMiB: 128, image: 'sample' });
    expect(c.status).toBe(202);
    const id = c.body.partition.id;
    const op = await api.waitOperation(c.body.operation.id, 120);
    expect(op).toMatchObject({ status: 'succeeded' });
    expect((await api.get(`/v1/partitions/${id}`)).body.state).toBe('running');
    await waitUntil(async () => (await consoleText(id)).includes('HYPERPLANE-GUEST-READY'), 90_000, 'ready marker');

    // Interactive console over a WebSocket: a command typed reaches the guest's shell.
    const ws = new WebSocket(`${cp.url.replace('http', 'ws')}/v1/partitions/${id}/console`, { headers: { authorization: `Bearer ${token}` } });
    let seen = '';
    ws.on('message', (m) => (seen += m.toString()));
    await new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });
    ws.send(Buffer.from('\necho hp-$((6*7))-rest\n'));
    await waitUntil(() => seen.includes('hp-42-rest'), 30_000, 'console echo');
    ws.close();

    const stop = await api.post(`/v1/partitions/${id}/stop`, {});
    expect((await api.waitOperation(stop.body.operation.id, 90)).status).toBe('succeeded');
    expect((await api.get(`/v1/partitions/${id}`)).body.state).toBe('stopped');
    expect(ourQemus().filter((l) => l.includes(id))).toEqual([]);

    const start = await api.post(`/v1/partitions/${id}/start`);
    expect((await api.waitOperation(start.body.operation.id, 120)).status).toBe('succeeded');
    await waitUntil(async () => ((await consoleText(id)).match(/HYPERPLANE-GUEST-READY/g) ?? []).length >= 2, 90_000, 'ready again after start');

    const reboot = await api.post(`/v1/partitions/${id}/reboot`);
    expect((await api.waitOperation(reboot.body.operation.id, 60)).status).toBe('succeeded');
    await waitUntil(async () => ((await consoleText(id)).match(/HYPERPLANE-GUEST-READY/g) ?? []).length >= 3, 90_000, 'ready again after reboot');

    const del = await api.delete(`/v1/partitions/${id}`);
    expect((await api.waitOperation(del.body.operation.id, 60)).status).toBe('succeeded');
    expect((await api.get(`/v1/partitions/${id}`)).status).toBe(404);
    expect(ourQemus().filter((l) => l.includes(id))).toEqual([]);
    const left = existsSync(join(workerDir, 'partitions')) ? readdirSync(join(workerDir, 'partitions')).filter((f) => f.includes(id)) : [];
    expect(left).toEqual([]);
  });

  it('through gRPC: the same lifecycle', async () => {
    const g = new GrpcApi(cp.grpcAddress, token);
    try {
      const c = await g.call('PartitionService', 'CreatePartition', { name: 'grpc-vm', vcpus: 1, memoryMib: 128, image: 'sample' });
      const id = c.partition.id;
      expect((await g.call('OperationService', 'WaitOperation', { id: c.operation.id, timeoutSeconds: 120 })).status).toBe('succeeded');
      await waitUntil(async () => (await g.call('PartitionService', 'GetConsole', { id, tailBytes: 65536 })).data?.includes('HYPERPLANE-GUEST-READY'), 90_000, 'ready marker');

      const stream = (g.clients.PartitionService as any).AttachConsole(g.metadata()) as grpc.ClientDuplexStream<any, any>;
      let seen = '';
      stream.on('data', (m: any) => (seen += Buffer.from(m.data ?? []).toString()));
      stream.on('error', () => undefined);
      stream.write({ partitionId: id, data: Buffer.from('\n') });
      stream.write({ data: Buffer.from('echo hp-$((6*7))-grpc\n') });
      await waitUntil(() => seen.includes('hp-42-grpc'), 30_000, 'console echo over gRPC');
      stream.end();

      for (const [m, req] of [['StopPartition', { id, force: true }], ['StartPartition', { id }], ['RebootPartition', { id }], ['DeletePartition', { id }]] as const) {
        const r = await g.call('PartitionService', m, req);
        const op = await g.call('OperationService', 'WaitOperation', { id: r.operation.id, timeoutSeconds: 120 });
        expect({ m, status: op.status }).toEqual({ m, status: 'succeeded' });
      }
      const gone = await g.fail('PartitionService', 'GetPartition', { id });
      expect(gone.code).toBe(grpc.status.NOT_FOUND);
      expect(ourQemus().filter((l) => l.includes(id))).toEqual([]);
    } finally {
      g.close();
    }
  });

  it('keeps the guest running when the worker is SIGKILLed, and the restarted worker adopts it', async () => {
    const c = await api.post('/v1/partitions', { name: 'survivor', vcpus: 1, memoryMiB: 128, image: 'sample' });
    const id = c.body.partition.id;
    expect((await api.waitOperation(c.body.operation.id, 120)).status).toBe('succeeded');
    const before = ourQemus().filter((l) => l.includes(id));
    expect(before).toHaveLength(1);
    worker.proc.kill('SIGKILL');
    await new Promise((r) => worker.proc.once('exit', r));
    expect(ourQemus().filter((l) => l.includes(id))).toEqual(before);
    worker = spawnWorker({ name: 'qemu-w1', address: '127.0.0.31', controlPlane: cp.grpcAddress, dataDir: workerDir, driver: 'qemu', env: { HYPERPLANE_GUEST_DIR: GUEST, HYPERPLANE_DATA_DIR: dir } });
    await waitUntil(async () => (await admin.get('/v1/nodes/qemu-w1')).body.state === 'ready', 60_000, 'worker back');
    // Adopted, not restarted: the same QEMU process, still running, and the API agrees.
    await new Promise((r) => setTimeout(r, 2000));
    expect(ourQemus().filter((l) => l.includes(id))).toEqual(before);
    const p = await api.get(`/v1/partitions/${id}`);
    expect(p.body).toMatchObject({ state: 'running', node: c.body.partition.node });
    const hb = async () => Number([...(await consoleText(id)).matchAll(/hb (\d+)/g)].pop()?.[1] ?? 0);
    const n = await hb();
    await waitUntil(async () => (await hb()) > n, 20_000, 'heartbeat continues');
    const del = await api.delete(`/v1/partitions/${id}`);
    expect((await api.waitOperation(del.body.operation.id, 60)).status).toBe('succeeded');
  });

  it('marks a partition failed with a reason when its QEMU is SIGKILLed', async () => {
    const c = await api.post('/v1/partitions', { name: 'victim', vcpus: 1, memoryMiB: 128, image: 'sample' });
    const id = c.body.partition.id;
    expect((await api.waitOperation(c.body.operation.id, 120)).status).toBe('succeeded');
    const line = ourQemus().find((l) => l.includes(id))!;
    process.kill(Number(line.trim().split(/\s+/)[0]), 'SIGKILL');
    await waitUntil(async () => (await api.get(`/v1/partitions/${id}`)).body.state === 'failed', 30_000, 'failed state');
    const p = await api.get(`/v1/partitions/${id}`);
    expect(p.body.stateReason).toMatch(/SIGKILL|exited|killed/i);
    const del = await api.delete(`/v1/partitions/${id}`);
    expect((await api.waitOperation(del.body.operation.id, 60)).status).toBe('succeeded');
  });

  it('refuses bad input with clear errors and starts nothing', async () => {
    const qemus = ourQemus().length;
    const noImage = await api.post('/v1/partitions', { name: 'bad-1', vcpus: 1, memoryMiB: 128, image: 'no-such-image' });
    expect(noImage.status).toBe(400);
    expect(noImage.body.detail).toContain("image 'no-such-image' does not exist");
    const tooBig = await api.post('/v1/partitions', { name: 'bad-2', vcpus: 1, memoryMiB: 4 * 1024 * 1024, image: 'sample' });
    expect(tooBig.status).toBe(422);
    expect(tooBig.body.detail).toMatch(/no node fits: .*not enough memory/);
    await admin.post('/v1/nodes/qemu-w1/cordon');
    try {
      const cordoned = await api.post('/v1/partitions', { name: 'bad-3', vcpus: 1, memoryMiB: 128, image: 'sample', placement: { node: 'qemu-w1' } });
      expect(cordoned.status).toBe(422);
      expect(cordoned.body.detail).toBe('no node fits: 1 node: cordoned');
    } finally {
      await admin.post('/v1/nodes/qemu-w1/uncordon');
    }
    expect((await api.get('/v1/partitions?pageSize=100')).body.items.filter((p: any) => p.name.startsWith('bad-'))).toEqual([]);
    expect(ourQemus().length).toBe(qemus);
  });
});
