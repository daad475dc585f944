import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32c } from './crc32c';
import { ENVELOPE_HEADER_BYTES, encodeEnvelope } from './envelope';
import { DiskFormatError, ImageRejectedError, type ImageRejectReason } from './errors';
import { type IntakeOptions, inspectImage, readMetadata, writeMetadataIo } from './image';
import { MemoryImageIo } from './image-io';
import { parseQcow2 } from './qcow2';
import { createImage, makeTempDir, mustRun } from './qemu-tools';
import { type BaseImage, makeBaseImage } from './testing/images';
import {
  RT_OFFSET,
  appendEntry,
  entryIndex,
  fixHeaderChecksums,
  getEntry,
  makeDifferencing,
  metadataRegionOffset,
  regionIndex,
  setEntry,
  setRegion,
  writeItem,
} from './testing/vhdx-edit';
import { VHDX_GUIDS, guidToBytes } from './vhdx';
import { buildLogEntry } from './vhdx-log';

/**
 * The hostile corpus: each image is generated here from a genuine qemu-img one with exactly one
 * defect, and intake must reject it with the expected reason and a message that names the
 * problem, never with a crash (TypeError, RangeError...) or by accepting it.
 */

let tmp: Awaited<ReturnType<typeof makeTempDir>>;
let qcow2: BaseImage;
let vhdx: BaseImage;
let qcow2WithMeta: Buffer;
let vhdxWithMeta: Buffer;

beforeAll(async () => {
  tmp = await makeTempDir('hp-hostile');
  qcow2 = await makeBaseImage(tmp.dir, 'qcow2');
  vhdx = await makeBaseImage(tmp.dir, 'vhdx');
  const q = new MemoryImageIo(Buffer.from(qcow2.bytes));
  await writeMetadataIo(q, { schemaVersion: 1, description: 'genuine' });
  qcow2WithMeta = q.bytes;
  const v = new MemoryImageIo(Buffer.from(vhdx.bytes));
  await writeMetadataIo(v, { schemaVersion: 1, description: 'genuine' });
  vhdxWithMeta = v.bytes;
});
afterAll(async () => tmp.cleanup());

let seq = 0;
async function fileOf(bytes: Buffer, ext: string): Promise<string> {
  const p = join(tmp.dir, `case-${seq++}.${ext}`);
  await writeFile(p, bytes);
  return p;
}
const patchQcow2 = (f: (b: Buffer) => void) => async () => {
  const b = Buffer.from(qcow2WithMeta);
  f(b);
  return fileOf(b, 'qcow2');
};
const patchVhdx = (f: (b: Buffer) => void) => async () => {
  const b = Buffer.from(vhdxWithMeta);
  f(b);
  return fileOf(b, 'vhdx');
};
/** Our qcow2 extension in the genuine image with metadata: [offset, end). */
async function ourQcow2Extension(): Promise<[number, number]> {
  const h = await parseQcow2(new MemoryImageIo(qcow2WithMeta));
  return [h.metadataExtension!.offset, h.metadataExtension!.end];
}
/** Our VHDX item's absolute offset and length in the genuine image with metadata. */
function ourVhdxItem(b: Buffer): { at: number; length: number } {
  const e = getEntry(b, entryIndex(b, VHDX_GUIDS.hyperplaneMetadata, true));
  return { at: metadataRegionOffset(b) + e.offset, length: e.length };
}

interface Case {
  name: string;
  build: () => Promise<string>;
  reason: ImageRejectReason;
  message: RegExp;
  options?: IntakeOptions;
}

const cases: Case[] = [
  // qcow2
  {
    name: 'qcow2 with a backing file pointing at a host file',
    build: async () => {
      const p = join(tmp.dir, 'backing-passwd.qcow2');
      await mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', '/etc/passwd', '-F', 'raw', p, '64M']);
      return p;
    },
    reason: 'backing-file',
    message: /^qcow2 header: backing file '\/etc\/passwd' is not allowed$/,
  },
  {
    name: 'qcow2 with an external data file',
    build: async () => {
      const p = join(tmp.dir, 'datafile.qcow2');
      await createImage(p, 'qcow2', '16M', `data_file=${join(tmp.dir, 'data.raw')}`);
      return p;
    },
    reason: 'data-file',
    message: /^qcow2 header: external data file '.*data\.raw' is not allowed$/,
  },
  {
    name: 'qcow2 with a data-file extension but no feature bit',
    build: patchQcow2((b) => {
      b.writeUInt32BE(0x44415441, 504); // overwrite our extension's type with "DATA"
    }),
    reason: 'data-file',
    message: /external data file '.*' is not allowed/,
  },
  { name: 'qcow2 with a 2^62-byte virtual size', build: patchQcow2((b) => b.writeBigUInt64BE(2n ** 62n, 24)), reason: 'virtual-size-too-large', message: /virtual size 4611686018427387904 is too large/ },
  {
    name: 'qcow2 with an 8 TiB virtual size (over the default limit)',
    build: patchQcow2((b) => b.writeBigUInt64BE(8n * 1024n ** 4n, 24)),
    reason: 'virtual-size-too-large',
    message: /^qcow2 header: virtual size 8796093022208 bytes exceeds the limit of 4398046511104 bytes$/,
  },
  { name: 'qcow2 truncated inside the fixed header', build: async () => fileOf(qcow2.bytes.subarray(0, 50), 'qcow2'), reason: 'truncated', message: /shorter than the 72-byte header/ },
  { name: 'qcow2 truncated inside the v3 header', build: async () => fileOf(qcow2.bytes.subarray(0, 100), 'qcow2'), reason: 'truncated', message: /^qcow2 header: version 3 header/ },
  { name: 'qcow2 truncated inside the header extensions', build: async () => fileOf(qcow2.bytes.subarray(0, 300), 'qcow2'), reason: 'truncated', message: /truncated/ },
  {
    name: 'qcow2 header extension whose length runs past the cluster',
    build: patchQcow2((b) => b.writeUInt32BE(0x10000, 0x74)),
    reason: 'out-of-bounds',
    message: /header extension 0x6803f857 at 112 claims 65536 bytes, past the end of the extension area at 65536/,
  },
  {
    name: 'qcow2 L1 table past the end of the file',
    build: patchQcow2((b) => b.writeBigUInt64BE(1024n ** 4n, 40)),
    reason: 'out-of-bounds',
    message: /L1 table at offset 1099511627776 .* runs past the end of the file/,
  },
  { name: 'qcow2 L1 table inside the header cluster', build: patchQcow2((b) => b.writeBigUInt64BE(0n, 40)), reason: 'overlap', message: /L1 table at offset 0 overlaps the header cluster/ },
  {
    name: 'qcow2 refcount table not cluster-aligned',
    build: patchQcow2((b) => b.writeBigUInt64BE(0x10008n, 48)),
    reason: 'bad-header',
    message: /refcount table offset 65544 is not aligned/,
  },
  {
    name: 'qcow2 with two Hyperplane metadata extensions',
    build: async () => {
      const [off, end] = await ourQcow2Extension();
      const b = Buffer.from(qcow2WithMeta);
      b.copy(b, end, off, end); // a second copy where the end marker was
      b.fill(0, end + (end - off), end + (end - off) + 8);
      return fileOf(b, 'qcow2');
    },
    reason: 'duplicate-item',
    message: /two Hyperplane metadata extensions/,
  },
  {
    name: 'qcow2 metadata with a bad checksum',
    build: async () => {
      const [off] = await ourQcow2Extension();
      return patchQcow2((b) => (b[off + 8 + ENVELOPE_HEADER_BYTES + 2] ^= 1))();
    },
    reason: 'bad-checksum',
    message: /^qcow2 header extension at 504: metadata CRC-32C mismatch/,
  },
  {
    name: 'qcow2 metadata that is not JSON (checksum fine)',
    build: async () => {
      const [off] = await ourQcow2Extension();
      const env = encodeEnvelope('{"schemaVersion":1,"description":"genuine"', true, 'json');
      return patchQcow2((b) => {
        b.writeUInt32BE(env.length, off + 4);
        env.copy(b, off + 8);
      })();
    },
    reason: 'bad-metadata',
    message: /metadata is not valid JSON/,
  },
  {
    name: 'qcow2 metadata that breaks the schema',
    build: async () => {
      const [off] = await ourQcow2Extension();
      const env = encodeEnvelope('{"schemaVersion":1,"hardware":{"arch":"x86_64","minVcpus":0,"minMemoryMiB":1}}', true, 'json');
      return patchQcow2((b) => {
        b.writeUInt32BE(env.length, off + 4);
        env.copy(b, off + 8);
        b.fill(0, off + 8 + env.length, off + 8 + env.length + 16);
      })();
    },
    reason: 'bad-metadata',
    message: /hardware\.minVcpus must be a positive integer/,
  },
  { name: 'qcow2 marked corrupt', build: patchQcow2((b) => (b[79] |= 2)), reason: 'corrupt', message: /marked corrupt/ },
  { name: 'qcow2 with an unknown incompatible feature', build: patchQcow2((b) => (b[72] |= 0x80)), reason: 'unsupported-feature', message: /unknown incompatible feature bits 0x8000000000000000/ },
  { name: 'qcow2 with absurd cluster_bits', build: patchQcow2((b) => b.writeUInt32BE(31, 20)), reason: 'bad-header', message: /cluster_bits 31 is outside 9\.\.21/ },
  { name: 'qcow (version 1)', build: patchQcow2((b) => b.writeUInt32BE(1, 4)), reason: 'unsupported-format', message: /qcow version 1/ },
  { name: 'qcow2 version 4', build: patchQcow2((b) => b.writeUInt32BE(4, 4)), reason: 'unsupported-version', message: /version 4 is not supported/ },
  { name: 'qcow2 backing file name offset outside the header cluster', build: patchQcow2((b) => b.writeBigUInt64BE(1n << 40n, 8)), reason: 'bad-header', message: /backing file name offset .* is outside the header cluster/ },
  { name: 'qcow2 legacy AES encryption', build: patchQcow2((b) => b.writeUInt32BE(1, 32)), reason: 'unsupported-feature', message: /legacy AES/ },
  { name: 'qcow2 LUKS without its header pointer', build: patchQcow2((b) => b.writeUInt32BE(2, 32)), reason: 'bad-header', message: /LUKS encryption without an encryption header pointer/ },
  {
    name: 'a qcow2 renamed .vhdx, declared as VHDX',
    build: async () => fileOf(qcow2.bytes, 'vhdx'),
    options: { expectedFormat: 'vhdx' },
    reason: 'format-mismatch',
    message: /^image was declared as vhdx but its header is qcow2/,
  },

  // VHDX
  { name: 'vhdx truncated inside the header section', build: async () => fileOf(vhdx.bytes.subarray(0, 100 * 1024), 'vhdx'), reason: 'truncated', message: /^vhdx file: 102400 bytes, shorter than the 1 MiB header section$/ },
  {
    name: 'vhdx truncated after the header section (regions past the end)',
    build: async () => fileOf(vhdx.bytes.subarray(0, 2 * 1024 * 1024), 'vhdx'),
    reason: 'out-of-bounds',
    message: /^vhdx region table: BAT region at 2097152 \(1048576 bytes\) runs past the end of the file \(2097152 bytes\)$/,
  },
  {
    name: 'vhdx with both headers failing their checksum',
    build: patchVhdx((b) => {
      b[64 * 1024 + 100] ^= 1;
      b[128 * 1024 + 100] ^= 1;
    }),
    reason: 'bad-checksum',
    message: /^vhdx header: both headers fail their CRC-32C checksum$/,
  },
  { name: 'vhdx region table failing its checksum', build: patchVhdx((b) => (b[RT_OFFSET + 40] ^= 1)), reason: 'bad-checksum', message: /^vhdx region table: CRC-32C checksum mismatch$/ },
  {
    name: 'vhdx with overlapping regions (BAT over the metadata region)',
    build: patchVhdx((b) => setRegion(b, regionIndex(b, VHDX_GUIDS.batRegion), { offset: metadataRegionOffset(b) })),
    reason: 'overlap',
    message: /overlaps the region at 3145728/,
  },
  {
    name: 'vhdx region overlapping the log',
    build: patchVhdx((b) => setRegion(b, regionIndex(b, VHDX_GUIDS.batRegion), { offset: 1024 * 1024 })),
    reason: 'overlap',
    message: /BAT region at 1048576 overlaps the log/,
  },
  {
    name: 'vhdx region past the end of the file',
    build: patchVhdx((b) => setRegion(b, regionIndex(b, VHDX_GUIDS.metadataRegion), { offset: 1024 ** 4 })),
    reason: 'out-of-bounds',
    message: /metadata region at 1099511627776 .* runs past the end of the file/,
  },
  {
    name: 'vhdx with an unknown required region',
    build: patchVhdx((b) => {
      b.writeUInt32LE(3, RT_OFFSET + 8);
      setRegion(b, 2, { guid: '11111111-2222-3333-4444-555555555555', offset: 5 * 1024 * 1024, length: 1024 * 1024, required: true });
    }),
    reason: 'unsupported-feature',
    message: /required region 11111111-2222-3333-4444-555555555555 is not understood/,
  },
  {
    name: 'vhdx metadata item whose offset runs past the metadata region',
    build: patchVhdx((b) => setEntry(b, entryIndex(b, VHDX_GUIDS.hyperplaneMetadata, true), { offset: 1024 * 1024 - 8 })),
    reason: 'out-of-bounds',
    message: /metadata item 8c6d0afd-d3f3-452b-8ea0-34813b8512dc \(user\) at 1048568 \(\d+ bytes\) runs past the end of the 1048576-byte metadata region/,
  },
  {
    name: 'vhdx metadata item longer than 1 MiB',
    build: patchVhdx((b) => setEntry(b, entryIndex(b, VHDX_GUIDS.hyperplaneMetadata, true), { length: 0x7fffffff })),
    reason: 'out-of-bounds',
    message: /is 2147483647 bytes, above the 1 MiB item limit/,
  },
  {
    name: 'vhdx metadata item inside the metadata table',
    build: patchVhdx((b) => setEntry(b, entryIndex(b, VHDX_GUIDS.fileParameters), { offset: 16 })),
    reason: 'overlap',
    message: /at offset 16 overlaps the metadata table/,
  },
  {
    name: 'vhdx metadata items overlapping each other',
    build: patchVhdx((b) => setEntry(b, entryIndex(b, VHDX_GUIDS.hyperplaneMetadata, true), { offset: 65536 + 4 })),
    reason: 'overlap',
    message: /overlaps item caa16737-fa36-4d43-b3b6-33f0aa44e76b at 65536/,
  },
  {
    name: 'vhdx with a duplicate system item id',
    build: patchVhdx((b) => appendEntry(b, { ...getEntry(b, entryIndex(b, VHDX_GUIDS.fileParameters)), offset: 200 * 1024, length: 8 })),
    reason: 'duplicate-item',
    message: /metadata item caa16737-fa36-4d43-b3b6-33f0aa44e76b appears twice/,
  },
  {
    name: 'vhdx with a duplicate Hyperplane item id',
    build: patchVhdx((b) => {
      const ours = getEntry(b, entryIndex(b, VHDX_GUIDS.hyperplaneMetadata, true));
      const copyAt = 300 * 1024;
      b.copy(b, metadataRegionOffset(b) + copyAt, metadataRegionOffset(b) + ours.offset, metadataRegionOffset(b) + ours.offset + ours.length);
      appendEntry(b, { ...ours, offset: copyAt });
    }),
    reason: 'duplicate-item',
    message: /metadata item 8c6d0afd-d3f3-452b-8ea0-34813b8512dc \(user\) appears twice/,
  },
  {
    name: 'vhdx with a 1 PiB virtual size',
    build: patchVhdx((b) => {
      const e = getEntry(b, entryIndex(b, VHDX_GUIDS.virtualDiskSize));
      b.writeBigUInt64LE(2n ** 50n, metadataRegionOffset(b) + e.offset);
    }),
    reason: 'virtual-size-too-large',
    message: /virtual size 1125899906842624 bytes exceeds the VHDX maximum of 64 TiB/,
  },
  {
    name: 'vhdx with an 8 TiB virtual size (over the default limit)',
    build: patchVhdx((b) => {
      const e = getEntry(b, entryIndex(b, VHDX_GUIDS.virtualDiskSize));
      b.writeBigUInt64LE(8n * 1024n ** 4n, metadataRegionOffset(b) + e.offset);
    }),
    reason: 'virtual-size-too-large',
    message: /^vhdx metadata: virtual size 8796093022208 bytes exceeds the limit of 4398046511104 bytes$/,
  },
  {
    name: 'vhdx differencing disk whose parent is a host file',
    build: patchVhdx((b) => makeDifferencing(b, { parent_linkage: '{83ed0ec3-24c8-49a6-a959-5e4bf1288bfb}', absolute_win32_path: '/etc/shadow' })),
    reason: 'backing-file',
    message: /^vhdx metadata: differencing disk with parent '\/etc\/shadow' is not allowed$/,
  },
  {
    name: 'vhdx with an unknown required metadata item',
    build: patchVhdx((b) => appendEntry(b, { guid: '99999999-8888-7777-6666-555555555555', offset: 0, length: 0, flags: 4 })),
    reason: 'unsupported-feature',
    message: /required metadata item 99999999-8888-7777-6666-555555555555 is not understood/,
  },
  {
    name: 'vhdx Hyperplane item with a bad checksum',
    build: patchVhdx((b) => (b[ourVhdxItem(b).at + ENVELOPE_HEADER_BYTES + 1] ^= 4)),
    reason: 'bad-checksum',
    message: /^vhdx metadata item at \d+: metadata CRC-32C mismatch/,
  },
  {
    name: 'vhdx Hyperplane item with a decompression bomb',
    build: patchVhdx((b) => {
      const { at, length } = ourVhdxItem(b);
      b[at + 1] = 1; // claims DEFLATE: the bytes are not a valid stream
      b.writeUInt32LE(crc32c(b.subarray(at + ENVELOPE_HEADER_BYTES, at + length)), at + 12);
    }),
    reason: 'bad-metadata',
    message: /DEFLATE stream is corrupt/,
  },
  {
    name: 'vhdx with log version 1',
    build: patchVhdx((b) => {
      b.writeUInt16LE(1, 64 * 1024 + 64);
      b.writeUInt16LE(1, 128 * 1024 + 64);
      fixHeaderChecksums(b);
    }),
    reason: 'unsupported-version',
    message: /log version 1 is not supported/,
  },
  {
    name: 'vhdx with a pending log that writes over the headers',
    build: patchVhdx((b) => {
      const logGuid = Buffer.alloc(16, 7);
      for (const h of [64 * 1024, 128 * 1024]) logGuid.copy(b, h + 48);
      fixHeaderChecksums(b);
      const entry = buildLogEntry({ logGuid, sequence: 5n, tail: 0, fileSize: b.length, sectors: [{ offset: 64 * 1024, data: Buffer.alloc(4096, 0x41) }] });
      entry.copy(b, 1024 * 1024);
    }),
    reason: 'bad-log',
    message: /pending entry writes 4096 bytes at offset 65536, outside the replayable part of the file/,
  },
  {
    name: 'vhdx BAT too small for the disk',
    build: patchVhdx((b) => {
      const e = getEntry(b, entryIndex(b, VHDX_GUIDS.virtualDiskSize));
      b.writeBigUInt64LE(4n * 1024n ** 4n, metadataRegionOffset(b) + e.offset);
    }),
    reason: 'bad-header',
    message: /BAT region of 1048576 bytes is too small for \d+ entries/,
  },
  {
    name: 'a VHDX renamed .qcow2, declared as qcow2',
    build: async () => fileOf(vhdx.bytes, 'qcow2'),
    options: { expectedFormat: 'qcow2' },
    reason: 'format-mismatch',
    message: /declared as qcow2 but its header is vhdx/,
  },

  // raw
  {
    name: 'a VMDK passing itself off as raw',
    build: async () => {
      const p = join(tmp.dir, 'disk.raw');
      await createImage(p, 'raw', '1M');
      await mustRun('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', p, `${p}.vmdk`]);
      return `${p}.vmdk`;
    },
    reason: 'unsupported-format',
    message: /^image is vmdk, which is not supported/,
  },
];

describe('hostile image corpus', () => {
  it.each(cases.map((c) => [c.name, c] as const))('rejects %s', async (_name, c) => {
    const path = await c.build();
    const err = await inspectImage(path, c.options).then(
      () => new Error('accepted'),
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ImageRejectedError);
    expect({ reason: (err as ImageRejectedError).reason, message: (err as Error).message }).toEqual({ reason: c.reason, message: expect.stringMatching(c.message) });
    // Reading metadata never crashes either: it succeeds or fails with one of our errors.
    await readMetadata(path).catch((e: unknown) => expect(e).toBeInstanceOf(DiskFormatError));
  });

  it('accepts an image with one corrupt header (that is what the second one is for)', async () => {
    const b = Buffer.from(vhdxWithMeta);
    b[64 * 1024 + 100] ^= 1;
    const p = await fileOf(b, 'vhdx');
    expect(await inspectImage(p)).toMatchObject({ format: 'vhdx', metadata: { description: 'genuine' } });
    expect((await readFile(p)).equals(b)).toBe(true);
  });

  it('accepts everything it rejected above only through explicit, named options', async () => {
    const p = join(tmp.dir, 'backing-allowed.qcow2');
    await mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', '/etc/passwd', '-F', 'raw', p, '64M']);
    expect(await inspectImage(p, { allowBackingFile: true })).toMatchObject({ backingFile: '/etc/passwd' });
    expect(await inspectImage(join(tmp.dir, 'datafile.qcow2'), { allowDataFile: true })).toMatchObject({ dataFile: expect.stringContaining('data.raw') });
  });
});

describe('guid helpers', () => {
  it('store the first three fields little-endian, as MS-VHDX does', () => {
    expect(guidToBytes(VHDX_GUIDS.batRegion).toString('hex')).toBe('6677c22d23f600429d64115e9bfd4a08');
  });
});
