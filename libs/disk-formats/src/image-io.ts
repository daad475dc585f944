import { constants as fsConstants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { ImageRejectedError } from './errors';

/**
 * Random access to an image file. Parsers take this instead of a path so that they stay pure
 * and fuzzable: the same code runs over a real file (FileImageIo) or bytes in memory
 * (MemoryImageIo). Offsets and lengths are plain numbers: callers check them against `size`
 * before they read, so nothing beyond 2^53 reaches here.
 */
export interface ImageIo {
  /** Current file size in bytes. */
  readonly size: number;
  /** Reads up to `length` bytes at `offset`; the result is shorter only at end of file. */
  read(offset: number, length: number): Promise<Buffer>;
  /** Writes `data` at `offset` (never past the current end: our writers do not grow files). */
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Makes every completed write durable (fsync). Ordering of crash-safe updates hangs on this. */
  flush(): Promise<void>;
}

/**
 * Reads exactly `length` bytes or throws ImageRejectedError('truncated') naming `what`,
 * e.g. "vhdx region table at 196608: needs 65536 bytes but the file ends at 200000".
 */
export async function readExact(io: ImageIo, offset: number, length: number, what: string): Promise<Buffer> {
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > io.size) {
    throw new ImageRejectedError(
      'truncated',
      `${what}: needs ${length} bytes at offset ${offset} but the file ends at ${io.size} (truncated?)`,
    );
  }
  const buf = await io.read(offset, length);
  if (buf.length !== length) {
    throw new ImageRejectedError('truncated', `${what}: short read at offset ${offset} (file truncated while reading?)`);
  }
  return buf;
}

/** An ImageIo over an open file handle; counts the bytes it reads (the read-cost tests use it). */
export class FileImageIo implements ImageIo {
  /** Total bytes returned by `read` since opening. */
  bytesRead = 0;

  private constructor(
    private readonly handle: FileHandle,
    public size: number,
    private readonly writable: boolean,
  ) {}

  /**
   * Opens `path` read-only or read-write. Refuses anything but a regular file (a FIFO would block
   * us, a device has no meaningful size). O_NONBLOCK keeps the open itself from hanging on a FIFO.
   */
  static async open(path: string, mode: 'read' | 'write'): Promise<FileImageIo> {
    const flags = (mode === 'write' ? fsConstants.O_RDWR : fsConstants.O_RDONLY) | fsConstants.O_NONBLOCK;
    const handle = await open(path, flags);
    try {
      const st = await handle.stat();
      if (!st.isFile()) {
        throw new ImageRejectedError('not-a-regular-file', `${path}: not a regular file`);
      }
      return new FileImageIo(handle, st.size, mode === 'write');
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  /** Wraps an already-open handle (caller keeps ownership and closes it). */
  static async fromHandle(handle: FileHandle): Promise<FileImageIo> {
    const st = await handle.stat();
    if (!st.isFile()) throw new ImageRejectedError('not-a-regular-file', 'file handle: not a regular file');
    return new FileImageIo(handle, st.size, true);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const len = Math.max(0, Math.min(length, this.size - offset));
    // Only the bytes actually read are returned, so the unzeroed allocation never leaks.
    const buf = Buffer.allocUnsafe(len);
    let done = 0;
    while (done < len) {
      const { bytesRead } = await this.handle.read(buf, done, len - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    this.bytesRead += done;
    return done === len ? buf : buf.subarray(0, done);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (!this.writable) throw new Error('FileImageIo opened read-only');
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.handle.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
    if (offset + data.length > this.size) this.size = offset + data.length;
  }

  async flush(): Promise<void> {
    await this.handle.sync();
  }

  /** Closes the underlying handle. */
  async close(): Promise<void> {
    await this.handle.close();
  }
}

/** One recorded mutation of a MemoryImageIo, for crash simulation. */
export type RecordedOp = { kind: 'write'; offset: number; data: Buffer } | { kind: 'flush' };

/**
 * An ImageIo over a Buffer. Records writes and flushes so tests can replay any prefix of them:
 * that is how crash safety is checked without pulling a power cord.
 */
export class MemoryImageIo implements ImageIo {
  /** Every write and flush in order. */
  readonly ops: RecordedOp[] = [];
  /** Total bytes returned by `read`. */
  bytesRead = 0;

  constructor(public bytes: Buffer) {}

  get size(): number {
    return this.bytes.length;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const end = Math.min(this.bytes.length, offset + length);
    const out = Buffer.from(this.bytes.subarray(Math.min(offset, end), end));
    this.bytesRead += out.length;
    return out;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (offset + data.length > this.bytes.length) {
      const grown = Buffer.alloc(offset + data.length);
      this.bytes.copy(grown);
      this.bytes = grown;
    }
    this.bytes.set(data, offset);
    this.ops.push({ kind: 'write', offset, data: Buffer.from(data) });
  }

  async flush(): Promise<void> {
    this.ops.push({ kind: 'flush' });
  }
}

/**
 * Serves reads that fall inside already-fetched extents from memory, and passes the rest
 * through. Parsers fetch a few extents in one go (e.g. the file's first 4 KiB) and then read
 * field by field without paying a system call each time.
 */
export class PrefetchIo implements ImageIo {
  private readonly extents: Array<{ offset: number; bytes: Buffer }> = [];

  constructor(private readonly base: ImageIo) {}

  get size(): number {
    return this.base.size;
  }

  /** Fetches [offset, offset + length) (clipped to the file) into the cache. */
  async prefetch(offset: number, length: number): Promise<void> {
    if (offset >= this.base.size) return;
    this.extents.push({ offset, bytes: await this.base.read(offset, Math.min(length, this.base.size - offset)) });
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const end = Math.min(offset + length, this.base.size);
    for (const e of this.extents) {
      if (offset >= e.offset && end <= e.offset + e.bytes.length) return Buffer.from(e.bytes.subarray(offset - e.offset, end - e.offset));
    }
    return this.base.read(offset, length);
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.extents.length = 0;
    await this.base.write(offset, data);
  }

  async flush(): Promise<void> {
    await this.base.flush();
  }
}
