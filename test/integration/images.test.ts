/**
 * The image library against a real control plane, PostgreSQL and qemu-img (real: ImageRepository,
 * ImageStore, disk-formats): uploads of files made by `qemu-img create`, hostile uploads, metadata
 * written into the file and re-indexed, search by every criterion with keyset pages, tenancy,
 * If-Match, and the partition policy the image's metadata imposes.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readMetadata, writeMetadata, type ImageMetadata } from '@hyperplane/disk-formats';
import { Api, clusterAdminToken, startInProcess, InProcess } from '../helpers/control-plane';
import { seedNode, sql } from '../helpers/db';
import { ImageRepository } from '../../apps/control-plane/src/images/image.repository';
import { GrpcApi } from '../helpers/grpc-client';
import * as grpc from '@grpc/grpc-js';

jest.setTimeout(120_000);

let cp: InProcess;
let admin: Api;
let a: { api: Api; projectId: string; token: string };
let b: { api: Api; projectId: string; token: string };
let work: string;

const qemuImg = (...args: string[]) => execFileSync('qemu-img', args, { encoding: 'utf8' });

/** A fresh image file made by qemu-img, optionally with metadata written into it. */
async function makeImage(name: string, metadata?: ImageMetadata, format: 'qcow2' | 'vhdx' = 'qcow2', size = '16M'): Promise<string> {
  const path = join(work, `${name}.${format}`);
  qemuImg('create', '-q', '-f', format, path, size);
  if (metadata) await writeMetadata(path, metadata);
  return path;
}

/** POST /v1/images?name= with the file as an octet-stream body. */
async function upload(api: Api, name: string, file: Buffer | string, headers: Record<string, string> = {}) {
  const body = typeof file === 'string' ? readFileSync(file) : file;
  const res = await fetch(`${api.url}/v1/images?name=${encodeURIComponent(name)}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${api.token}`, 'content-type': 'application/octet-stream', ...headers },
    body,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined, headers: res.headers };
}

const put = (api: Api, path: string, body: unknown, headers: Record<string, string> = {}) => api.call('PUT', path, body, headers);
const storeFiles = () => { try { return readdirSync(join(cp.dataDir, 'images')); } catch { return []; } };
const imageRows = async () => Number((await sql(`SELECT count(*) n FROM images`))[0].n);
const names = (r: { body: { items: Array<{ name: string }> } }) => r.body.items.map((i) => i.name).sort();

const meta = (m: Partial<ImageMetadata>): ImageMetadata => ({ schemaVersion: 1, ...m });

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'hp-images-'));
  cp = await startInProcess();
  admin = new Api(cp.url, await clusterAdminToken());
  a = await admin.newProject('img-a');
  b = await admin.newProject('img-b');
});

afterAll(async () => {
  await cp?.close();
  rmSync(work, { recursive: true, force: true });
  // The nodes seeded here have no agent: leave none behind for other test files sharing the database.
  await sql(`DELETE FROM partitions WHERE node_id IN (SELECT id FROM nodes WHERE name LIKE 'img-%')`);
  await sql(`DELETE FROM nodes WHERE name LIKE 'img-%'`);
});

describe('upload', () => {
  it('registers a qcow2 with its embedded metadata, detects the format and stores the file', async () => {
    const file = await makeImage('web', meta({ description: 'Debian web server', tags: ['web', 'debian'], labels: { env: 'prod' }, hardware: { arch: 'x86_64', minVcpus: 1, minMemoryMiB: 512 } }));
    const r = await upload(a.api, 'web', file);
    expect(r.status).toBe(201);
    expect(r.headers.get('location')).toBe(`/v1/images/${r.body.id}`);
    expect(r.body).toMatchObject({ name: 'web', format: 'qcow2', virtualSizeBytes: 16 * 1024 ** 2, state: 'ready', etag: '"1"', expired: false });
    expect(r.body.metadata).toMatchObject({ description: 'Debian web server', tags: ['web', 'debian'] });
    expect(storeFiles()).toContain(`${r.body.id}.qcow2`);
    const got = await a.api.get(`/v1/images/${r.body.id}`);
    expect(got.status).toBe(200);
    expect(got.headers.get('etag')).toBe('"1"');
  });

  it('detects VHDX by its magic, whatever the name says', async () => {
    const file = await makeImage('win', meta({ description: 'vhdx disk' }), 'vhdx');
    const r = await upload(a.api, 'win-disk', file);
    expect(r.status).toBe(201);
    expect(r.body.format).toBe('vhdx');
  });

  it('downloads the file with the metadata inside', async () => {
    const list = await a.api.get('/v1/images?text=debian');
    const id = list.body.items[0].id;
    const res = await fetch(`${cp.url}/v1/images/${id}/file`, { headers: { authorization: `Bearer ${a.token}` } });
    expect(res.status).toBe(200);
    const out = join(work, 'download.qcow2');
    writeFileSync(out, Buffer.from(await res.arrayBuffer()));
    expect((await readMetadata(out))?.description).toBe('Debian web server');
    expect(JSON.parse(qemuImg('info', '-f', 'qcow2', '--output=json', out))['virtual-size']).toBe(16 * 1024 ** 2);
  });

  it.each<[string, () => Promise<Buffer>, RegExp]>([
    ['a qcow2 with a backing file', async () => {
      const base = await makeImage('base');
      const child = join(work, 'child.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', child);
      return readFileSync(child);
    }, /backing-file/],
    ['a truncated qcow2 header', async () => readFileSync(await makeImage('trunc')).subarray(0, 40), /truncated|bad-header/],
    ['a qcow2 whose virtual size is over the limit', async () => readFileSync(await makeImage('huge', undefined, 'qcow2', '5T')), /virtual-size-too-large/],
    ['a qcow2 with an external data file', async () => {
      const p = join(work, 'ext.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', '-o', `data_file=${join(work, 'ext.data')}`, p, '16M');
      return readFileSync(p);
    }, /data-file/],
    ['an empty body', async () => Buffer.alloc(0), /empty/],
  ])('rejects %s with a 400 naming the reason and registers nothing', async (_what, make, reason) => {
    const before = { rows: await imageRows(), files: storeFiles().length };
    const r = await upload(a.api, 'hostile', await make());
    expect(r.status).toBe(400);
    expect(r.headers.get('content-type')).toContain('application/problem+json');
    expect(r.body.errors[0].field).toBe('body');
    expect(r.body.detail).toMatch(reason);
    expect({ rows: await imageRows(), files: storeFiles().length }).toEqual(before);
  });

  it('rejects an image qemu-img check finds corrupt (leaves nothing)', async () => {
    const file = await makeImage('corrupt');
    // Point the L1 table entry 0 at an unaligned offset past the end: a corruption qemu-img reports.
    const buf = readFileSync(file);
    const l1 = Number(buf.readBigUInt64BE(40));
    buf.writeBigUInt64BE(0x8000000000000000n | 0x10000n * 4000n + 0x200n, l1);
    const before = { rows: await imageRows(), files: storeFiles().length };
    const r = await upload(a.api, 'corrupt', buf);
    expect(r.status).toBe(400);
    expect(r.body.errors[0].field).toBe('body');
    expect({ rows: await imageRows(), files: storeFiles().length }).toEqual(before);
  });

  it('validates the name before reading the body, and refuses a taken name with 409', async () => {
    const file = await makeImage('n');
    const bad = await upload(a.api, 'Not_A_Label', file);
    expect(bad.status).toBe(400);
    expect(bad.body.errors[0].field).toBe('name');
    const taken = await upload(a.api, 'web', file);
    expect(taken.status).toBe(409);
    // A JSON body is an import from a node's store (the file is not in the request).
    const json = await a.api.post('/v1/images?name=x', {});
    expect(json.status).toBe(400);
    expect(json.body.errors[0].field).toBe('name');
    const text = await fetch(`${a.api.url}/v1/images?name=x`, { method: 'POST', headers: { authorization: `Bearer ${a.token}`, 'content-type': 'text/plain' }, body: 'x' });
    expect(text.status).toBe(400);
    expect(((await text.json()) as { errors: Array<{ field: string }> }).errors[0]!.field).toBe('body');
  });

  it('refuses a body over HYPERPLANE_MAX_IMAGE_BYTES with 413 and leaves no file', async () => {
    const small = await startInProcess({ HYPERPLANE_MAX_IMAGE_BYTES: String(64 * 1024) });
    try {
      const api = new Api(small.url, a.token);
      const r = await upload(api, 'too-big', Buffer.alloc(256 * 1024));
      expect(r.status).toBe(413);
      expect(readdirSync(join(small.dataDir, 'images'))).toEqual([]);
    } finally {
      await small.close();
    }
  });

  it('removes uploads a crash abandoned (untouched for an hour) when it starts, and keeps fresh ones', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hp-images-sweep-'));
    mkdirSync(join(dir, 'images'));
    writeFileSync(join(dir, 'images', '.upload-old'), 'x');
    writeFileSync(join(dir, 'images', '.upload-new'), 'x');
    const twoHoursAgo = new Date(Date.now() - 2 * 3600_000);
    utimesSync(join(dir, 'images', '.upload-old'), twoHoursAgo, twoHoursAgo);
    const other = await startInProcess({ HYPERPLANE_DATA_DIR: dir });
    try {
      expect(readdirSync(join(dir, 'images'))).toEqual(['.upload-new']);
    } finally {
      await other.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('replays an upload with the same Idempotency-Key', async () => {
    const file = await makeImage('idem');
    const first = await upload(a.api, 'idem', file, { 'idempotency-key': 'idem-1' });
    const again = await upload(a.api, 'idem', file, { 'idempotency-key': 'idem-1' });
    expect(first.status).toBe(201);
    expect(again.body.id).toBe(first.body.id);
    expect(storeFiles().filter((f) => f.startsWith('.upload-'))).toEqual([]);
  });
});

describe('metadata', () => {
  let id: string;
  beforeAll(async () => {
    id = (await upload(a.api, 'edit-me', await makeImage('edit-me', meta({ description: 'before' })))).body.id;
  });

  it('reads the metadata from the file', async () => {
    const r = await a.api.get(`/v1/images/${id}/metadata`);
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ schemaVersion: 1, description: 'before' });
    expect(r.headers.get('etag')).toBe('"1"');
  });

  it('writes a PUT into the image file and re-indexes it; a stale If-Match is 412 and changes nothing', async () => {
    const doc = meta({ description: 'after the edit', tags: ['edited'], labels: { tier: 'gold' }, hardware: { arch: 'x86_64', minVcpus: 2, minMemoryMiB: 4096 } });
    const r = await put(a.api, `/v1/images/${id}/metadata`, doc, { 'if-match': '"1"' });
    expect(r.status).toBe(200);
    expect(r.body.etag).toBe('"2"');
    expect(r.body.metadata.history.at(-1)).toMatchObject({ operation: 'metadata-updated' });
    const row = (await sql(`SELECT storage_path FROM images WHERE id = $1`, [id]))[0];
    expect((await readMetadata(row.storage_path))?.description).toBe('after the edit');
    // qemu-img still sees a clean image of the same size
    expect(() => qemuImg('check', '-q', '-f', 'qcow2', row.storage_path)).not.toThrow();
    expect(JSON.parse(qemuImg('info', '-f', 'qcow2', '--output=json', row.storage_path))['virtual-size']).toBe(16 * 1024 ** 2);
    expect(names(await a.api.get('/v1/images?tag=edited'))).toEqual(['edit-me']);
    expect(names(await a.api.get('/v1/images?text=edit'))).toEqual(['edit-me']);

    const stale = await put(a.api, `/v1/images/${id}/metadata`, meta({ description: 'lost update' }), { 'if-match': '"1"' });
    expect(stale.status).toBe(412);
    expect((await readMetadata(row.storage_path))?.description).toBe('after the edit');
  });

  it('rejects invalid metadata naming the field, changing nothing', async () => {
    const r = await put(a.api, `/v1/images/${id}/metadata`, { schemaVersion: 1, hardware: { arch: 'x86_64', minVcpus: 'two', minMemoryMiB: 1 } });
    expect(r.status).toBe(400);
    expect(r.body.errors.map((e: { field: string }) => e.field).join(' ')).toContain('hardware.minVcpus');
    expect((await a.api.get(`/v1/images/${id}`)).body.etag).toBe('"2"');
  });

  it('keeps images to their project: another project gets 404 everywhere', async () => {
    for (const path of [`/v1/images/${id}`, `/v1/images/${id}/metadata`, `/v1/images/${id}/file`]) {
      expect((await b.api.get(path)).status).toBe(404);
    }
    expect((await put(b.api, `/v1/images/${id}/metadata`, meta({}))).status).toBe(404);
    expect((await b.api.delete(`/v1/images/${id}`)).status).toBe(404);
    expect((await b.api.get('/v1/images')).body.items).toEqual([]);
    expect((await a.api.get('/v1/images/not-a-uuid')).status).toBe(404);
  });
});

describe('search', () => {
  let nodeSmall: string;
  beforeAll(async () => {
    nodeSmall = await seedNode('img-small', { vcpus: 2, memoryMiB: 2048 });
    await sql(`UPDATE nodes SET cpu_flags = '{sse4_2,avx}', machine_types = '{pc,q35}' WHERE id = $1`, [nodeSmall]);
    const docs: Array<[string, Partial<ImageMetadata>]> = [
      ['s-ubuntu', { description: 'Ubuntu server with nginx', tags: ['web', 'ubuntu'], labels: { env: 'prod', team: 'web' }, content: { os: 'ubuntu-24.04' }, hardware: { arch: 'x86_64', minVcpus: 1, minMemoryMiB: 1024 } }],
      ['s-postgres', { description: 'PostgreSQL database appliance', tags: ['db'], labels: { env: 'prod' }, content: { os: 'debian-12' }, hardware: { arch: 'x86_64', minVcpus: 4, minMemoryMiB: 8192, cpuFeatures: ['avx2'] } }],
      ['s-alpine', { description: 'Tiny alpine router', tags: ['net', 'web'], labels: { env: 'dev' }, content: { os: 'alpine' }, hardware: { arch: 'x86_64', minVcpus: 1, minMemoryMiB: 128, cpuFeatures: ['sse4.2'], machineTypes: ['q35'] } }],
      ['s-old', { description: 'Expired ubuntu build', tags: ['web'], expiresAt: '2020-01-01T00:00:00Z', hardware: { arch: 'x86_64', minVcpus: 1, minMemoryMiB: 256 } }],
      ['s-arm', { description: 'ARM build', tags: ['web'], hardware: { arch: 'aarch64', minVcpus: 1, minMemoryMiB: 512, machineTypes: ['virt'] } }],
    ];
    for (const [n, m] of docs) expect((await upload(b.api, n, await makeImage(n, meta(m)))).status).toBe(201);
  });

  it.each<[string, string[]]>([
    ['tag=web', ['s-alpine', 's-arm', 's-ubuntu']],
    ['tag=web&tag=net', ['s-alpine']],
    ['label=env:prod', ['s-postgres', 's-ubuntu']],
    ['label=env:prod&label=team:web', ['s-ubuntu']],
    ['text=ubuntu', ['s-ubuntu']],
    ['text=database', ['s-postgres']],
    ['text=ubuntu&includeExpired=true', ['s-old', 's-ubuntu']],
    ['filter=content.os=debian-12', ['s-postgres']],
    ['filter=hardware.minVcpus=4', ['s-postgres']],
    ['filter=content.os!=alpine', ['s-postgres', 's-ubuntu']],
    ['filter=hardware.minMemoryMiB>=2048', ['s-postgres']],
    ['filter=hardware.minMemoryMiB<1024', ['s-alpine', 's-arm']],
    ['filter=hardware.minMemoryMiB>128&filter=hardware.minMemoryMiB<=1024', ['s-arm', 's-ubuntu']],
    ['filter=hardware.arch=aarch64', ['s-arm']],
    ['compatibleWith=img-small', ['s-alpine', 's-ubuntu']],
    ['tag=web&label=env:dev&text=router', ['s-alpine']],
    ['', ['s-alpine', 's-arm', 's-postgres', 's-ubuntu']],
  ])('GET /v1/images?%s', async (q, expected) => {
    const r = await b.api.get(`/v1/images?${q.replace(/>/g, '%3E').replace(/</g, '%3C')}`);
    expect(r.status).toBe(200);
    expect(names(r)).toEqual(expected);
  });

  it('pages by keyset with pageSize/pageToken', async () => {
    const seen: string[] = [];
    let token = '';
    for (let i = 0; i < 10; i++) {
      const r = await b.api.get(`/v1/images?includeExpired=true&pageSize=2${token ? `&pageToken=${token}` : ''}`);
      expect(r.body.items.length).toBeLessThanOrEqual(2);
      seen.push(...r.body.items.map((x: { name: string }) => x.name));
      token = r.body.nextPageToken;
      if (!token) break;
    }
    expect(seen.sort()).toEqual(['s-alpine', 's-arm', 's-old', 's-postgres', 's-ubuntu']);
  });

  it.each<[string, string]>([
    ['filter=hardware.minMemoryMiB%3E%3Dlots', 'filter'],
    ['filter=no+operator', 'filter'],
    ['filter=a..b=1', 'filter'],
    ['compatibleWith=no-such-node', 'compatibleWith'],
    ['includeExpired=yes', 'includeExpired'],
    ['label=nocolon', 'label'],
    ['pageSize=0', 'pageSize'],
    ['pageToken=garbage', 'pageToken'],
    ['colour=red', 'colour'],
  ])('rejects ?%s naming the field', async (q, field) => {
    const r = await b.api.get(`/v1/images?${q}`);
    expect(r.status).toBe(400);
    expect(r.body.errors[0].field).toBe(field);
  });

  it('uses the GIN and btree indexes for selective searches (EXPLAIN on 50,000 rows, default planner settings)', async () => {
    const p = await admin.newProject('img-explain');
    await sql(
      `INSERT INTO images (id, project_id, name, format, size_bytes, virtual_size_bytes, storage_path, metadata)
       SELECT gen_random_uuid(), $1, 'x-' || i, 'qcow2', 1, 1, '/nonexistent',
         jsonb_build_object('schemaVersion', 1, 'description', 'image number ' || i || CASE WHEN i % 5000 = 0 THEN ' rare-word' ELSE '' END,
           'tags', jsonb_build_array('t' || (i % 5000)), 'labels', jsonb_build_object('shard', (i % 5000)::text),
           'content', jsonb_build_object('os', 'os-' || (i % 5000)),
           'hardware', jsonb_build_object('arch', 'x86_64', 'minVcpus', 1 + i % 64, 'minMemoryMiB', 128 * (1 + i % 2000)))
       FROM generate_series(1, 50000) i`,
      [p.projectId],
    );
    // A histogram of 1,000 entries (see the migration): at 100, one entry that chanced to match
    // made the planner skip the GIN index in about 2 of 100 ANALYZEs.
    expect((await sql<{ t: number }>(`SELECT attstattarget AS t FROM pg_attribute WHERE attrelid = 'images'::regclass AND attname = 'metadata'`))[0]!.t).toBe(1000);
    await sql('ANALYZE images');
    const page = { pageSize: 50, afterId: null };
    const cases: Array<[Parameters<typeof ImageRepository.searchSql>[2], RegExp]> = [
      [{ tags: ['t7'] }, /images_metadata/],
      [{ labels: { shard: '42' } }, /images_metadata/],
      [{ text: 'rare-word' }, /images_search/],
      [{ filters: [{ path: ['content', 'os'], op: '=', value: 'os-3' }] }, /images_metadata/],
      [{ filters: [{ path: ['hardware', 'minMemoryMiB'], op: '>=', value: '255000' }] }, /images_min_memory/],
    ];
    for (const [s, index] of cases) {
      const { text, params } = ImageRepository.searchSql(p.projectId, page, s);
      const plan = (await sql(`EXPLAIN ${text.replace(/\$(\d+)/g, (_m, n) => literal(params[Number(n) - 1]))}`)).map((x) => x['QUERY PLAN']).join('\n');
      expect(plan).toMatch(index);
    }
    await sql(`DELETE FROM images WHERE project_id = $1`, [p.projectId]);
  });

  it('deletes an image (204), then it is gone from search and the store', async () => {
    const id = (await b.api.get('/v1/images?text=router')).body.items[0].id;
    const stale = await b.api.call('DELETE', `/v1/images/${id}`, undefined, { 'if-match': '"9"' });
    expect(stale.status).toBe(412);
    expect((await b.api.delete(`/v1/images/${id}`)).status).toBe(204);
    expect((await b.api.get(`/v1/images/${id}`)).status).toBe(404);
    expect(storeFiles().some((f) => f.startsWith(id))).toBe(false);
  });
});

describe('policy on partition create', () => {
  let pol: { api: Api; projectId: string; token: string };
  let imageId: string;
  const create = (name: string, memoryMiB = 1024, image = 'sample') => pol.api.post('/v1/partitions', { name, vcpus: 1, memoryMiB, image });
  const partitions = async () => Number((await sql(`SELECT count(*) n FROM partitions WHERE project_id = $1`, [pol.projectId]))[0].n);

  beforeAll(async () => {
    pol = await admin.newProject('img-pol');
    await seedNode('img-pol-node');
    // A library image named like the node-reported `sample`, with rules in its metadata.
    const r = await upload(pol.api, 'sample', await makeImage('pol-sample', meta({
      hardware: { arch: 'x86_64', minVcpus: 1, minMemoryMiB: 1024 },
      usagePolicy: { maxConcurrentPartitions: 1 },
    })));
    expect(r.status).toBe(201);
    imageId = r.body.id;
  });

  it('passes the hardware requirements to the scheduler: too little memory is a 422 naming the image rule', async () => {
    const r = await create('too-small', 128);
    expect(r.status).toBe(422);
    expect(r.body.detail).toMatch(/image needs at least 1024 MiB of memory/);
    // other test files' nodes may be in the same database (npm test runs every project on one), with their own reasons
    expect(r.body.reasons.map((x: { reason: string }) => x.reason)).toContain('image-hardware');
    expect(await partitions()).toBe(0);
  });

  it('allows maxConcurrentPartitions partitions, then refuses naming the rule', async () => {
    expect((await create('first')).status).toBe(202);
    const r = await create('second');
    expect(r.status).toBe(422);
    expect(r.body.detail).toMatch(/at most 1 concurrent partitions.*rule usagePolicy.maxConcurrentPartitions/);
    const batch = await pol.api.post('/v1/partitions', { name: 'many', vcpus: 1, memoryMiB: 1024, image: 'sample', count: 2 });
    expect(batch.status).toBe(422);
    expect(await partitions()).toBe(1);
  });

  it('refuses to delete an image partitions use', async () => {
    const r = await pol.api.delete(`/v1/images/${imageId}`);
    expect(r.status).toBe(409);
    expect(r.body.detail).toMatch(/1 partition uses it/);
  });

  it('refuses an expired image with 409 naming expiresAt', async () => {
    expect((await put(pol.api, `/v1/images/${imageId}/metadata`, meta({ expiresAt: '2021-01-01T00:00:00Z' }))).status).toBe(200);
    const r = await create('late');
    expect(r.status).toBe(409);
    expect(r.body.detail).toMatch(/image sample expired at 2021-01-01T00:00:00Z \(rule expiresAt\)/);
  });

  it('refuses a project the usage policy does not allow with 409 naming allowedProjects', async () => {
    expect((await put(pol.api, `/v1/images/${imageId}/metadata`, meta({ usagePolicy: { allowedProjects: ['someone-else'] } }))).status).toBe(200);
    const r = await create('not-mine');
    expect(r.status).toBe(409);
    expect(r.body.detail).toMatch(/may not be used by project img-pol \(rule usagePolicy.allowedProjects/);
    expect((await put(pol.api, `/v1/images/${imageId}/metadata`, meta({ usagePolicy: { allowedProjects: ['img-pol'] } }))).status).toBe(200);
    expect((await create('mine')).status).toBe(202);
  });

  it('keeps node-reported images without a library entry working, and places library images on nodes that lack them (they fetch them)', async () => {
    const other = await admin.newProject('img-pol-2');
    const plain = await other.api.post('/v1/partitions', { name: 'plain', vcpus: 1, memoryMiB: 128, image: 'sample' });
    expect(plain.status).toBe(202);
    expect((await sql(`SELECT image_id FROM partitions WHERE id = $1`, [plain.body.partition.id]))[0].image_id).toBeNull();
    const up = await upload(pol.api, 'nowhere', await makeImage('nowhere'));
    expect(up.status).toBe(201);
    const r = await create('nowhere-1', 1024, 'nowhere');
    expect(r.status).toBe(202);
    expect((await sql(`SELECT image_id FROM partitions WHERE id = $1`, [r.body.partition.id]))[0].image_id).toBe(up.body.id);
    const missing = await create('missing-1', 1024, 'no-such-image');
    expect(missing.status).toBe(400);
    expect(missing.body.detail).toMatch(/image 'no-such-image' does not exist/);
  });
});

describe('gRPC ImageService', () => {
  let g: GrpcApi;
  let gb: GrpcApi;
  beforeAll(() => {
    g = new GrpcApi(cp.grpcAddress, a.token);
    gb = new GrpcApi(cp.grpcAddress, b.token);
  });
  afterAll(() => {
    g.close();
    gb.close();
  });

  /** UploadImage: the name first, then the file in 64 KiB messages. */
  function grpcUpload(api: GrpcApi, name: string, file: Buffer): Promise<any> {
    return new Promise((resolve, reject) => {
      const client = api.clients.ImageService as unknown as { UploadImage: Function };
      const call = client.UploadImage.call(client, api.metadata(), (err: grpc.ServiceError | null, res: unknown) => (err ? reject(err) : resolve(res)));
      call.write({ name });
      for (let i = 0; i < file.length; i += 65536) call.write({ data: file.subarray(i, i + 65536) });
      call.end();
    });
  }

  it('uploads, searches, reads and edits metadata with the same rules as REST', async () => {
    const img = await grpcUpload(g, 'grpc-img', readFileSync(await makeImage('grpc-img', meta({ description: 'uploaded over grpc', tags: ['grpc'] }))));
    expect(img).toMatchObject({ name: 'grpc-img', format: 'qcow2', etag: '"1"' });
    expect(JSON.parse(img.metadataJson).tags).toEqual(['grpc']);
    const found = await g.call('ImageService', 'SearchImages', { tag: ['grpc'], filter: ['content.os!=x'] });
    expect(found.items ?? []).toEqual([]); // proto3: an empty repeated field is absent
    const byTag = await g.call('ImageService', 'SearchImages', { tag: ['grpc'], text: 'grpc' });
    expect(byTag.items.map((i: { name: string }) => i.name)).toEqual(['grpc-img']);
    const md = await g.call('ImageService', 'GetImageMetadata', { id: img.id });
    expect(JSON.parse(md.metadataJson).description).toBe('uploaded over grpc');
    const updated = await g.call('ImageService', 'UpdateImageMetadata', { id: img.id, etag: '"1"', metadataJson: JSON.stringify(meta({ description: 'edited over grpc' })) });
    expect(updated.etag).toBe('"2"');
    expect((await g.fail('ImageService', 'UpdateImageMetadata', { id: img.id, etag: '"1"', metadataJson: '{"schemaVersion":1}' })).code).toBe(grpc.status.ABORTED);
    expect((await g.fail('ImageService', 'UpdateImageMetadata', { id: img.id, metadataJson: '{not json' })).code).toBe(grpc.status.INVALID_ARGUMENT);
    expect((await g.fail('ImageService', 'SearchImages', { filter: ['hardware.minVcpus>=many'] })).details).toMatch(/filter/);
    expect((await gb.fail('ImageService', 'GetImage', { id: img.id })).code).toBe(grpc.status.NOT_FOUND);

    const chunks: Buffer[] = [];
    await new Promise<void>((resolve, reject) => {
      const client = g.clients.ImageService as unknown as { DownloadImage: Function };
      const stream = client.DownloadImage.call(client, { id: img.id }, g.metadata());
      stream.on('data', (c: { data: Buffer }) => chunks.push(c.data));
      stream.on('end', resolve);
      stream.on('error', reject);
    });
    const out = join(work, 'grpc-download.qcow2');
    writeFileSync(out, Buffer.concat(chunks));
    expect((await readMetadata(out))?.description).toBe('edited over grpc');
    await g.call('ImageService', 'DeleteImage', { id: img.id });
    expect((await g.fail('ImageService', 'GetImage', { id: img.id })).code).toBe(grpc.status.NOT_FOUND);
  });

  it('rejects a hostile upload with INVALID_ARGUMENT and registers nothing', async () => {
    const before = await imageRows();
    const e = await grpcUpload(g, 'grpc-bad', readFileSync(await makeImage('grpc-bad')).subarray(0, 40)).catch((x) => x);
    expect(e.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(await imageRows()).toBe(before);
  });
});

/** An SQL literal for EXPLAIN (parameters inlined so the planner sees the values). */
function literal(v: unknown): string {
  if (v === null || v === undefined) return 'NULL';
  if (typeof v === 'number') return String(v);
  if (v instanceof Date) return `'${v.toISOString()}'::timestamptz`;
  if (Array.isArray(v)) return `ARRAY[${v.map(literal).join(',')}]::text[]`;
  return `'${String(v).replace(/'/g, "''")}'`;
}
