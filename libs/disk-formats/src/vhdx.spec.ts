import fc from 'fast-check';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { MetadataTooLargeError } from './errors';
import {
  type MetadataRecord,
  inheritOnFork,
  inspectImage,
  inspectImageIo,
  readMetadataRecord,
  readMetadataRecordIo,
  removeMetadataIo,
  resolveOnMerge,
  writeMetadata,
  writeMetadataIo,
} from './image';
import { MemoryImageIo } from './image-io';
import type { ImageMetadata } from './metadata-schema';
import { checkImage, guestHasPattern, imageInfo, makeTempDir, mustRun, runTool, sameGuestData } from './qemu-tools';
import { metadataArb } from './testing/arbitraries';
import { type BaseImage, copyOf, makeBaseImage } from './testing/images';
import { entryIndex, getEntry, makeDifferencing } from './testing/vhdx-edit';
import { VHDX_GUIDS, parseVhdx } from './vhdx';

let tmp: Awaited<ReturnType<typeof makeTempDir>>;
let base: BaseImage;
let n = 0;
const victim = () => copyOf(base, tmp.dir, `v${n++}.vhdx`);
const doc = (description: string, extra: Partial<ImageMetadata> = {}): ImageMetadata => ({ schemaVersion: 1, description, ...extra });

beforeAll(async () => {
  tmp = await makeTempDir('hp-vhdx');
  base = await makeBaseImage(tmp.dir, 'vhdx');
});
afterAll(async () => tmp.cleanup());

/** Byte ranges a metadata write may touch: both headers, the log, the metadata region. */
async function mutableRanges(bytes: Buffer): Promise<Array<[number, number]>> {
  const img = await parseVhdx(new MemoryImageIo(bytes));
  return [
    [64 * 1024, 68 * 1024],
    [128 * 1024, 132 * 1024],
    [img.current.logOffset, img.current.logOffset + img.current.logLength],
    [img.metadataRegion.offset, img.metadataRegion.offset + img.metadataRegion.length],
  ];
}

function sameOutside(a: Buffer, b: Buffer, ranges: Array<[number, number]>): boolean {
  if (a.length !== b.length) return false;
  const sorted = [...ranges].sort((x, y) => x[0] - y[0]);
  let cursor = 0;
  for (const [s, e] of [...sorted, [a.length, a.length] as [number, number]]) {
    if (!a.subarray(cursor, s).equals(b.subarray(cursor, s))) return false;
    cursor = Math.max(cursor, e);
  }
  return true;
}

describe('VHDX parsing', () => {
  it('reads what qemu-img reports', async () => {
    const img = await parseVhdx(new MemoryImageIo(base.bytes));
    const info = await imageInfo(base.path, 'vhdx');
    expect(img.virtualSize).toBe(info['virtual-size']);
    expect(img.blockSize).toBe(info['cluster-size']);
    expect(img.pendingLog).toBeNull();
    expect(img.metadataEntry).toBeUndefined();
    expect(img.entries.filter((e) => !e.isUser).map((e) => e.itemId).sort()).toEqual(
      [VHDX_GUIDS.fileParameters, VHDX_GUIDS.virtualDiskSize, VHDX_GUIDS.page83Data, VHDX_GUIDS.logicalSectorSize, VHDX_GUIDS.physicalSectorSize].sort(),
    );
  });
});

describe('VHDX metadata, in memory (many cases, no QEMU)', () => {
  it('reads back whatever was written last, leaves the log empty, and touches only headers, log and metadata region', async () => {
    const ranges = await mutableRanges(base.bytes);
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.oneof({ weight: 4, arbitrary: fc.tuple(metadataArb('medium'), fc.boolean()) }, { weight: 1, arbitrary: fc.constant(null) }), { minLength: 1, maxLength: 5 }),
        async (steps) => {
          const io = new MemoryImageIo(Buffer.from(base.bytes));
          let expected: { metadata: ImageMetadata; inheritable: boolean } | null = null;
          for (const step of steps) {
            if (step === null) {
              await removeMetadataIo(io);
              expected = null;
            } else {
              await writeMetadataIo(io, step[0], { inheritable: step[1] });
              expected = { metadata: step[0], inheritable: step[1] };
            }
            const rec = await readMetadataRecordIo(io);
            expect(rec === null ? null : { metadata: rec.metadata, inheritable: rec.inheritable }).toEqual(expected);
            const img = await parseVhdx(io);
            expect(img.pendingLog).toBeNull();
            expect(img.current.logGuid.equals(Buffer.alloc(16))).toBe(true);
            expect(img.other?.sequence).toBe(img.current.sequence - 1n);
          }
          expect(sameOutside(io.bytes, base.bytes, ranges)).toBe(true);
        },
      ),
      { numRuns: 40 },
    );
  });
});

describe('VHDX metadata, checked by QEMU', () => {
  it('any metadata written is read back equal; qemu-img check/info accept the file; guest data is unchanged', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(metadataArb(), { minLength: 1, maxLength: 3 }), async (docs) => {
        const p = await victim();
        for (const m of docs) await writeMetadata(p, m);
        expect((await readMetadataRecord(p))?.metadata).toEqual(docs.at(-1));
        expect((await checkImage(p, 'vhdx')).code).toBe(0);
        expect(await imageInfo(p, 'vhdx')).toMatchObject({ format: 'vhdx', 'virtual-size': 64 * 1024 * 1024, 'dirty-flag': false });
        expect(await sameGuestData(base.path, p, 'vhdx')).toBe(true);
      }),
      { numRuns: 4 },
    );
  });

  it('keeps the item through QEMU guest writes (which go through the VHDX log), and can be rewritten after', async () => {
    const p = await victim();
    await writeMetadata(p, doc('before guest writes'));
    await mustRun('qemu-io', ['-f', 'vhdx', '-c', 'write -P 0xcd 40M 2M', p]);
    expect((await readMetadataRecord(p))?.metadata).toEqual(doc('before guest writes'));
    await writeMetadata(p, doc('after guest writes'));
    expect((await readMetadataRecord(p))?.metadata).toEqual(doc('after guest writes'));
    expect((await checkImage(p, 'vhdx')).code).toBe(0);
    expect(await guestHasPattern(p, 'vhdx', 0xab, '0', '1M')).toBe(true);
    expect(await guestHasPattern(p, 'vhdx', 0xcd, '40M', '2M')).toBe(true);
  });

  it('QEMU replays our log entry after a crash between logging and applying', async () => {
    // Record the write in memory, then "crash" right after the log entry was flushed.
    const io = new MemoryImageIo(Buffer.from(base.bytes));
    const next = doc('committed through the log');
    await writeMetadataIo(io, next);
    const crashed = Buffer.from(base.bytes);
    let flushes = 0;
    for (const op of io.ops) {
      if (op.kind === 'flush' && ++flushes === 4) break; // headers, headers, item, log
      if (op.kind === 'write') op.data.copy(crashed, op.offset);
    }
    const p = join(tmp.dir, 'crashed.vhdx');
    await writeFile(p, crashed);

    // Our reader replays in memory without writing.
    expect((await readMetadataRecord(p))?.metadata).toEqual(next);
    expect((await inspectImage(p)).needsRepair).toBe(true);
    // QEMU sees a valid, pending log entry: it refuses a read-only open until replay...
    const ro = await runTool('qemu-img', ['info', '-f', 'vhdx', p]);
    expect(ro.code).not.toBe(0);
    expect(ro.stderr).toContain('contains a log that needs to be replayed');
    // ...and replays it itself.
    expect((await checkImage(p, 'vhdx', true)).code).toBe(0);
    expect((await readMetadataRecord(p))?.metadata).toEqual(next);
    expect((await inspectImage(p)).needsRepair).toBe(false);
    expect((await checkImage(p, 'vhdx')).code).toBe(0);
    expect(await sameGuestData(base.path, p, 'vhdx')).toBe(true);

    // Our writer, given the crashed file, replays first and then writes.
    const q = join(tmp.dir, 'crashed-2.vhdx');
    await writeFile(q, crashed);
    await writeMetadata(q, doc('written over a pending log'));
    expect((await readMetadataRecord(q))?.metadata).toEqual(doc('written over a pending log'));
    expect((await imageInfo(q, 'vhdx'))['virtual-size']).toBe(64 * 1024 * 1024);
    expect((await checkImage(q, 'vhdx')).code).toBe(0);
  });

  it('refuses metadata that cannot sit next to its old copy, and changes nothing', async () => {
    const p = await victim();
    const noise = (seed: number) => {
      const b = Buffer.alloc(450_000);
      let x = seed;
      for (let i = 0; i < b.length; i++) b[i] = (x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 24;
      return b.toString('base64');
    };
    await writeMetadata(p, { schemaVersion: 1, configFiles: [{ path: '/a', content: noise(1), encoding: 'base64' }] });
    const before = await readFile(p);
    const err = await writeMetadata(p, { schemaVersion: 1, configFiles: [{ path: '/a', content: noise(2), encoding: 'base64' }] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MetadataTooLargeError);
    expect((err as Error).message).toMatch(/^vhdx metadata region \(1048576 bytes\) has room for \d+ bytes/);
    expect((await readFile(p)).equals(before)).toBe(true);
    expect((await checkImage(p, 'vhdx')).code).toBe(0);
  });
});

describe('VHDX inheritance (IsVirtualDisk)', () => {
  it('maps `inheritable` to the IsVirtualDisk flag of our user item, never IsRequired', async () => {
    for (const inheritable of [true, false]) {
      const io = new MemoryImageIo(Buffer.from(base.bytes));
      await writeMetadataIo(io, doc('x'), { inheritable });
      const e = getEntry(io.bytes, entryIndex(io.bytes, VHDX_GUIDS.hyperplaneMetadata, true));
      expect(e.flags).toBe(inheritable ? 0b011 : 0b001); // IsUser | IsVirtualDisk?
      expect((await readMetadataRecordIo(io))?.inheritable).toBe(inheritable);
    }
  });

  it('the table flag wins over the envelope when another tool toggles it', async () => {
    const io = new MemoryImageIo(Buffer.from(base.bytes));
    await writeMetadataIo(io, doc('x'), { inheritable: true });
    const i = entryIndex(io.bytes, VHDX_GUIDS.hyperplaneMetadata, true);
    io.bytes.writeUInt32LE(1, getEntry(io.bytes, i).at + 24);
    expect((await readMetadataRecordIo(io))?.inheritable).toBe(false);
  });

  it('follows the MS-VHDX fork and merge rules', () => {
    const rec = (description: string, inheritable: boolean): MetadataRecord => ({ format: 'vhdx', metadata: doc(description), inheritable, encoding: 'json', storedBytes: 1 });
    expect(inheritOnFork(rec('p', true))).toEqual(rec('p', true));
    expect(inheritOnFork(rec('p', false))).toBeNull();
    expect(inheritOnFork(null)).toBeNull();
    expect(resolveOnMerge(rec('p', true), rec('c', true))).toEqual(rec('c', true));
    expect(resolveOnMerge(rec('p', true), rec('c', false))).toBeNull();
    expect(resolveOnMerge(rec('p', false), rec('c', false))).toEqual(rec('p', false));
    expect(resolveOnMerge(rec('p', false), rec('c', true))).toEqual(rec('c', true));
    expect(resolveOnMerge(rec('p', true), null)).toBeNull();
    expect(resolveOnMerge(null, rec('c', true))).toEqual(rec('c', true));
  });

  it('a differencing disk is rejected at intake, but its metadata can be read and written when allowed', async () => {
    const bytes = Buffer.from(base.bytes);
    makeDifferencing(bytes, { parent_linkage: '{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}', relative_path: '..\\parent.vhdx', absolute_win32_path: '/etc/passwd' });
    const io = new MemoryImageIo(bytes);
    await expect(inspectImageIo(io)).rejects.toMatchObject({
      reason: 'backing-file',
      message: "vhdx metadata: differencing disk with parent '..\\\\parent.vhdx' is not allowed",
    });
    expect(await inspectImageIo(io, { allowBackingFile: true })).toMatchObject({ backingFile: '..\\parent.vhdx', vhdx: { differencing: true } });
    await writeMetadataIo(io, doc('child'), { inheritable: false });
    expect(await readMetadataRecordIo(io)).toMatchObject({ metadata: doc('child'), inheritable: false });
  });
});

describe('VHDX header sequence numbers', () => {
  it('refuses to write when the sequence number would overflow, instead of wrapping', async () => {
    const { fixHeaderChecksums } = await import('./testing/vhdx-edit');
    const bytes = Buffer.from(base.bytes);
    for (const h of [64 * 1024, 128 * 1024]) bytes.writeBigUInt64LE(2n ** 64n - 1n - BigInt(h / 65536), h + 8);
    fixHeaderChecksums(bytes);
    const io = new MemoryImageIo(bytes);
    expect(await readMetadataRecordIo(io)).toBeNull();
    await expect(writeMetadataIo(io, doc('x'))).rejects.toMatchObject({ reason: 'bad-header', message: expect.stringContaining('sequence number is exhausted') });
  });
});
