import { copyFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createImage, writeGuestPattern } from '../qemu-tools';

/** A qemu-img-created image with 1 MiB of guest data (pattern 0xab at 0), kept as a pristine copy. */
export interface BaseImage {
  format: 'qcow2' | 'vhdx';
  path: string;
  bytes: Buffer;
}

/** Creates a 64 MiB qcow2 or VHDX image in `dir` holding guest data, via qemu-img / qemu-io. */
export async function makeBaseImage(dir: string, format: 'qcow2' | 'vhdx', name = `base.${format}`, options?: string): Promise<BaseImage> {
  const path = join(dir, name);
  await createImage(path, format, '64M', options);
  await writeGuestPattern(path, format, 0xab, '0', '1M');
  return { format, path, bytes: await readFile(path) };
}

/** Copies a base image to a new file in `dir` (a fresh victim for one test). */
export async function copyOf(base: BaseImage, dir: string, name: string): Promise<string> {
  const p = join(dir, name);
  await copyFile(base.path, p);
  return p;
}
