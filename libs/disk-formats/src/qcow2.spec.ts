import fc from 'fast-check';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MetadataTooLargeError } from './errors';
import { inspectImage, readMetadataRecord, readMetadataRecordIo, removeMetadata, removeMetadataIo, writeMetadata, writeMetadataIo } from './image';
import { MemoryImageIo } from './image-io';
import type { ImageMetadata } from './metadata-schema';
import { QCOW2_PADDING_EXT, parseQcow2 } from './qcow2';
import { checkImage, createImage, guestHasPattern, imageInfo, makeTempDir, mustRun, sameGuestData } from './qemu-tools';
import { metadataArb } from './testing/arbitraries';
import { type BaseImage, copyOf, makeBaseImage } from './testing/images';

let tmp: Awaited<ReturnType<typeof makeTempDir>>;
let base: BaseImage;
let n = 0;
const victim = () => copyOf(base, tmp.dir, `v${n++}.qcow2`);

beforeAll(async () => {
  tmp = await makeTempDir('hp-qcow2');
  base = await makeBaseImage(tmp.dir, 'qcow2');
});
afterAll(async () => tmp.cleanup());

const doc = (description: string, extra: Partial<ImageMetadata> = {}): ImageMetadata => ({ schemaVersion: 1, description, ...extra });
/** Incompressible bytes from a fixed-seed generator (so DEFLATE cannot hide the size). */
function noise(size: number, seed = 42): Buffer {
  const out = Buffer.alloc(size);
  let x = seed;
  for (let i = 0; i < size; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}
const bulky = (bytes: number): ImageMetadata => ({ schemaVersion: 1, configFiles: [{ path: '/blob', content: 'x'.repeat(bytes) }] });

describe('qcow2 header parsing', () => {
  it.each([
    ['version 3 (default)', undefined, 3],
    ['version 2 (compat=0.10)', 'compat=0.10', 2],
  ])('reads what qemu-img reports for %s', async (_name, options, version) => {
    const p = join(tmp.dir, `parse-${version}.qcow2`);
    await createImage(p, 'qcow2', '100M', options);
    const h = await parseQcow2(new MemoryImageIo(await readFile(p)));
    const info = await imageInfo(p, 'qcow2');
    expect(h.version).toBe(version);
    expect(h.virtualSize).toBe(info['virtual-size']);
    expect(h.clusterSize).toBe(info['cluster-size']);
    expect(h.firstUsedOffset).toBe(65536);
    expect(h.metadataExtension).toBeUndefined();
  });
});

describe('qcow2 metadata, in memory (many cases, no QEMU)', () => {
  it('reads back whatever was written last, and touches nothing outside our extension area', async () => {
    const original = await parseQcow2(new MemoryImageIo(base.bytes));
    const areaStart = original.endMarkerOffset!;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.oneof({ weight: 4, arbitrary: fc.tuple(metadataArb('medium'), fc.boolean()) }, { weight: 1, arbitrary: fc.constant(null) }), { minLength: 1, maxLength: 6 }),
        async (steps) => {
          const io = new MemoryImageIo(Buffer.from(base.bytes));
          let expected: { metadata: ImageMetadata; inheritable: boolean } | null = null;
          for (const step of steps) {
            try {
              if (step === null) {
                await removeMetadataIo(io);
                expected = null;
              } else {
                await writeMetadataIo(io, step[0], { inheritable: step[1] });
                expected = { metadata: step[0], inheritable: step[1] };
              }
            } catch (e) {
              // A full header cluster is the only acceptable failure, and it must change nothing.
              expect(e).toBeInstanceOf(MetadataTooLargeError);
            }
            const rec = await readMetadataRecordIo(io);
            expect(rec === null ? null : { metadata: rec.metadata, inheritable: rec.inheritable }).toEqual(expected);
          }
          expect(io.bytes.subarray(0, areaStart).equals(base.bytes.subarray(0, areaStart))).toBe(true);
          expect(io.bytes.subarray(65536).equals(base.bytes.subarray(65536))).toBe(true);
          expect(io.bytes.length).toBe(base.bytes.length);
        },
      ),
      { numRuns: 120 },
    );
  });
});

describe('qcow2 metadata, checked by QEMU', () => {
  it('any metadata written is read back equal; qemu-img check/info accept the file; guest data is unchanged', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(metadataArb(), { minLength: 1, maxLength: 3 }), async (docs) => {
        const p = await victim();
        for (const m of docs) await writeMetadata(p, m);
        expect((await readMetadataRecord(p))?.metadata).toEqual(docs.at(-1));
        const check = await checkImage(p, 'qcow2');
        expect(check.code).toBe(0);
        const info = await imageInfo(p, 'qcow2');
        expect(info).toMatchObject({ format: 'qcow2', 'virtual-size': 64 * 1024 * 1024, 'cluster-size': 65536 });
        expect(await sameGuestData(base.path, p, 'qcow2')).toBe(true);
      }),
      { numRuns: 5 },
    );
  });

  it('survives QEMU rewriting the header (snapshot, resize, amend) and guest writes, and can be rewritten after', async () => {
    const p = await victim();
    const first = doc('before QEMU', { tags: ['a'] });
    await writeMetadata(p, first);
    await writeMetadata(p, doc('second copy, so a padding extension exists'));
    await mustRun('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0xcd 2M 1M', p]);
    await mustRun('qemu-img', ['snapshot', '-c', 'snap1', p]);
    await mustRun('qemu-img', ['resize', '-f', 'qcow2', p, '128M']);
    await mustRun('qemu-img', ['amend', '-f', 'qcow2', '-o', 'lazy_refcounts=on', p]);
    expect((await readMetadataRecord(p))?.metadata).toEqual(doc('second copy, so a padding extension exists'));
    // QEMU keeps unknown extensions in reverse order: our padding now follows our metadata.
    const h = await parseQcow2(new MemoryImageIo(await readFile(p)));
    expect(h.extensions.map((e) => e.type).at(-1)).toBe(QCOW2_PADDING_EXT);
    const last = doc('after QEMU', { labels: { stage: 'three' } });
    await writeMetadata(p, last);
    expect((await readMetadataRecord(p))?.metadata).toEqual(last);
    expect((await checkImage(p, 'qcow2')).code).toBe(0);
    expect(await imageInfo(p, 'qcow2')).toMatchObject({ 'virtual-size': 128 * 1024 * 1024 });
    expect(await guestHasPattern(p, 'qcow2', 0xab, '0', '1M')).toBe(true);
    expect(await guestHasPattern(p, 'qcow2', 0xcd, '2M', '1M')).toBe(true);
    expect(await removeMetadata(p)).toBe(true);
    expect(await readMetadataRecord(p)).toBeNull();
    expect((await checkImage(p, 'qcow2')).code).toBe(0);
  });

  it('works on version 2 images', async () => {
    const p = join(tmp.dir, 'v2.qcow2');
    await createImage(p, 'qcow2', '32M', 'compat=0.10');
    await writeMetadata(p, doc('v2'));
    await writeMetadata(p, doc('v2 again'));
    expect((await readMetadataRecord(p))?.metadata).toEqual(doc('v2 again'));
    expect((await checkImage(p, 'qcow2')).code).toBe(0);
    expect(await imageInfo(p, 'qcow2')).toMatchObject({ format: 'qcow2', 'format-specific': { data: { compat: '0.10' } } });
  });

  it('writes into an overlay with a backing file without disturbing the backing file name', async () => {
    const backing = join(tmp.dir, 'backing.raw');
    const overlay = join(tmp.dir, 'overlay.qcow2');
    await createImage(backing, 'raw', '16M');
    await mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', backing, '-F', 'raw', overlay]);
    await writeMetadata(overlay, bulky(20_000));
    await writeMetadata(overlay, doc('overlay'));
    expect((await readMetadataRecord(overlay))?.metadata).toEqual(doc('overlay'));
    expect(await imageInfo(overlay, 'qcow2')).toMatchObject({ 'backing-filename': backing, 'backing-filename-format': 'raw' });
    expect((await checkImage(overlay, 'qcow2')).code).toBe(0);
    await expect(inspectImage(overlay)).rejects.toMatchObject({ reason: 'backing-file', message: `qcow2 header: backing file '${backing}' is not allowed` });
    expect(await inspectImage(overlay, { allowBackingFile: true })).toMatchObject({ backingFile: backing, metadata: doc('overlay') });
  });

  it('refuses with a clear error when the header cluster is full, and then the file is unchanged', async () => {
    const p = join(tmp.dir, 'small-cluster.qcow2');
    await createImage(p, 'qcow2', '16M', 'cluster_size=4096');
    let size = 200;
    let lastGood: ImageMetadata | null = null;
    let error: unknown;
    for (; size < 10_000; size += 200) {
      const m: ImageMetadata = { schemaVersion: 1, configFiles: [{ path: '/r', content: noise(size).toString('base64'), encoding: 'base64' }] };
      const before = await readFile(p);
      try {
        await writeMetadata(p, m);
        lastGood = m;
      } catch (e) {
        error = e;
        expect((await readFile(p)).equals(before)).toBe(true);
        break;
      }
    }
    expect(error).toBeInstanceOf(MetadataTooLargeError);
    expect((error as Error).message).toMatch(/^qcow2 header cluster \(cluster size 4096\) has room for \d+ bytes of metadata .* this metadata needs \d+ bytes/);
    expect(lastGood).not.toBeNull();
    expect((await readMetadataRecord(p))?.metadata).toEqual(lastGood);
    expect((await checkImage(p, 'qcow2')).code).toBe(0);
  });

  it('fits small metadata even in a 512-byte cluster, and refuses more', async () => {
    const p = join(tmp.dir, 'tiny-cluster.qcow2');
    await createImage(p, 'qcow2', '16M', 'cluster_size=512');
    const capacity = (await inspectImage(p)).metadataCapacityBytes;
    expect(capacity).toBeGreaterThan(100);
    expect(capacity).toBeLessThan(512);
    await writeMetadata(p, doc('tiny'));
    await writeMetadata(p, doc('tiny 2'));
    expect((await readMetadataRecord(p))?.metadata).toEqual(doc('tiny 2'));
    expect((await checkImage(p, 'qcow2')).code).toBe(0);
    await expect(writeMetadata(p, { schemaVersion: 1, description: noise(400).toString('base64') })).rejects.toBeInstanceOf(MetadataTooLargeError);
  });

  it('stores large metadata plainly in 2 MiB clusters, deflated in 64 KiB ones', async () => {
    const big = join(tmp.dir, 'big-cluster.qcow2');
    await createImage(big, 'qcow2', '16M', 'cluster_size=2M');
    const m = bulky(400_000);
    expect(await writeMetadata(big, m)).toMatchObject({ encoding: 'json' });
    expect((await readMetadataRecord(big))?.metadata).toEqual(m);
    const p = await victim();
    expect(await writeMetadata(p, m)).toMatchObject({ encoding: 'deflate' });
    expect((await readMetadataRecord(p))?.metadata).toEqual(m);
    expect((await checkImage(p, 'qcow2')).code).toBe(0);
  });

  it('refuses to write into an image marked corrupt', async () => {
    const bytes = Buffer.from(base.bytes);
    bytes[79] |= 2; // incompatible_features bit 1
    const p = join(tmp.dir, 'corrupt.qcow2');
    await writeFile(p, bytes);
    await expect(writeMetadata(p, doc('x'))).rejects.toMatchObject({ reason: 'corrupt' });
  });
});
