import { spawn } from 'node:child_process';
import { createReadStream, createWriteStream, ReadStream } from 'node:fs';
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Inject, Injectable, OnModuleInit } from '@nestjs/common';
import { PayloadTooLargeError, uuidv7 } from '@hyperplane/domain';
import { ImageInfo, ImageMetadata, IntakeOptions, inspectImage, readMetadata, writeMetadata } from '@hyperplane/disk-formats';
import { Config, CONFIG } from '../config';

/** Limits qemu-img runs under at intake: hostile images must not exhaust the control plane's host. */
export const QEMU_IMG_LIMITS = { cpuSeconds: 30, addressSpaceBytes: 2 * 1024 ** 3, timeoutSeconds: 60 } as const;

/** An upload file untouched this long was abandoned by a crash. */
const STALE_UPLOAD_MS = 60 * 60 * 1000;

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
    for (const n of names.filter((x) => x.startsWith('.upload-'))) {
      const p = join(this.dir, n);
      const st = await stat(p).catch(() => undefined);
      if (st && st.mtimeMs < cutoff) await this.remove(p);
    }
  }

  /**
   * Streams `body` into a new temporary file in the store, never holding it in memory; more than
   * `maxBytes` is {@link PayloadTooLargeError} and leaves no file behind. Returns its path and size.
   */
  async receive(body: Readable, maxBytes = this.config.maxImageBytes): Promise<{ path: string; bytes: number }> {
    await mkdir(this.dir, { recursive: true });
    const path = join(this.dir, `.upload-${uuidv7()}`);
    let bytes = 0;
    const limit = new Transform({
      transform(chunk: Buffer, _enc, done) {
        bytes += chunk.length;
        if (bytes > maxBytes) return done(new PayloadTooLargeError(`image upload is larger than ${maxBytes} bytes (HYPERPLANE_MAX_IMAGE_BYTES)`));
        done(null, chunk);
      },
    });
    try {
      await pipeline(body, limit, createWriteStream(path, { flags: 'wx', mode: 0o600 }));
    } catch (e) {
      await this.remove(path);
      throw e;
    }
    return { path, bytes };
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

  /** Writes metadata into the file crash-safely (caller serialises writers of one file); returns the new file size. */
  async writeMetadata(path: string, metadata: ImageMetadata): Promise<number> {
    await writeMetadata(path, metadata);
    return (await stat(path)).size;
  }

  /** A stream of the file, and its size, for download. */
  async open(path: string): Promise<{ stream: ReadStream; bytes: number }> {
    const s = await stat(path);
    return { stream: createReadStream(path), bytes: s.size };
  }
}
