import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MetadataInvalidError, MetadataUnsupportedError } from './errors';
import { inspectImage, readMetadata, readMetadataRecord, removeMetadata, writeMetadata } from './image';
import type { ImageMetadata } from './metadata-schema';
import { createImage, makeTempDir } from './qemu-tools';

let tmp: Awaited<ReturnType<typeof makeTempDir>>;
beforeAll(async () => {
  tmp = await makeTempDir('hp-image');
});
afterAll(async () => tmp.cleanup());

describe('raw images', () => {
  it.each([
    ['read', (p: string) => readMetadata(p)],
    ['write', (p: string) => writeMetadata(p, { schemaVersion: 1 })],
    ['remove', (p: string) => removeMetadata(p)],
  ])('say clearly that they cannot hold metadata (%s)', async (_op, op) => {
    const p = join(tmp.dir, `disk-${_op}.raw`);
    await createImage(p, 'raw', '1M');
    const before = await readFile(p);
    await expect(op(p)).rejects.toEqual(new MetadataUnsupportedError('raw images cannot hold metadata; convert to qcow2 or vhdx'));
    expect((await readFile(p)).equals(before)).toBe(true);
  });

  it('can be refused at intake', async () => {
    const p = join(tmp.dir, 'refused.raw');
    await createImage(p, 'raw', '1M');
    await expect(inspectImage(p, { allowRaw: false })).rejects.toMatchObject({ reason: 'unsupported-format' });
  });
});

describe.each(['qcow2', 'vhdx'] as const)('%s through the path API', (format) => {
  it('starts without metadata, stores it, reports it at intake, and removes it', async () => {
    const p = join(tmp.dir, `api.${format}`);
    await createImage(p, format, '16M');
    expect(await readMetadata(p)).toBeNull();
    expect(await removeMetadata(p)).toBe(false);
    const m: ImageMetadata = { schemaVersion: 1, description: 'api', usagePolicy: { allowedProjects: ['p1'], maxConcurrentPartitions: 2, licence: 'MIT' } };
    expect(await writeMetadata(p, m)).toEqual({ format, encoding: 'json', storedBytes: expect.any(Number), writtenRanges: expect.any(Array) });
    expect(await readMetadataRecord(p)).toMatchObject({ format, metadata: m, inheritable: true });
    expect(await inspectImage(p, { expectedFormat: format })).toMatchObject({ format, metadata: m, metadataSupported: true, virtualSizeBytes: 16 * 1024 * 1024 });
    expect(await removeMetadata(p)).toBe(true);
    expect(await readMetadata(p)).toBeNull();
  });

  it('refuses invalid metadata with every field named, before touching the file', async () => {
    const p = join(tmp.dir, `invalid.${format}`);
    await createImage(p, format, '16M');
    const before = await readFile(p);
    const err = await writeMetadata(p, { schemaVersion: 1, hardware: { arch: 'x86_64', minVcpus: 1, minMemoryMiB: 0 }, tags: [''] } as ImageMetadata).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MetadataInvalidError);
    expect((err as MetadataInvalidError).errors).toEqual([
      { field: 'hardware.minMemoryMiB', message: 'hardware.minMemoryMiB must be a positive integer (at most 67108864)' },
      { field: 'tags[0]', message: 'tags[0] must not be empty' },
    ]);
    expect((await readFile(p)).equals(before)).toBe(true);
  });
});
