/**
 * Images moving between nodes and the control plane, with a real worker agent (QEMU driver), real
 * QEMU and the real sample guest, through the public API only:
 * - the worker reports its store with the metadata read from inside each file; hostile files are
 *   reported rejected (with the reason) and the agent keeps running; a file copied into the store
 *   later reaches the control plane without a new registration;
 * - import from the node's store (REST and gRPC): same intake as an upload; paths outside the
 *   store refused; a failed import leaves nothing;
 * - distribution: a partition from an uploaded image boots the sample guest on a node that did
 *   not have it (fetched, verified, stored under library/<id>), fetch progress on the create
 *   operation; two partitions needing it at once fetch it once; a corrupted library file is
 *   refused by the node's verification and leaves no partial file;
 * - history: partition created / deleted recorded inside the library image file.
 */
import { execFileSync, execSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openSync, readSync, writeSync, closeSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { readMetadata, writeMetadata } from '@hyperplane/disk-formats';
import { Api, clusterAdminToken, startInProcess, InProcess, waitUntil } from '../helpers/control-plane';
import { GrpcApi } from '../helpers/grpc-client';
import { describeWithGuest, GUEST } from '../helpers/guest';
import { retireAllNodes, sql } from '../helpers/db';
import { spawnWorker, WorkerProcess } from '../helpers/worker';

const d = describeWithGuest('image distribution end-to-end tests');

jest.setTimeout(240_000);

const dir = mkdtempSync(join(tmpdir(), 'hp-img-e2e-'));
const workerDir = join(dir, 'w1');
const store = join(workerDir, 'images');
let cp: InProcess;
let worker: WorkerProcess;
let worker2: WorkerProcess | undefined;
let admin: Api;
let api: Api;
let token: string;
let nodeId: string;

const qemuImg = (...args: string[]) => execFileSync('qemu-img', args, { encoding: 'utf8' });

/** Uploads a file as a library image. */
async function upload(name: string, file: string): Promise<any> {
  const res = await fetch(`${cp.url}/v1/images?name=${name}`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/octet-stream' }, body: readFileSync(file) });
  expect(res.status).toBe(201);
  return res.json();
}

/** Polls an operation until it is final, collecting every phase seen. */
async function follow(id: string, timeoutMs = 120_000): Promise<{ op: any; phases: string[] }> {
  const phases: string[] = [];
  const end = Date.now() + timeoutMs;
  for (;;) {
    const r = await api.get(`/v1/operations/${id}`);
    if (phases.at(-1) !== r.body.phase) phases.push(r.body.phase);
    if (['succeeded', 'failed', 'cancelled'].includes(r.body.status)) return { op: r.body, phases };
    if (Date.now() > end) throw new Error(`operation ${id} still ${r.body.status}`);
    await new Promise((res) => setTimeout(res, 15));
  }
}

async function consoleText(id: string): Promise<string> {
  const r = await api.get(`/v1/partitions/${id}/console?tailBytes=65536`);
  return r.status === 200 ? r.body.data : '';
}

const nodeImages = async () => (await admin.get(`/v1/nodes/${nodeId}/images`)).body.items as any[];
const imagesNamed = async (name: string) => Number((await sql(`SELECT count(*) n FROM images WHERE name = $1`, [name]))[0].n);
const cpStoreTemp = () => readdirSync(join(cp.dataDir, 'images')).filter((f) => f.startsWith('.'));

function ourQemus(): string[] {
  return execSync(`pgrep -af qemu-system || true`, { encoding: 'utf8' }).split('\n').filter((l) => l.includes(dir));
}

d('images between nodes and the control plane, end to end', () => {
  beforeAll(async () => {
    await retireAllNodes();
    mkdirSync(join(store, 'library'), { recursive: true });
    // The node's store before its agent starts: a good image with metadata inside, and hostile files.
    qemuImg('create', '-q', '-f', 'qcow2', join(store, 'meta.qcow2'), '32M');
    await writeMetadata(join(store, 'meta.qcow2'), { schemaVersion: 1, description: 'Node-local appliance', tags: ['appliance', 'node-local'], hardware: { arch: 'x86_64', minVcpus: 1, minMemoryMiB: 64 } });
    qemuImg('create', '-q', '-f', 'qcow2', '-b', '/etc/passwd', '-F', 'raw', join(store, 'evil.qcow2'), '1M');
    writeFileSync(join(store, 'trunc.qcow2'), readFileSync(join(store, 'meta.qcow2')).subarray(0, 40));
    writeFileSync(join(store, 'garbage.vhdx'), Buffer.alloc(1 << 20, 0xa5));
    writeFileSync(join(dir, 'secret.qcow2'), readFileSync(join(store, 'meta.qcow2')));
    symlinkSync(join(dir, 'secret.qcow2'), join(store, 'out.qcow2'));
    writeFileSync(join(store, 'library', '.fetch-left-by-a-crash'), 'partial bytes');

    cp = await startInProcess({ HYPERPLANE_GUEST_DIR: GUEST });
    worker = spawnWorker({ name: 'img-w1', address: '127.0.0.36', controlPlane: cp.grpcAddress, dataDir: workerDir, driver: 'qemu', env: { HYPERPLANE_GUEST_DIR: GUEST, HYPERPLANE_DATA_DIR: dir } });
    admin = new Api(cp.url, await clusterAdminToken());
    await waitUntil(async () => (await admin.get('/v1/nodes?state=ready')).body.items?.some((n: any) => n.name === 'img-w1'), 60_000, 'worker registered');
    nodeId = (await admin.get('/v1/nodes/img-w1')).body.id;
    const p = await admin.newProject('img-e2e', 'operator');
    api = p.api;
    token = p.token;
  });

  afterAll(async () => {
    await worker?.stop();
    await worker2?.stop();
    for (const line of ourQemus()) {
      try { process.kill(Number(line.trim().split(/\s+/)[0]), 'SIGKILL'); } catch { /* gone */ }
    }
    await cp?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('reports the store with embedded metadata and hostile files rejected with the reason; the agent survives and reports later changes without registering again', async () => {
    const by = Object.fromEntries((await nodeImages()).map((i) => [i.name, i]));
    expect(by.meta).toMatchObject({ format: 'qcow2', virtualSizeBytes: 32 * 2 ** 20, rejected: null, metadata: { description: 'Node-local appliance', tags: ['appliance', 'node-local'] } });
    expect(by.sample).toMatchObject({ format: 'qcow2', rejected: null });
    expect(by.evil.rejected.reason).toBe('backing-file');
    expect(by.trunc.rejected.reason).toMatch(/truncated|bad-header/);
    expect(by.garbage.rejected.reason).toBe('format-mismatch');
    expect(by.out.rejected.reason).toBe('outside-store');
    // Only usable images are offered by name to placement.
    expect((await admin.get(`/v1/nodes/${nodeId}`)).body.images.map((i: any) => i.name).sort()).toEqual(['meta', 'sample']);
    // The crash leftover was swept at start.
    expect(readdirSync(join(store, 'library'))).toEqual([]);
    // A hostile image cannot be used by name.
    expect((await api.post('/v1/partitions', { name: 'evil-1', vcpus: 1, memoryMiB: 128, image: 'evil' })).status).toBe(400);

    copyFileSync(join(store, 'meta.qcow2'), join(store, '.copying'));
    execFileSync('mv', [join(store, '.copying'), join(store, 'later.qcow2')]);
    await waitUntil(async () => (await nodeImages()).some((i) => i.name === 'later' && i.rejected === null), 20_000, 'later.qcow2 reported');
    expect((await admin.get(`/v1/nodes/${nodeId}`)).body.images.map((i: any) => i.name).sort()).toEqual(['later', 'meta', 'sample']);
    rmSync(join(store, 'later.qcow2'));
    await waitUntil(async () => !(await nodeImages()).some((i) => i.name === 'later'), 20_000, 'later.qcow2 gone');
    expect(worker.proc.exitCode).toBeNull();
    expect(worker.output().match(/registered with the control plane/g)).toHaveLength(1);
    expect((await admin.get(`/v1/nodes/${nodeId}`)).body.state).toBe('ready');
  });

  it('imports a file of the node store through REST: 202, then the image with its embedded metadata indexed and the creation in its history', async () => {
    const r = await api.post('/v1/images', { name: 'appliance', node: 'img-w1', path: 'meta.qcow2' });
    expect(r.status).toBe(202);
    expect(r.headers.get('location')).toBe(`/v1/operations/${r.body.operation.id}`);
    expect(r.body.image).toMatchObject({ name: 'appliance', state: 'importing' });
    expect((await api.get('/v1/images?tag=appliance')).body.items).toEqual([]); // not listed while importing
    const { op } = await follow(r.body.operation.id);
    expect(op).toMatchObject({ status: 'succeeded', kind: 'image.import', target: { type: 'image', id: r.body.image.id } });
    const img = (await api.get(`/v1/images/${r.body.image.id}`)).body;
    expect(img).toMatchObject({ state: 'ready', format: 'qcow2', virtualSizeBytes: 32 * 2 ** 20, metadata: { description: 'Node-local appliance' } });
    expect(img.digest).toMatch(/^sha256-64m:[0-9a-f]{64}$/);
    expect(img.metadata.history.at(-1)).toMatchObject({ operation: 'created', node: 'img-w1', by: expect.stringMatching(/^token:/) });
    expect((await api.get('/v1/images?tag=appliance')).body.items.map((i: any) => i.name)).toEqual(['appliance']);
    const row = (await sql(`SELECT storage_path FROM images WHERE id = $1`, [img.id]))[0];
    expect((await readMetadata(row.storage_path))?.history?.at(-1)?.operation).toBe('created');
    expect(existsSync(join(store, 'meta.qcow2'))).toBe(true); // an import copies; the node keeps its file
    expect(cpStoreTemp()).toEqual([]);
  });

  it.each<[string, string, number, RegExp]>([
    ['a path with ..', '../secret.qcow2', 400, /must not contain '\.\.'/],
    ['an absolute path elsewhere', '/etc/passwd', 400, /outside the node's image store/],
  ])('refuses %s at once with 400, registering nothing', async (_what, path, status, message) => {
    const r = await api.post('/v1/images', { name: 'nope', node: 'img-w1', path });
    expect(r.status).toBe(status);
    expect(r.body.errors[0].field).toBe('path');
    expect(r.body.detail).toMatch(message);
    expect(await imagesNamed('nope')).toBe(0);
  });

  it.each<[string, string, RegExp]>([
    ['a symlink out of the store', 'out.qcow2', /resolves to .*secret\.qcow2, outside the node's image store/],
    ['a hostile image (backing file)', 'evil.qcow2', /rejected \(backing-file\)/],
    ['a file that is not there', 'missing.qcow2', /no such file/],
  ])('fails the import of %s, naming why, and leaves nothing half-registered', async (_what, path, message) => {
    const r = await api.post('/v1/images', { name: 'failed-import', node: 'img-w1', path });
    expect(r.status).toBe(202);
    const { op } = await follow(r.body.operation.id);
    expect(op.status).toBe('failed');
    expect(op.error.code).toBe('INVALID_ARGUMENT');
    expect(op.error.message).toMatch(message);
    expect((await api.get(`/v1/images/${r.body.image.id}`)).status).toBe(404);
    expect(await imagesNamed('failed-import')).toBe(0);
    expect(cpStoreTemp()).toEqual([]);
  });

  it('imports through gRPC ImageService.ImportImage with the same rules', async () => {
    const g = new GrpcApi(cp.grpcAddress, token);
    try {
      const r = await g.call('ImageService', 'ImportImage', { name: 'grpc-appliance', node: nodeId, path: join(store, 'meta.qcow2') });
      expect(r.image).toMatchObject({ name: 'grpc-appliance', state: 'importing' });
      expect((await g.call('OperationService', 'WaitOperation', { id: r.operation.id, timeoutSeconds: 60 })).status).toBe('succeeded');
      const img = await g.call('ImageService', 'GetImage', { id: r.image.id });
      expect(JSON.parse(img.metadataJson).description).toBe('Node-local appliance');
      expect(img.digest).toMatch(/^sha256-64m:/);
      const bad = await g.fail('ImageService', 'ImportImage', { name: 'grpc-bad', node: 'img-w1', path: '../../etc/shadow' });
      expect(bad.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(bad.details).toMatch(/path: must not contain/);
      expect((await g.fail('ImageService', 'ImportImage', { name: 'grpc-appliance', node: 'img-w1', path: 'meta.qcow2' })).code).toBe(grpc.status.ALREADY_EXISTS);
    } finally {
      g.close();
    }
  });

  it('boots a partition from an uploaded image on a node that did not have it: fetched with progress, verified, stored under library/; history recorded in the file', async () => {
    const img = await upload('web', join(GUEST, 'sample.qcow2'));
    expect(existsSync(join(store, 'library', `${img.id}.qcow2`))).toBe(false);
    const c = await api.post('/v1/partitions', { name: 'web-1', vcpus: 1, memoryMiB: 128, image: 'web' });
    expect(c.status).toBe(202);
    const id = c.body.partition.id;
    const { op, phases } = await follow(c.body.operation.id);
    expect(op.status).toBe('succeeded');
    expect(phases.some((p) => /^fetching-image \d+% \([\d.]+ of [\d.]+ MiB\)$/.test(p))).toBe(true);
    await waitUntil(async () => (await consoleText(id)).includes('HYPERPLANE-GUEST-READY'), 90_000, 'ready marker');
    const copy = join(store, 'library', `${img.id}.qcow2`);
    expect(statSync(copy).mode & 0o777).toBe(0o600);
    expect(qemuImg('compare', '-q', '-f', 'qcow2', '-F', 'qcow2', copy, join(GUEST, 'sample.qcow2'))).toBe('');
    expect(readdirSync(join(store, 'library')).filter((f) => f.startsWith('.'))).toEqual([]);
    await waitUntil(async () => (await nodeImages()).some((i) => i.libraryImageId === img.id), 20_000, 'library copy reported');
    // The copy is never offered by name (it belongs to its project).
    expect((await admin.get(`/v1/nodes/${nodeId}`)).body.images.map((i: any) => i.name)).not.toContain(`library/${img.id}`);
    expect(cpStoreTemp()).toEqual([]);

    const after = (await api.get(`/v1/images/${img.id}`)).body;
    expect(after.etag).not.toBe(img.etag);
    expect(after.metadata.history.at(-1)).toMatchObject({ operation: 'partition-created', partition: id, node: 'img-w1' });
    const del = await api.delete(`/v1/partitions/${id}`);
    expect((await api.waitOperation(del.body.operation.id, 60)).status).toBe('succeeded');
    const file = (await sql(`SELECT storage_path FROM images WHERE id = $1`, [img.id]))[0].storage_path;
    expect((await readMetadata(file))!.history!.slice(-2).map((h) => [h.operation, h.partition])).toEqual([['partition-created', id], ['partition-deleted', id]]);
    expect(() => qemuImg('check', '-q', '-f', 'qcow2', file)).not.toThrow();
  });

  it('fetches an image once for two partitions that need it on the same node at the same time', async () => {
    const img = await upload('web2', join(GUEST, 'sample.qcow2'));
    const before = Number((await sql(`SELECT count(*) n FROM transfers WHERE direction = 'to-node' AND node_id = $1`, [nodeId]))[0].n);
    const c = await api.post('/v1/partitions', { name: 'pair', count: 2, vcpus: 1, memoryMiB: 128, image: 'web2' });
    expect(c.status).toBe(202);
    for (const o of c.body.operations) expect((await api.waitOperation(o.id, 120)).status).toBe('succeeded');
    const after = Number((await sql(`SELECT count(*) n FROM transfers WHERE direction = 'to-node' AND node_id = $1`, [nodeId]))[0].n);
    expect(after - before).toBe(1);
    const history = (await api.get(`/v1/images/${img.id}`)).body.metadata.history.filter((h: any) => h.operation === 'partition-created');
    expect(history.map((h: any) => h.partition).sort()).toEqual(c.body.partitions.map((p: any) => p.id).sort());
    for (const p of c.body.partitions) {
      const del = await api.delete(`/v1/partitions/${p.id}`);
      expect((await api.waitOperation(del.body.operation.id, 60)).status).toBe('succeeded');
    }
  });

  it('refuses a library file that does not match its recorded digest: the node verifies, keeps no partial file, and the partition fails saying why', async () => {
    const img = await upload('tampered', join(GUEST, 'sample.qcow2'));
    const file = (await sql(`SELECT storage_path FROM images WHERE id = $1`, [img.id]))[0].storage_path;
    // Flip one byte of guest data behind the control plane's back, keeping the file's mtime to the
    // nanosecond (bit rot: nothing tells the control plane the file changed).
    const st = statSync(file);
    const ns = statSync(file, { bigint: true }).mtimeNs;
    const fd = openSync(file, 'r+');
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, st.size - 4096);
    writeSync(fd, Buffer.from([b[0]! ^ 0xff]), 0, 1, st.size - 4096);
    closeSync(fd);
    execFileSync('touch', ['-m', '-d', `@${ns / 1_000_000_000n}.${String(ns % 1_000_000_000n).padStart(9, '0')}`, file]);
    expect(statSync(file).mtimeMs).toBe(st.mtimeMs);
    const c = await api.post('/v1/partitions', { name: 'tampered-1', vcpus: 1, memoryMiB: 128, image: 'tampered' });
    const { op } = await follow(c.body.operation.id);
    expect(op.status).toBe('failed');
    expect(op.error.message).toMatch(/digest sha256-64m:[0-9a-f]+ does not match the recorded/);
    const p = (await api.get(`/v1/partitions/${c.body.partition.id}`)).body;
    expect(p.state).toBe('failed');
    expect(p.stateReason).toMatch(/could not fetch image tampered/);
    expect(readdirSync(join(store, 'library')).filter((f) => f.includes(img.id) || f.startsWith('.'))).toEqual([]);
    expect(ourQemus().filter((l) => l.includes(c.body.partition.id))).toEqual([]);
    const del = await api.delete(`/v1/partitions/${c.body.partition.id}`);
    expect((await api.waitOperation(del.body.operation.id, 60)).status).toBe('succeeded');
  });

  it('live-migrates a partition of a library image to a node that lacks the image: the destination fetches it first, and the history records the migration', async () => {
    const w2Dir = join(dir, 'w2');
    worker2 = spawnWorker({ name: 'img-w2', address: '127.0.0.37', controlPlane: cp.grpcAddress, dataDir: w2Dir, driver: 'qemu', env: { HYPERPLANE_GUEST_DIR: GUEST, HYPERPLANE_DATA_DIR: dir } });
    await waitUntil(async () => (await admin.get('/v1/nodes?state=ready')).body.items?.some((n: any) => n.name === 'img-w2'), 60_000, 'second worker registered');
    const img = await upload('mover-img', join(GUEST, 'sample.qcow2'));
    const c = await api.post('/v1/partitions', { name: 'mover', vcpus: 1, memoryMiB: 128, image: 'mover-img', placement: { node: 'img-w1' } });
    expect((await api.waitOperation(c.body.operation.id, 120)).status).toBe('succeeded');
    const id = c.body.partition.id;
    await waitUntil(async () => (await consoleText(id)).includes('HYPERPLANE-GUEST-READY'), 90_000, 'ready marker');
    expect(existsSync(join(w2Dir, 'images', 'library', `${img.id}.qcow2`))).toBe(false);
    const m = await api.post(`/v1/partitions/${id}/migrate`, { targetNode: 'img-w2' });
    expect(m.status).toBe(202);
    const { op, phases } = await follow(m.body.operation.id);
    expect(op.status).toBe('succeeded');
    expect(phases.some((p) => p.startsWith('fetching-image'))).toBe(true);
    expect(existsSync(join(w2Dir, 'images', 'library', `${img.id}.qcow2`))).toBe(true);
    expect((await api.get(`/v1/partitions/${id}`)).body).toMatchObject({ state: 'running', node: (await admin.get('/v1/nodes/img-w2')).body.id });
    const before = ((await consoleText(id)).match(/hb \d+/g) ?? []).length;
    await waitUntil(async () => ((await consoleText(id)).match(/hb \d+/g) ?? []).length > before + 1, 30_000, 'heartbeats on the destination');
    const history = (await api.get(`/v1/images/${img.id}`)).body.metadata.history;
    expect(history.at(-1)).toMatchObject({ operation: 'migrated', partition: id, node: 'img-w2', details: { from: 'img-w1', live: true } });
    const del = await api.delete(`/v1/partitions/${id}`);
    expect((await api.waitOperation(del.body.operation.id, 60)).status).toBe('succeeded');
  });
});
