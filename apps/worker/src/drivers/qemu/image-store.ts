/**
 * A node's image store, `<data-dir>/images/`:
 * - top-level `NAME.qcow2|vhdx|raw`: the node's own images, usable by name (`sample`);
 * - `library/<image id>.<format>`: copies of control-plane library images, fetched by the agent
 *   (`.fetch-*` files there are fetches in progress; an agent that starts removes them);
 * - `staging/`: files the node produced for the control plane (exports), sent then removed.
 *
 * Every file is treated as hostile: its format comes from its bytes (libs/disk-formats) and must
 * match its name, backing files and external data files are refused, and so on; a file that fails
 * is listed with the reason and never used. The QEMU driver starts guests on overlays of these
 * files with the format pinned, and never writes to them.
 */
import { randomUUID } from 'node:crypto';
import { realpathSync, statSync, watch as fsWatch, type FSWatcher, type Stats } from 'node:fs';
import { copyFile, link, lstat, mkdir, open, readdir, realpath, rename, rm, stat } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { ValidationError, isInsideDir, storeFilePath } from '@hyperplane/domain';
import { DiskFormatError, ImageRejectedError, inspectImage } from '@hyperplane/disk-formats';
import type { FetchTarget, ImageEntry, ImageFormat, NodeImageStore } from '../driver';
import { run } from './host-tools';

/** Image names: a file name without path separators or a leading dot. */
const IMAGE_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Library image ids (UUIDs, as the control plane makes them). */
const LIBRARY_ID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** File extensions of images, in the order a name is looked up. */
const FORMATS: readonly ImageFormat[] = ['qcow2', 'vhdx', 'raw'];

/** The image the sample guest build produces and the store is seeded with. */
export const SAMPLE_IMAGE_FILE = 'sample.qcow2';

/** Largest virtual size a store image may declare (as the control plane's default). */
export const STORE_MAX_VIRTUAL_BYTES = 4 * 1024 ** 4;

/** How often the store is scanned even without a file-system event. */
export const RESCAN_MS = 30_000;

/** Events closer together than this are one change. */
const DEBOUNCE_MS = 250;

interface Inspected {
  key: string;
  format: ImageFormat;
  virtualSizeBytes: number;
  metadataJson: string;
  rejected?: { reason: string; message: string };
}

/** The format an image file's name claims, or undefined when it is not an image name. */
export function formatOfName(file: string): ImageFormat | undefined {
  const dot = file.lastIndexOf('.');
  if (dot <= 0) return undefined;
  const ext = file.slice(dot + 1);
  return (FORMATS as readonly string[]).includes(ext) ? (ext as ImageFormat) : undefined;
}

const isInside = isInsideDir;

/** The image store of one node. Paths are absolute. */
export class ImageStore implements NodeImageStore {
  readonly libraryDir: string;
  readonly stagingDir: string;
  private readonly cache = new Map<string, Inspected>();
  /** Virtual sizes by path, valid while the file (inode, size, mtime) is the same. */
  private readonly virtualSizes = new Map<string, { version: string; bytes: number }>();

  constructor(
    readonly dir: string,
    private readonly qemuImg: string,
    private readonly maxVirtualBytes = STORE_MAX_VIRTUAL_BYTES,
  ) {
    this.libraryDir = join(dir, 'library');
    this.stagingDir = join(dir, 'staging');
  }

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

  /** Removes fetches a previous agent process left unfinished (`library/.fetch-*`). Returns how many. */
  async sweepPartialFetches(): Promise<number> {
    const names = await readdir(this.libraryDir).catch(() => [] as string[]);
    const partial = names.filter((n) => n.startsWith('.fetch-'));
    for (const n of partial) await rm(join(this.libraryDir, n), { force: true });
    return partial.length;
  }

  /**
   * The file of image `name` (`sample` or `sample.qcow2`) and its pinned format. Throws
   * ValidationError for a bad name, a missing image, or one that failed the hostile-image checks.
   */
  async resolve(name: string): Promise<{ path: string; format: ImageFormat }> {
    const claimed = formatOfName(name);
    const base = claimed ? name.slice(0, -(claimed.length + 1)) : name;
    if (!IMAGE_NAME_RE.test(base) || base.includes('..')) {
      throw ValidationError.field('image', `image name ${JSON.stringify(name)} is not a valid image name`);
    }
    for (const format of claimed ? [claimed] : FORMATS) {
      const path = join(this.dir, `${base}.${format}`);
      const st = statSync(path, { throwIfNoEntry: false }); // every start asks: no thread-pool trip for a stat
      if (!st?.isFile()) continue;
      return this.usable(name, path, format, st);
    }
    throw ValidationError.field('image', `image ${JSON.stringify(name)} is not in this node's store (${this.dir})`);
  }

  /** The copy of library image `id` and its pinned format (ValidationError when it is not here or not usable). */
  async resolveLibrary(id: string): Promise<{ path: string; format: ImageFormat }> {
    if (!LIBRARY_ID_RE.test(id)) throw ValidationError.field('libraryImageId', `${JSON.stringify(id)} is not a library image id`);
    for (const format of FORMATS) {
      const path = join(this.libraryDir, `${id}.${format}`);
      const st = statSync(path, { throwIfNoEntry: false });
      if (st?.isFile()) return this.usable(`library image ${id}`, path, format, st);
    }
    throw ValidationError.field('image', `library image ${id} has not been fetched to this node (${this.libraryDir})`);
  }

  async hasLibraryCopy(id: string): Promise<boolean> {
    try {
      await this.resolveLibrary(id);
      return true;
    } catch {
      return false;
    }
  }

  /** The virtual size of an image file, via `qemu-img info` with the format pinned. */
  async virtualSize(path: string, format: ImageFormat = 'qcow2'): Promise<number> {
    // Every start and every incoming migration asks; qemu-img is a process spawn (tens of ms under
    // TCG load), and a store file only changes by being replaced: remember it per file version.
    const st = statSync(path);
    const version = `${format}:${st.ino}:${st.size}:${st.mtimeMs}`;
    const known = this.virtualSizes.get(path);
    if (known?.version === version) return known.bytes;
    const info = JSON.parse(await run(this.qemuImg, ['info', '-f', format, '--output=json', path])) as Record<string, unknown>;
    const virtual = Number(info['virtual-size']);
    if (!Number.isFinite(virtual) || virtual <= 0) throw new Error(`qemu-img info ${path}: no virtual size`);
    this.virtualSizes.set(path, { version, bytes: virtual });
    return virtual;
  }

  /**
   * Every image of the store, library copies included, each inspected as hostile (results cached
   * while the file is unchanged). Rejected files are listed with the reason. Never throws.
   */
  async list(): Promise<ImageEntry[]> {
    const out: ImageEntry[] = [];
    const seen = new Set<string>();
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const byName = new Map<string, string>();
    for (const file of names.filter((n) => !n.startsWith('.')).sort()) {
      const claimed = formatOfName(file);
      if (!claimed) continue;
      const path = join(this.dir, file);
      const st = await stat(path).catch(() => undefined);
      if (!st?.isFile()) continue;
      const name = file.slice(0, -(claimed.length + 1));
      seen.add(path);
      const e = await this.entry(name, path, claimed, st);
      const outside = this.outsideStore(path);
      if (outside) e.rejected = { reason: 'outside-store', message: `${file} is a link to ${outside}, outside the image store` };
      if (!e.rejected && !IMAGE_NAME_RE.test(name)) e.rejected = { reason: 'bad-name', message: `${JSON.stringify(file)}: image names are letters, digits, '.', '_' and '-'` };
      const first = byName.get(name);
      if (!e.rejected && first) e.rejected = { reason: 'duplicate-name', message: `${file}: ${first} has the same name; one name, one file` };
      if (!e.rejected) byName.set(name, file);
      out.push(e);
    }
    const library = await readdir(this.libraryDir).catch(() => [] as string[]);
    for (const file of library.filter((n) => !n.startsWith('.')).sort()) {
      const claimed = formatOfName(file);
      const id = claimed ? file.slice(0, -(claimed.length + 1)) : '';
      if (!claimed || !LIBRARY_ID_RE.test(id)) continue;
      const path = join(this.libraryDir, file);
      const st = await stat(path).catch(() => undefined);
      if (!st?.isFile()) continue;
      seen.add(path);
      out.push({ ...(await this.entry(`library/${id}`, path, claimed, st)), libraryImageId: id });
    }
    for (const k of this.cache.keys()) if (!seen.has(k)) this.cache.delete(k);
    return out;
  }

  async beginFetch(id: string, format: ImageFormat): Promise<FetchTarget> {
    if (!LIBRARY_ID_RE.test(id)) throw ValidationError.field('imageId', `${JSON.stringify(id)} is not a library image id`);
    if (!FORMATS.includes(format)) throw ValidationError.field('format', `must be one of ${FORMATS.join(', ')} (got ${JSON.stringify(format)})`);
    await mkdir(this.libraryDir, { recursive: true, mode: 0o700 });
    const path = join(this.libraryDir, `.fetch-${id}-${randomUUID()}`);
    const final = join(this.libraryDir, `${id}.${format}`);
    let done = false;
    return {
      path,
      commit: async () => {
        try {
          await inspectImage(path, { expectedFormat: format, allowBackingFile: false, allowDataFile: false, maxVirtualSizeBytes: this.maxVirtualBytes });
        } catch (error) {
          if (error instanceof ImageRejectedError) throw ValidationError.field('image', `fetched library image ${id} rejected (${error.reason}): ${error.message}`);
          throw error;
        }
        await fsyncPath(path);
        await rename(path, final);
        await fsyncPath(this.libraryDir);
        done = true;
        return final;
      },
      abort: async () => {
        if (!done) await rm(path, { force: true });
      },
    };
  }

  async resolveSendPath(path: string, options: { allowStaging: boolean }): Promise<string> {
    const storeDir = await realpath(this.dir).catch(() => this.dir);
    const lexical = storeFilePath(this.dir, path);
    let real: string;
    try {
      real = await realpath(lexical);
    } catch {
      throw ValidationError.field('path', `${JSON.stringify(path)}: no such file in the node's image store (${this.dir})`);
    }
    if (!isInside(storeDir, real)) throw ValidationError.field('path', `${JSON.stringify(path)} resolves to ${real}, outside the node's image store (${this.dir})`);
    const parts = relative(storeDir, real).split(sep);
    if (parts.some((p) => p.startsWith('.'))) throw ValidationError.field('path', `${JSON.stringify(path)} is a hidden file (a transfer in progress?)`);
    if (parts[0] === 'library') throw ValidationError.field('path', `${JSON.stringify(path)} is a copy of a library image: it belongs to its project and cannot be imported`);
    if (parts[0] === 'staging' ? !options.allowStaging || parts.length !== 2 : parts.length !== 1) {
      throw ValidationError.field('path', `${JSON.stringify(path)} is not an image of the store: name a file directly in ${this.dir}`);
    }
    const st = await lstat(real);
    if (!st.isFile()) throw ValidationError.field('path', `${JSON.stringify(path)} is not a regular file`);
    return real;
  }

  async removeStaged(path: string): Promise<void> {
    const storeDir = await realpath(this.dir).catch(() => this.dir);
    const parts = relative(storeDir, path).split(sep);
    if (parts[0] !== 'staging' || parts.length !== 2 || parts[1]!.startsWith('.')) throw ValidationError.field('path', `${path} is not a staging file of the store`);
    await rm(path, { force: true });
  }

  watch(onChange: () => void): () => void {
    let timer: NodeJS.Timeout | undefined;
    const fire = () => {
      if (timer) clearTimeout(timer);
      timer = setTimeout(() => {
        timer = undefined;
        onChange();
      }, DEBOUNCE_MS);
      timer.unref();
    };
    const watchers: FSWatcher[] = [];
    for (const dir of [this.dir, this.libraryDir]) {
      try {
        const w = fsWatch(dir, { persistent: false }, fire);
        w.on('error', () => w.close());
        watchers.push(w);
      } catch {
        // No directory yet, or no inotify watches left: the periodic rescan still notices changes.
      }
    }
    const periodic = setInterval(onChange, RESCAN_MS);
    periodic.unref();
    return () => {
      if (timer) clearTimeout(timer);
      clearInterval(periodic);
      for (const w of watchers) w.close();
    };
  }

  /** The entry of a file, from the cache while the file is unchanged (same inode, size, times). */
  private async entry(name: string, path: string, claimed: ImageFormat, st: { ino: number; size: number; mtimeMs: number; ctimeMs: number }): Promise<ImageEntry> {
    const key = `${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
    let hit = this.cache.get(path);
    if (!hit || hit.key !== key) {
      hit = await this.inspect(path, claimed, key);
      this.cache.set(path, hit);
    }
    const e: ImageEntry = { name, format: hit.format, sizeBytes: st.size, virtualSizeBytes: hit.virtualSizeBytes, path, metadataJson: hit.metadataJson };
    if (hit.rejected) e.rejected = { ...hit.rejected };
    return e;
  }

  /** disk-formats intake on a store file: never throws, a failure is a rejection. */
  private async inspect(path: string, claimed: ImageFormat, key: string): Promise<Inspected> {
    try {
      const info = await inspectImage(path, { expectedFormat: claimed, allowBackingFile: false, allowDataFile: false, maxVirtualSizeBytes: this.maxVirtualBytes });
      return { key, format: info.format, virtualSizeBytes: info.virtualSizeBytes, metadataJson: info.metadata ? JSON.stringify(info.metadata) : '' };
    } catch (error) {
      const reason = error instanceof ImageRejectedError ? error.reason : error instanceof DiskFormatError ? 'bad-image' : 'unreadable';
      return { key, format: claimed, virtualSizeBytes: 0, metadataJson: '', rejected: { reason, message: (error as Error).message } };
    }
  }

  /** The real path of `path` when a symlink takes it outside the store, else undefined. */
  private outsideStore(path: string): string | undefined {
    const real = (p: string) => {
      try {
        return realpathSync(p);
      } catch {
        return p;
      }
    };
    const [dir, file] = [real(this.dir), real(path)];
    return isInside(dir, file) ? undefined : file;
  }

  /**
   * A file that passed the checks, or ValidationError naming why it did not; `st` is the file's
   * stat its caller just made. Every start asks (an incoming migration's on its critical path): the
   * realpaths are metadata calls of microseconds, made here rather than through the thread pool.
   */
  private async usable(what: string, path: string, format: ImageFormat, st: Stats): Promise<{ path: string; format: ImageFormat }> {
    const outside = this.outsideStore(path);
    if (outside) throw ValidationError.field('image', `image ${JSON.stringify(what)} is rejected (outside-store): it links to ${outside}`);
    const e = await this.entry(what, path, format, st);
    if (e.rejected) throw ValidationError.field('image', `image ${JSON.stringify(what)} is rejected (${e.rejected.reason}): ${e.rejected.message}`);
    return { path, format };
  }
}

async function fsyncPath(path: string): Promise<void> {
  const h = await open(path, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
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
