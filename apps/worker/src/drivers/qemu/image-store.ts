/**
 * A node's image store: `<data-dir>/images/*.qcow2`, each image named by its basename. The QEMU
 * driver starts guests on overlays of these files and never writes to them.
 */
import { copyFile, link, mkdir, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ValidationError } from '@hyperplane/domain';
import type { ImageEntry } from '../driver';
import { qcow2Info } from './host-tools';

/** Image names: a file name without path separators or a leading dot. */
const IMAGE_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** The image the sample guest build produces and the store is seeded with. */
export const SAMPLE_IMAGE_FILE = 'sample.qcow2';

interface CachedInfo {
  mtimeMs: number;
  size: number;
  virtualSizeBytes: number;
}

/** The image store of one node. Paths are absolute. */
export class ImageStore {
  private readonly cache = new Map<string, CachedInfo>();

  constructor(
    readonly dir: string,
    private readonly qemuImg: string,
  ) {}

  /**
   * Puts the sample guest's image into the store when it is missing there and `guestDir` has one:
   * a hard link (no copy, same inode), or a copy when linking fails (another file system).
   * Returns what it did.
   */
  async seed(guestDir: string | undefined): Promise<'present' | 'linked' | 'copied' | 'no-source'> {
    await mkdir(this.dir, { recursive: true });
    const target = join(this.dir, SAMPLE_IMAGE_FILE);
    if (await exists(target)) return 'present';
    const source = guestDir ? join(guestDir, SAMPLE_IMAGE_FILE) : undefined;
    if (!source || !(await exists(source))) return 'no-source';
    try {
      await link(source, target);
      return 'linked';
    } catch {
      await copyFile(source, target);
      return 'copied';
    }
  }

  /** The file of image `name` (`sample` or `sample.qcow2`). Throws ValidationError for a bad name. */
  pathOf(name: string): string {
    const base = name.endsWith('.qcow2') ? name.slice(0, -'.qcow2'.length) : name;
    if (!IMAGE_NAME_RE.test(base) || base.includes('..')) {
      throw ValidationError.field('image', `image name ${JSON.stringify(name)} is not a valid image name`);
    }
    return join(this.dir, `${base}.qcow2`);
  }

  /** The virtual size of an image file, via `qemu-img info` (cached while the file is unchanged). */
  async virtualSize(path: string): Promise<number> {
    const st = await stat(path);
    const hit = this.cache.get(path);
    if (hit && hit.mtimeMs === st.mtimeMs && hit.size === st.size) return hit.virtualSizeBytes;
    const info = await qcow2Info(this.qemuImg, path);
    this.cache.set(path, { mtimeMs: st.mtimeMs, size: st.size, virtualSizeBytes: info.virtualSizeBytes });
    return info.virtualSizeBytes;
  }

  /** Every `*.qcow2` of the store that `qemu-img` can read; unreadable files are left out. */
  async list(): Promise<ImageEntry[]> {
    let names: string[];
    try {
      names = (await readdir(this.dir)).filter((n) => n.endsWith('.qcow2') && !n.startsWith('.')).sort();
    } catch {
      return [];
    }
    const images: ImageEntry[] = [];
    for (const file of names) {
      const path = join(this.dir, file);
      try {
        const st = await stat(path);
        if (!st.isFile()) continue;
        images.push({ name: file.slice(0, -'.qcow2'.length), format: 'qcow2', sizeBytes: st.size, virtualSizeBytes: await this.virtualSize(path), path });
      } catch {
        continue;
      }
    }
    return images;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
