import { read as readFd } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { FileImageIo, type ImageIo } from './image-io';

/** Formats this library accepts. */
export type DiskFormat = 'qcow2' | 'vhdx' | 'raw';

/** qcow2 magic "QFI\xfb" (also used by the obsolete qcow v1, told apart by the version field). */
export const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]);
/** VHDX file type identifier signature. */
export const VHDX_SIGNATURE = Buffer.from('vhdxfile', 'latin1');

/**
 * Decides the format from the first bytes of the file (given as a path, a numeric fd, a
 * FileHandle or an ImageIo), never from its name: a qcow2 renamed
 * ".vhdx" is qcow2. Anything without a qcow2 or VHDX magic is raw. The result is meant to be
 * pinned (`-drive format=...`) so that QEMU never probes a guest-controlled file itself.
 */
export async function detectFormat(source: string | number | FileHandle | ImageIo): Promise<DiskFormat> {
  if (typeof source === 'number') {
    const buf = Buffer.alloc(8);
    const n = await new Promise<number>((resolve, reject) => readFd(source, buf, 0, 8, 0, (err, bytesRead) => (err ? reject(err) : resolve(bytesRead))));
    return detectFormatFromBytes(buf.subarray(0, n));
  }
  if (typeof source === 'string') {
    const io = await FileImageIo.open(source, 'read');
    try {
      return detectFormatFromBytes(await io.read(0, 8));
    } finally {
      await io.close();
    }
  }
  if (isImageIo(source)) return detectFormatFromBytes(await source.read(0, 8));
  const buf = Buffer.alloc(8);
  const { bytesRead } = await source.read(buf, 0, 8, 0);
  return detectFormatFromBytes(buf.subarray(0, bytesRead));
}

function isImageIo(source: FileHandle | ImageIo): source is ImageIo {
  return 'flush' in source && typeof source.flush === 'function';
}

/** detectFormat over the first (up to 8) bytes of a file. */
export function detectFormatFromBytes(head: Uint8Array): DiskFormat {
  const b = Buffer.from(head.buffer, head.byteOffset, head.byteLength);
  if (b.length >= 4 && b.subarray(0, 4).equals(QCOW2_MAGIC)) return 'qcow2';
  if (b.length >= 8 && b.subarray(0, 8).equals(VHDX_SIGNATURE)) return 'vhdx';
  return 'raw';
}

/**
 * Names a format we do not accept that would otherwise pass as raw (so the user hears "this is a
 * VMDK, convert it" instead of booting a guest from a VMDK's bytes). `head` is the first 512
 * bytes, `tail` the last 512 (fixed VHD keeps its footer there). Returns null for plain raw data.
 */
export function sniffForeignFormat(head: Uint8Array, tail: Uint8Array): string | null {
  const h = Buffer.from(head.buffer, head.byteOffset, head.byteLength);
  const t = Buffer.from(tail.buffer, tail.byteOffset, tail.byteLength);
  const at = (buf: Buffer, off: number, s: string | number[]) => {
    const sig = typeof s === 'string' ? Buffer.from(s, 'latin1') : Buffer.from(s);
    return buf.length >= off + sig.length && buf.subarray(off, off + sig.length).equals(sig);
  };
  if (at(h, 0, 'KDMV')) return 'vmdk';
  if (at(h, 0, '# Disk DescriptorFile')) return 'vmdk (descriptor)';
  if (at(h, 0, [0x43, 0x4f, 0x57, 0x44])) return 'vmdk (COWD)';
  if (at(h, 0x40, [0x7f, 0x10, 0xda, 0xbe])) return 'vdi';
  if (at(h, 0, 'conectix') || at(t, 0, 'conectix')) return 'vhd (vpc)';
  if (at(h, 0, 'QED\0')) return 'qed';
  if (at(h, 0, [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe])) return 'luks';
  if (at(h, 0, 'WithoutFreeSpace') || at(h, 0, 'WithouFreSpacExt')) return 'parallels';
  if (at(h, 0, 'Bochs Virtual HD Image')) return 'bochs';
  if (at(h, 0, '#!/bin/sh\n#V2.0 Format')) return 'cloop';
  return null;
}
