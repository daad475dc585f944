import { execFileSync } from 'node:child_process';
import { mkdir, open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { detectFormat, detectFormatFromBytes, sniffForeignFormat } from './detect';
import { inspectImage, readMetadata } from './image';
import { FileImageIo } from './image-io';
import { createImage, makeTempDir } from './qemu-tools';

let tmp: Awaited<ReturnType<typeof makeTempDir>>;
beforeAll(async () => {
  tmp = await makeTempDir('hp-detect');
});
afterAll(async () => tmp.cleanup());

describe('detectFormat', () => {
  it('decides by magic bytes, never by file name', async () => {
    const q = join(tmp.dir, 'really-qcow2.vhdx');
    const v = join(tmp.dir, 'really-vhdx.qcow2');
    const r = join(tmp.dir, 'really-raw.qcow2');
    await createImage(q, 'qcow2', '16M');
    await createImage(v, 'vhdx', '16M');
    await writeFile(r, Buffer.alloc(4096));
    expect(await detectFormat(q)).toBe('qcow2');
    expect(await detectFormat(v)).toBe('vhdx');
    expect(await detectFormat(r)).toBe('raw');
    const fh = await open(q, 'r');
    try {
      expect(await detectFormat(fh)).toBe('qcow2');
      expect(await detectFormat(fh.fd)).toBe('qcow2');
    } finally {
      await fh.close();
    }
    // The renamed qcow2 is read as what it is.
    expect(await readMetadata(q)).toBeNull();
    expect((await inspectImage(q)).format).toBe('qcow2');
  });

  it('treats short or empty files as raw', () => {
    expect(detectFormatFromBytes(Buffer.alloc(0))).toBe('raw');
    expect(detectFormatFromBytes(Buffer.from('QFI'))).toBe('raw');
    expect(detectFormatFromBytes(Buffer.from('vhdxfil'))).toBe('raw');
  });

  it.each([
    ['vmdk', Buffer.from('KDMV\x01\x00\x00\x00', 'latin1')],
    ['vmdk (descriptor)', Buffer.from('# Disk DescriptorFile\n')],
    ['qed', Buffer.from('QED\0', 'latin1')],
    ['luks', Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe, 0, 1])],
    ['vhd (vpc)', Buffer.from('conectix')],
  ])('names %s, which would otherwise pass as raw', (name, head) => {
    expect(sniffForeignFormat(head, Buffer.alloc(0))).toBe(name);
  });

  it('recognises a fixed VHD by its footer in the last sector', async () => {
    const p = join(tmp.dir, 'fixed.vpc');
    execFileSync('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'subformat=fixed', p, '8M']);
    await expect(inspectImage(p)).rejects.toMatchObject({ reason: 'unsupported-format', message: expect.stringContaining('vhd (vpc)') });
  });

  it('refuses directories and FIFOs without blocking', async () => {
    const d = join(tmp.dir, 'a-directory');
    await mkdir(d);
    await expect(FileImageIo.open(d, 'read')).rejects.toMatchObject({ reason: 'not-a-regular-file' });
    const fifo = join(tmp.dir, 'a-fifo');
    execFileSync('mkfifo', [fifo]);
    await expect(inspectImage(fifo)).rejects.toMatchObject({ reason: 'not-a-regular-file' });
  });

  it('pins raw images and reports they cannot hold metadata', async () => {
    const r = join(tmp.dir, 'disk.raw');
    await createImage(r, 'raw', '4M');
    const info = await inspectImage(r);
    expect(info).toMatchObject({ format: 'raw', virtualSizeBytes: 4 * 1024 * 1024, metadataSupported: false, metadata: null });
  });
});
