import { join } from 'node:path';
import { readMetadataRecordIo, writeMetadata } from './image';
import { FileImageIo } from './image-io';
import type { ImageMetadata } from './metadata-schema';
import { createImage, makeTempDir } from './qemu-tools';

/**
 * Reading metadata must not scale with the disk: only headers, the region/metadata tables and
 * the item are read, never the BAT, L1/L2 tables or guest data. Counted in bytes (robust on a
 * busy CI machine) rather than milliseconds; wall-clock timing is src/bench-read.ts
 * (node libs/disk-formats/dist/bench-read.js).
 */

let tmp: Awaited<ReturnType<typeof makeTempDir>>;
beforeAll(async () => {
  tmp = await makeTempDir('hp-readcost');
});
afterAll(async () => tmp.cleanup());

const metadata: ImageMetadata = {
  schemaVersion: 1,
  description: 'read-cost probe',
  hardware: { arch: 'x86_64', minVcpus: 2, minMemoryMiB: 2048 },
  history: Array.from({ length: 20 }, (_, i) => ({ at: '2026-11-23T12:00:00Z', operation: `op-${i}`, by: 'control-plane' })),
};

async function bytesToRead(path: string): Promise<number> {
  const io = await FileImageIo.open(path, 'read');
  try {
    expect((await readMetadataRecordIo(io))?.metadata).toEqual(metadata);
    return io.bytesRead;
  } finally {
    await io.close();
  }
}

describe.each(['qcow2', 'vhdx'] as const)('%s metadata read cost', (format) => {
  it('reads the same few KiB from a 10 GiB image as from a 64 MiB one', async () => {
    const big = join(tmp.dir, `big.${format}`);
    const small = join(tmp.dir, `small.${format}`);
    await createImage(big, format, '10G');
    await createImage(small, format, '64M');
    await writeMetadata(big, metadata);
    await writeMetadata(small, metadata);
    const bigBytes = await bytesToRead(big);
    const smallBytes = await bytesToRead(small);
    // qcow2: the first 4 KiB of the header cluster. VHDX: headers (2 x 4 KiB), region table and
    // metadata table (64 KiB each, both under CRC or fixed size), system items, our item.
    expect(bigBytes).toBeLessThanOrEqual(format === 'qcow2' ? 8 * 1024 : 150 * 1024);
    expect(bigBytes).toBe(smallBytes);
  });
});
