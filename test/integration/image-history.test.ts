/**
 * The operation history inside library image files under concurrency (real: PostgreSQL, Redis,
 * the control plane, a hollow worker process speaking the agent protocol, disk-formats on real
 * qcow2 files): many partitions created at once from one library image each append their entry,
 * none is lost, the file and the index agree, the digest follows every write; deletes append too;
 * a metadata PUT keeps the history (it is the control plane's record) and adds to it.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { digestFile, readMetadata } from '@hyperplane/disk-formats';
import { Api, clusterAdminToken, startInProcess, InProcess, waitUntil } from '../helpers/control-plane';
import { sql } from '../helpers/db';
import { spawnWorker, WorkerProcess } from '../helpers/worker';

jest.setTimeout(120_000);

const dir = mkdtempSync(join(tmpdir(), 'hp-img-history-'));
let cp: InProcess;
let worker: WorkerProcess;
let api: Api;
let image: { id: string; etag: string };
const N = 12;

beforeAll(async () => {
  cp = await startInProcess();
  worker = spawnWorker({ name: 'hist-hollow', address: '127.0.0.42', controlPlane: cp.grpcAddress, dataDir: join(dir, 'w'), driver: 'simulated', extra: ['--sim-start-ms', '20'] });
  const admin = new Api(cp.url, await clusterAdminToken());
  await waitUntil(async () => (await admin.get('/v1/nodes?state=ready')).body.items?.some((n: any) => n.name === 'hist-hollow'), 30_000, 'hollow node');
  const p = await admin.newProject('img-history', 'operator');
  api = p.api;
  const file = join(dir, 'base.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', file, '16M']);
  const res = await fetch(`${cp.url}/v1/images?name=base`, { method: 'POST', headers: { authorization: `Bearer ${p.token}`, 'content-type': 'application/octet-stream' }, body: readFileSync(file) });
  expect(res.status).toBe(201);
  image = (await res.json()) as { id: string; etag: string };
});

afterAll(async () => {
  await worker?.stop();
  await sql(`UPDATE nodes SET status = 'unreachable', cordoned = true WHERE name = 'hist-hollow'`);
  await cp?.close();
  rmSync(dir, { recursive: true, force: true });
});

const fileOf = async () => (await sql(`SELECT storage_path FROM images WHERE id = $1`, [image.id]))[0].storage_path as string;

it(`records ${N} partitions created at once from one image, losing none, file and index agreeing`, async () => {
  const c = await api.post('/v1/partitions', { name: 'h', count: N, vcpus: 1, memoryMiB: 64, image: 'base', placement: { node: 'hist-hollow' } });
  expect(c.status).toBe(202);
  for (const o of c.body.operations) expect((await api.waitOperation(o.id, 60)).status).toBe('succeeded');
  const ids = c.body.partitions.map((p: any) => p.id).sort();
  const got = (await api.get(`/v1/images/${image.id}`)).body;
  const created = got.metadata.history.filter((h: any) => h.operation === 'partition-created');
  expect(created.map((h: any) => h.partition).sort()).toEqual(ids);
  expect(created.every((h: any) => h.node === 'hist-hollow' && h.by === 'control-plane' && typeof h.details.operationId === 'string')).toBe(true);
  expect(got.metadata.history[0]).toMatchObject({ operation: 'created', details: { how: 'upload' } });
  const file = await fileOf();
  expect(await readMetadata(file)).toEqual(got.metadata);
  expect(Number(got.etag.replace(/"/g, ''))).toBe(Number(image.etag.replace(/"/g, '')) + N);
  expect(got.digest).toBe((await digestFile(file)).digest);
  expect(() => execFileSync('qemu-img', ['check', '-q', '-f', 'qcow2', file])).not.toThrow();

  for (const id of ids) {
    const del = await api.delete(`/v1/partitions/${id}`);
    expect(del.status).toBe(202);
  }
  await waitUntil(async () => ((await api.get(`/v1/images/${image.id}`)).body.metadata.history.filter((h: any) => h.operation === 'partition-deleted').length === N), 60_000, 'deletes recorded');
  const after = await readMetadata(await fileOf());
  expect(after!.history!.filter((h) => h.operation === 'partition-deleted').map((h) => h.partition).sort()).toEqual(ids);
});

it('keeps the history through a metadata PUT (a client cannot rewrite it) and adds the edit to it', async () => {
  const before = (await api.get(`/v1/images/${image.id}`)).body;
  const r = await api.call('PUT', `/v1/images/${image.id}/metadata`, { schemaVersion: 1, description: 'edited', history: [] }, { 'if-match': before.etag });
  expect(r.status).toBe(200);
  expect(r.body.metadata.history.slice(0, -1)).toEqual(before.metadata.history);
  expect(r.body.metadata.history.at(-1)).toMatchObject({ operation: 'metadata-updated' });
  expect(r.body.digest).toBe((await digestFile(await fileOf())).digest);
});
