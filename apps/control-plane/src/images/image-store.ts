import { spawn } from 'node:child_process';
import { constants as fsConstants, createReadStream, createWriteStream, ReadStream } from 'node:fs';
import { copyFile, link, mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Inject, Injectable, OnModuleInit } from '@nestjs/common';
import { PayloadTooLargeError, uuidv7 } from '@hyperplane/domain';
import {
  BlockDigest,
  FileDigest,
  FileImageIo,
  ImageInfo,
  ImageMetadata,
  IntakeOptions,
  digestFile,
  inspectImage,
  readMetadata,
  updateFileDigest,
  writeMetadataIo,
} from '@hyperplane/disk-formats';
import { Config, CONFIG } from '../config';

/** Limits qemu-img runs under at intake: hostile images must not exhaust the control plane's host. */
export const QEMU_IMG_LIMITS = { cpuSeconds: 30, addressSpaceBytes: 2 * 1024 ** 3, timeoutSeconds: 60 } as const;

/** An upload (or copy-on-write) file untouched this long was abandoned by a crash. */
const STALE_UPLOAD_MS = 60 * 60 * 1000;

/** Temporary files of the store: uploads and imports being received, copy-on-write rewrites. */
const TEMP_PREFIXES = ['.upload-', '.cow-'];

/** Prefix of the hard links that pin a file's content while a transfer reads it. */
const SNAPSHOT_PREFIX = '.xfer-';

/** A file after a metadata write: its size, digest (with block hashes) and mtime. */
export interface WrittenFile {
  sizeBytes: number;
  digest: FileDigest;
  mtimeMs: number;
}

/** What `qemu-img check` said about a file. */
export interface CheckResult {
  ok: boolean;
  /** qemu-img's own words when it is not ok. */
  message: string;
}

/**
 * Image files under `$HYPERPLANE_DATA_DIR/images/<id>.<format>`: receiving uploads into temporary
 * files, intake inspection (disk-formats, then qemu-img under CPU, memory and time limits), the
 * atomic move into place, metadata reads and writes, removal. The only code that touches them.
 */
@Injectable()
export class ImageStore implements OnModuleInit {
  readonly dir: string;

  constructor(@Inject(CONFIG) private readonly config: Config) {
    this.dir = join(config.dataDir, 'images');
  }

  /**
   * Removes uploads a crash interrupted: `.upload-*` files nobody has written to for an hour (an
   * upload in progress, here or in a replica sharing the directory, keeps its file's mtime fresh).
   */
  async onModuleInit(): Promise<void> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    const cutoff = Date.now() - STALE_UPLOAD_MS;
    for (const n of names.filter((x) => TEMP_PREFIXES.some((p) => x.startsWith(p)))) {
      const p = join(this.dir, n);
      const st = await stat(p).catch(() => undefined);
      if (st && st.mtimeMs < cutoff) await this.remove(p);
    }
  }

  /**
   * Streams `body` into a new temporary file in the store, never holding it in memory; more than
   * `maxBytes` is {@link PayloadTooLargeError} and leaves no file behind. Returns its path and size.
   */
  async receive(body: Readable, maxBytes = this.config.maxImageBytes): Promise<{ path: string; bytes: number; digest: FileDigest }> {
    const path = await this.newTempPath();
    let bytes = 0;
    const hash = new BlockDigest();
    const limit = new Transform({
      transform(chunk: Buffer, _enc, done) {
        bytes += chunk.length;
        if (bytes > maxBytes) return done(new PayloadTooLargeError(`image upload is larger than ${maxBytes} bytes (HYPERPLANE_MAX_IMAGE_BYTES)`));
        hash.update(chunk);
        done(null, chunk);
      },
    });
    try {
      await pipeline(body, limit, createWriteStream(path, { flags: 'wx', mode: 0o600 }));
    } catch (e) {
      await this.remove(path);
      throw e;
    }
    return { path, bytes, digest: hash.finish() };
  }

  /** A new temporary path in the store (`.upload-*`: removed by the start-up sweep once stale), not created yet. */
  async newTempPath(): Promise<string> {
    await mkdir(this.dir, { recursive: true });
    return join(this.dir, `.upload-${uuidv7()}`);
  }

  /** disk-formats intake: format from magic bytes, every hostile structure rejected (throws ImageRejectedError). */
  inspect(path: string, options: IntakeOptions = {}): Promise<ImageInfo> {
    return inspectImage(path, { maxVirtualSizeBytes: this.config.maxImageVirtualBytes, allowBackingFile: false, allowDataFile: false, ...options });
  }

  /**
   * `qemu-img check` with the format pinned (QEMU never probes), under `prlimit` CPU-time and
   * address-space limits and a wall-clock timeout. Raw images have nothing to check.
   */
  check(path: string, format: 'qcow2' | 'vhdx' | 'raw'): Promise<CheckResult> {
    if (format === 'raw') return Promise.resolve({ ok: true, message: '' });
    const L = QEMU_IMG_LIMITS;
    const args = [`--cpu=${L.cpuSeconds}`, `--as=${L.addressSpaceBytes}`, '--', 'timeout', '-s', 'KILL', String(L.timeoutSeconds), 'qemu-img', 'check', '-f', format, '--output=json', path];
    return new Promise((resolve) => {
      const child = spawn('prlimit', args, { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.on('data', (d) => (out = (out + d).slice(-65536)));
      child.stderr.on('data', (d) => (err = (err + d).slice(-65536)));
      child.on('error', (e) => resolve({ ok: false, message: `cannot run qemu-img: ${e.message}` }));
      child.on('close', (code, signal) => {
        // 0: clean; 3: leaked clusters only (harmless, no data at risk).
        if (code === 0 || code === 3) return resolve({ ok: true, message: '' });
        if (signal || code === 137 || code === 124) return resolve({ ok: false, message: `qemu-img check exceeded its limits (${QEMU_IMG_LIMITS.timeoutSeconds} s, ${QEMU_IMG_LIMITS.cpuSeconds} s CPU, ${QEMU_IMG_LIMITS.addressSpaceBytes / 1024 ** 3} GiB)` });
        let detail = err.trim().split('\n').pop() ?? '';
        try {
          const j = JSON.parse(out) as { corruptions?: number; 'check-errors'?: number };
          if (j.corruptions) detail = `${j.corruptions} corruptions`;
          else if (j['check-errors']) detail = `${j['check-errors']} check errors`;
        } catch {
          /* not JSON: keep stderr */
        }
        resolve({ ok: false, message: `qemu-img check failed (exit ${code}): ${detail.replace(path, '<upload>')}` });
      });
    });
  }

  /** Moves an inspected upload to its final name, atomically (same directory, same filesystem). */
  async commit(tmpPath: string, id: string, format: string): Promise<string> {
    const path = this.pathOf(id, format);
    await rename(tmpPath, path);
    return path;
  }

  /** Where an image's file lives. */
  pathOf(id: string, format: string): string {
    return join(this.dir, `${id}.${format}`);
  }

  /** Removes a file; a missing one is not an error. */
  async remove(path: string): Promise<void> {
    await rm(path, { force: true });
  }

  /** The metadata stored inside the file (null when it has none). */
  readMetadata(path: string): Promise<ImageMetadata | null> {
    return readMetadata(path);
  }

  /**
   * Writes metadata into the file crash-safely (the caller serialises writers of one file) and
   * updates its digest from `previous` by re-hashing only the blocks the write touched (a full
   * hash when `previous` is missing). While a transfer or download reads the file through a
   * snapshot link (the file has more than one link), the write goes to a copy that then replaces
   * the file atomically, so the reader keeps the bytes it started with.
   */
  async writeMetadata(path: string, metadata: ImageMetadata, previous?: Pick<FileDigest, 'blocks' | 'bytes'>): Promise<WrittenFile> {
    const st = await stat(path);
    let target = path;
    if (st.nlink > 1) {
      target = join(this.dir, `.cow-${uuidv7()}`);
      await copyFile(path, target, fsConstants.COPYFILE_FICLONE);
    }
    try {
      const io = await FileImageIo.open(target, 'write');
      let ranges;
      try {
        ranges = (await writeMetadataIo(io, metadata)).writtenRanges;
      } finally {
        await io.close();
      }
      const digest = previous && previous.bytes === st.size ? await updateFileDigest(target, previous, ranges) : await digestFile(target);
      if (target !== path) {
        await fsyncFile(target);
        await rename(target, path);
        await fsyncFile(this.dir);
      }
      const after = await stat(path);
      return { sizeBytes: after.size, digest, mtimeMs: after.mtimeMs };
    } catch (e) {
      if (target !== path) await this.remove(target);
      throw e;
    }
  }

  /** The digest of a whole file and its mtime (reads all of it). */
  async digest(path: string): Promise<{ digest: FileDigest; mtimeMs: number }> {
    const [digest, st] = await Promise.all([digestFile(path), stat(path)]);
    return { digest, mtimeMs: st.mtimeMs };
  }

  /** Size and mtime of a file, to tell whether its recorded digest still describes it. */
  async fileState(path: string): Promise<{ sizeBytes: number; mtimeMs: number }> {
    const st = await stat(path);
    return { sizeBytes: st.size, mtimeMs: st.mtimeMs };
  }

  /**
   * Pins the file's current content for a reader: a hard link `.xfer-<key>` next to it. Writers
   * see the second link and copy on write (see writeMetadata), so the link keeps these bytes until
   * `release`. Call under the lock that serialises writers of the file.
   */
  async snapshot(path: string, key: string): Promise<string> {
    const snap = join(this.dir, `${SNAPSHOT_PREFIX}${key}`);
    await link(path, snap);
    return snap;
  }

  /** Keys of the snapshot links in the store (for sweeping those whose reader is gone). */
  async snapshotKeys(): Promise<string[]> {
    const names = await readdir(this.dir).catch(() => [] as string[]);
    return names.filter((n) => n.startsWith(SNAPSHOT_PREFIX)).map((n) => n.slice(SNAPSHOT_PREFIX.length));
  }

  /** Removes a snapshot link (by key). */
  async release(key: string): Promise<void> {
    await this.remove(join(this.dir, `${SNAPSHOT_PREFIX}${key}`));
  }

  /**
   * A stream of the file as it is now, and its size, for download: read through a snapshot link
   * (released when the stream closes), so a metadata write during the download does not tear it.
   */
  async open(path: string): Promise<{ stream: ReadStream; bytes: number }> {
    const key = `dl-${uuidv7()}`;
    const snap = await this.snapshot(path, key);
    const s = await stat(snap);
    const stream = createReadStream(snap);
    stream.once('close', () => void this.release(key));
    return { stream, bytes: s.size };
  }
}

async function fsyncFile(path: string): Promise<void> {
  const h = await open(path, 'r');
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}
