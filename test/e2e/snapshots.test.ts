/**
 * Snapshots through the public API, on a real worker running a real guest under QEMU (TCG): a
 * tree of memory snapshots, revert to an older one while newer ones exist (the guest's heartbeat
 * counter resumes from that snapshot's value), the newer ones still revert afterwards, delete
 * keeps the rest of the tree usable, disk-only snapshots of a stopped partition, and bad input
 * that changes nothing. REST and gRPC.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Api, clusterAdminToken, startInProcess, InProcess, waitUntil } from '../helpers/control-plane';
import { GrpcApi } from '../helpers/grpc-client';
import { describeWithGuest, GUEST, killQemusUnder } from '../helpers/guest';
import { retireAllNodes, sql } from '../helpers/db';
import { spawnWorker, WorkerProcess } from '../helpers/worker';

const d = describeWithGuest('snapshot end-to-end tests');

jest.setTimeout(300_000);

let cp: InProcess;
let worker: WorkerProcess;
let api: Api;
let other: Api;
let token: string;
const dir = mkdtempSync(join(tmpdir(), 'hp-snap-e2e-'));

/** Every heartbeat number on the partition's console, in order. */
async function beats(id: string): Promise<number[]> {
  const r = await api.get(`/v1/partitions/${id}/console?tailBytes=65536`);
  const text = r.status === 200 ? String(r.body.data).replaceAll('\r', '') : '';
  return [...text.matchAll(/^hb (\d+)$/gm)].map((m) => Number(m[1]));
}

async function lastBeat(id: string): Promise<number> {
  return (await beats(id)).at(-1) ?? 0;
}

async function waitBeat(id: string, n: number): Promise<void> {
  await waitUntil(async () => (await lastBeat(id)) >= n, 60_000, `heartbeat ${n}`, 250);
}

/** The beats printed after the console had `count` of them. */
async function beatsAfter(id: string, count: number, want: number): Promise<number[]> {
  let got: number[] = [];
  await waitUntil(async () => (got = (await beats(id)).slice(count)).length >= want, 30_000, `${want} new heartbeats`, 250);
  return got;
}

async function snapshot(id: string, name: string, body: Record<string, unknown> = {}): Promise<any> {
  const r = await api.post(`/v1/partitions/${id}/snapshots`, { name, ...body });
  expect(r.status).toBe(202);
  expect(r.headers.get('location')).toBe(`/v1/operations/${r.body.operation.id}`);
  const op = await api.waitOperation(r.body.operation.id, 120);
  expect(op).toMatchObject({ status: 'succeeded', kind: 'snapshot.create' });
  return (await api.get(`/v1/partitions/${id}/snapshots/${r.body.snapshot.id}`)).body;
}

async function revert(id: string, sid: string): Promise<void> {
  const r = await api.post(`/v1/partitions/${id}/snapshots/${sid}/revert`);
  expect(r.status).toBe(202);
  expect((await api.waitOperation(r.body.operation.id, 120)).status).toBe('succeeded');
}

async function tree(id: string): Promise<Array<{ name: string; parent: string | null; current: boolean }>> {
  const items = (await api.get(`/v1/partitions/${id}/snapshots`)).body.items as any[];
  const names = new Map(items.map((s) => [s.id, s.name]));
  return items.map((s) => ({ name: s.name, parent: s.parentId ? names.get(s.parentId) ?? s.parentId : null, current: s.current }));
}

d('snapshots end to end', () => {
  beforeAll(async () => {
    await retireAllNodes();
    cp = await startInProcess({ HYPERPLANE_GUEST_DIR: GUEST });
    worker = spawnWorker({ name: 'snap-w1', address: '127.0.0.51', controlPlane: cp.grpcAddress, dataDir: join(dir, 'w1'), driver: 'qemu', env: { HYPERPLANE_GUEST_DIR: GUEST, HYPERPLANE_DATA_DIR: dir } });
    const admin = new Api(cp.url, await clusterAdminToken());
    await waitUntil(async () => (await admin.get('/v1/nodes?state=ready')).body.items?.some((n: any) => n.name === 'snap-w1'), 60_000, 'worker registered');
    ({ api, token } = await admin.newProject('snap-e2e', 'operator'));
    ({ api: other } = await admin.newProject('snap-other', 'operator'));
  });

  afterAll(async () => {
    await worker?.stop();
    killQemusUnder(dir);
    await cp?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('reverts to an older snapshot while newer ones exist, and the newer ones still revert; delete keeps the tree usable', async () => {
    const c = await api.post('/v1/partitions', { name: 'snap-vm', vcpus: 1, memoryMiB: 128, image: 'sample' });
    const id = c.body.partition.id;
    expect((await api.waitOperation(c.body.operation.id, 120)).status).toBe('succeeded');
    await waitBeat(id, 3);

    const s1 = await snapshot(id, 's1', { description: 'first' });
    expect(s1).toMatchObject({ name: 's1', description: 'first', state: 'ready', withMemory: true, parentId: null, current: true });
    expect(s1.vmStateBytes).toBeGreaterThan(0);
    const n1 = await lastBeat(id);
    await waitBeat(id, n1 + 4);
    const s2 = await snapshot(id, 's2');
    const n2 = await lastBeat(id);
    expect(s2.parentId).toBe(s1.id);
    await waitBeat(id, n2 + 3);

    // Back to s1 while s2 exists: the count goes on from s1's value.
    let seen = (await beats(id)).length;
    await revert(id, s1.id);
    const after1 = await beatsAfter(id, seen, 2);
    expect(after1[0]).toBeGreaterThanOrEqual(n1);
    expect(after1[0]).toBeLessThanOrEqual(n1 + 2);
    expect(after1[1]).toBe(after1[0]! + 1);
    expect((await api.get(`/v1/partitions/${id}`)).body.state).toBe('running');

    // A snapshot taken now branches off s1: the tree has two children of s1.
    const s3 = await snapshot(id, 's3');
    expect(s3.parentId).toBe(s1.id);
    expect(await tree(id)).toEqual([
      { name: 's1', parent: null, current: false },
      { name: 's2', parent: 's1', current: false },
      { name: 's3', parent: 's1', current: true },
    ]);

    // The newer snapshot still reverts correctly afterwards.
    seen = (await beats(id)).length;
    await revert(id, s2.id);
    const after2 = await beatsAfter(id, seen, 2);
    expect(after2[0]).toBeGreaterThanOrEqual(n2);
    expect(after2[0]).toBeLessThanOrEqual(n2 + 2);
    expect((await tree(id)).find((s) => s.current)?.name).toBe('s2');

    // Deleting s1 (a parent) keeps s2 and s3: they become roots, and both still revert.
    const del = await api.delete(`/v1/partitions/${id}/snapshots/${s1.id}`);
    expect(del.status).toBe(202);
    expect((await api.waitOperation(del.body.operation.id, 60)).status).toBe('succeeded');
    expect(await tree(id)).toEqual([
      { name: 's2', parent: null, current: true },
      { name: 's3', parent: null, current: false },
    ]);
    seen = (await beats(id)).length;
    await revert(id, s3.id);
    expect((await beatsAfter(id, seen, 1))[0]).toBeLessThan(n2);
    seen = (await beats(id)).length;
    await revert(id, s2.id);
    expect((await beatsAfter(id, seen, 1))[0]).toBeGreaterThanOrEqual(n2);

    // Bad input, each refused with a clear error and nothing changed.
    const before = await sql(`SELECT id, state, parent_id, version FROM snapshots WHERE partition_id = $1 ORDER BY id`, [id]);
    const ops = (await sql<{ n: string }>(`SELECT count(*) n FROM operations WHERE target_id = $1`, [id]))[0]!.n;
    const taken = await api.post(`/v1/partitions/${id}/snapshots`, { name: 's2' });
    expect(taken.status).toBe(409);
    expect(taken.body.detail).toBe("snapshot named 's2' already exists in this partition");
    expect((await api.post(`/v1/partitions/${id}/snapshots`, { name: 'Bad Name' })).status).toBe(400);
    const gone = await api.post(`/v1/partitions/${id}/snapshots/${s1.id}/revert`);
    expect(gone.status).toBe(404);
    expect(gone.body.detail).toMatch(/snapshot/);
    // Another project sees neither the partition nor its snapshots.
    expect((await other.get(`/v1/partitions/${id}/snapshots`)).status).toBe(404);
    expect((await other.post(`/v1/partitions/${id}/snapshots/${s2.id}/revert`)).status).toBe(404);
    // A disk-only snapshot cannot be loaded into the running guest.
    const diskOnly = await snapshot(id, 'disk-only', { memory: false });
    expect(diskOnly).toMatchObject({ withMemory: false, vmStateBytes: 0, parentId: s2.id });
    const refused = await api.post(`/v1/partitions/${id}/snapshots/${diskOnly.id}/revert`);
    expect(refused.status).toBe(409);
    expect(refused.body.detail).toBe(`cannot revert running partition snap-vm to snapshot disk-only: it holds no memory state; stop the partition first`);
    const delOnly = await api.delete(`/v1/partitions/${id}/snapshots/${diskOnly.id}`);
    expect((await api.waitOperation(delOnly.body.operation.id, 60)).status).toBe('succeeded');
    expect(await sql(`SELECT id, state, parent_id, version FROM snapshots WHERE partition_id = $1 ORDER BY id`, [id])).toEqual(before);
    expect(Number((await sql<{ n: string }>(`SELECT count(*) n FROM operations WHERE target_id = $1`, [id]))[0]!.n)).toBe(Number(ops) + 2);

    // A snapshot of a partition of the same project is no snapshot of this one.
    const c2 = await api.post('/v1/partitions', { name: 'snap-vm-2', vcpus: 1, memoryMiB: 128, image: 'sample' });
    expect((await api.waitOperation(c2.body.operation.id, 120)).status).toBe('succeeded');
    const cross = await api.post(`/v1/partitions/${c2.body.partition.id}/snapshots/${s2.id}/revert`);
    expect(cross.status).toBe(404);
    expect(cross.body.detail).toBe(`snapshot '${s2.id}' not found`);
    const rm2 = await api.delete(`/v1/partitions/${c2.body.partition.id}`);
    expect((await api.waitOperation(rm2.body.operation.id, 60)).status).toBe('succeeded');

    // Stopped: memory cannot be saved; disk-only snapshots can, and revert sets the disk back.
    const stop = await api.post(`/v1/partitions/${id}/stop`, { force: true });
    expect((await api.waitOperation(stop.body.operation.id, 60)).status).toBe('succeeded');
    const mem = await api.post(`/v1/partitions/${id}/snapshots`, { name: 'cold-mem', memory: true });
    expect(mem.status).toBe(409);
    expect(mem.body.detail).toMatch(/cannot save the memory of partition snap-vm: it is stopped/);
    const cold = await snapshot(id, 'cold');
    expect(cold).toMatchObject({ withMemory: false, parentId: s2.id, current: true });
    await revert(id, s3.id);
    expect((await tree(id)).find((s) => s.current)?.name).toBe('s3');

    // A revert the node cannot do (the snapshot went from the disk behind the API's back) fails and
    // leaves the current snapshot as it was.
    execFileSync('qemu-img', ['snapshot', '-d', s2.id, join(dir, 'w1', 'partitions', id, 'disk.qcow2')]);
    const lost = await api.post(`/v1/partitions/${id}/snapshots/${s2.id}/revert`);
    expect(lost.status).toBe(202);
    expect(await api.waitOperation(lost.body.operation.id, 60)).toMatchObject({ status: 'failed', error: { code: 'FAILED_PRECONDITION' } });
    expect((await tree(id)).find((s) => s.current)?.name).toBe('s3');

    // Deleting the partition takes its snapshots with it.
    const rm = await api.delete(`/v1/partitions/${id}`);
    expect((await api.waitOperation(rm.body.operation.id, 60)).status).toBe('succeeded');
    expect(await sql(`SELECT id FROM snapshots WHERE partition_id = $1`, [id])).toEqual([]);
  });

  it('exports a snapshot as a new library image that carries metadata and boots', async () => {
    const c = await api.post('/v1/partitions', { name: 'export-vm', vcpus: 1, memoryMiB: 128, image: 'sample' });
    const id = c.body.partition.id;
    expect((await api.waitOperation(c.body.operation.id, 120)).status).toBe('succeeded');
    await waitBeat(id, 2);
    const golden = await snapshot(id, 'golden');
    const before = await sql(`SELECT count(*)::int n FROM images`);
    const taken = await api.post(`/v1/partitions/${id}/snapshots/${golden.id}/export`, { imageName: 'Not A Label' });
    expect(taken.status).toBe(400);
    const unknown = await api.post(`/v1/partitions/${id}/snapshots/018f0000-0000-7000-8000-000000000000/export`, { imageName: 'golden-image' });
    expect(unknown.status).toBe(404);
    expect(await sql(`SELECT count(*)::int n FROM images`)).toEqual(before);

    const x = await api.post(`/v1/partitions/${id}/snapshots/${golden.id}/export`, { imageName: 'golden-image' });
    expect(x.status).toBe(202);
    const op = await api.waitOperation(x.body.operation.id, 180);
    expect(op).toMatchObject({ status: 'succeeded', kind: 'snapshot.export' });
    const img = (await api.get('/v1/images?text=golden')).body.items.find((i: any) => i.name === 'golden-image');
    expect(img).toMatchObject({ name: 'golden-image', format: 'qcow2', state: 'ready' });
    const meta = (await api.get(`/v1/images/${img.id}/metadata`)).body;
    expect(meta.description).toBe('snapshot golden of partition export-vm (from node image sample)');
    expect(meta.savedStateRef).toBe(`snapshot:${golden.id}`);
    expect(meta.history.map((h: any) => h.operation)).toContain('created');
    // Nothing stays in the node's staging area.
    const staging = join(dir, 'w1', 'images', 'staging');
    expect(existsSync(staging) ? readdirSync(staging) : []).toEqual([]);
    // The same name again is taken.
    const again = await api.post(`/v1/partitions/${id}/snapshots/${golden.id}/export`, { imageName: 'golden-image' });
    expect(again.status).toBe(409);

    // A partition from the exported image boots the guest (standalone: its base was flattened in).
    const b = await api.post('/v1/partitions', { name: 'from-golden', vcpus: 1, memoryMiB: 128, image: 'golden-image' });
    expect(b.status).toBe(202);
    expect((await api.waitOperation(b.body.operation.id, 180)).status).toBe('succeeded');
    await waitBeat(b.body.partition.id, 1);
    for (const pid of [b.body.partition.id, id]) {
      const rm = await api.delete(`/v1/partitions/${pid}`);
      expect((await api.waitOperation(rm.body.operation.id, 60)).status).toBe('succeeded');
    }
  });

  it('through gRPC: create, list as a tree, revert, delete, and the same errors', async () => {
    const g = new GrpcApi(cp.grpcAddress, token);
    try {
      const c = await g.call('PartitionService', 'CreatePartition', { name: 'snap-grpc', vcpus: 1, memoryMib: 128, image: 'sample' });
      const id = c.partition.id;
      expect((await g.call('OperationService', 'WaitOperation', { id: c.operation.id, timeoutSeconds: 120 })).status).toBe('succeeded');
      await waitBeat(id, 2);
      const a = await g.call('SnapshotService', 'CreateSnapshot', { partitionId: id, name: 'a' });
      expect(a.snapshot).toMatchObject({ name: 'a', state: 'creating', withMemory: true });
      expect((await g.call('OperationService', 'WaitOperation', { id: a.operation.id, timeoutSeconds: 120 })).status).toBe('succeeded');
      const b = await g.call('SnapshotService', 'CreateSnapshot', { partitionId: id, name: 'b' });
      expect((await g.call('OperationService', 'WaitOperation', { id: b.operation.id, timeoutSeconds: 120 })).status).toBe('succeeded');
      const list = await g.call('SnapshotService', 'ListSnapshots', { partitionId: id });
      expect(list.items.map((s: any) => [s.name, s.parentId, s.current])).toEqual([['a', '', false], ['b', a.snapshot.id, true]]);
      const r = await g.call('SnapshotService', 'RevertSnapshot', { partitionId: id, id: a.snapshot.id });
      expect((await g.call('OperationService', 'WaitOperation', { id: r.operation.id, timeoutSeconds: 120 })).status).toBe('succeeded');
      expect((await g.call('SnapshotService', 'GetSnapshot', { partitionId: id, id: a.snapshot.id })).current).toBe(true);
      await expect(g.call('SnapshotService', 'CreateSnapshot', { partitionId: id, name: 'a' })).rejects.toMatchObject({ code: 6 }); // ALREADY_EXISTS
      await expect(g.call('SnapshotService', 'RevertSnapshot', { partitionId: id, id: '018f0000-0000-7000-8000-000000000000' })).rejects.toMatchObject({ code: 5 }); // NOT_FOUND
      const del = await g.call('SnapshotService', 'DeleteSnapshot', { partitionId: id, id: b.snapshot.id });
      expect((await g.call('OperationService', 'WaitOperation', { id: del.operation.id, timeoutSeconds: 60 })).status).toBe('succeeded');
      expect((await g.call('SnapshotService', 'ListSnapshots', { partitionId: id })).items.map((s: any) => s.name)).toEqual(['a']);
      const rm = await g.call('PartitionService', 'DeletePartition', { id });
      expect((await g.call('OperationService', 'WaitOperation', { id: rm.operation.id, timeoutSeconds: 60 })).status).toBe('succeeded');
    } finally {
      g.close();
    }
  });
});
