/**
 * Image digests that survive metadata edits cheaply: SHA-256 over the SHA-256 of each 64 MiB
 * block of the file (the last block may be shorter), written `sha256-64m:<hex>`. A metadata write
 * changes a few KiB near the start of the file; with the per-block hashes kept, only the blocks it
 * touched are read again (`updateFileDigest`), where a plain SHA-256 of a 10 GiB image would
 * re-read all of it. The same digest, from a shell:
 *
 *   split -b 64M --filter='sha256sum | head -c 64 | xxd -r -p' FILE | sha256sum
 */
import { createHash, type Hash } from 'node:crypto';
import { open, stat } from 'node:fs/promises';

/** Bytes per digest block. */
export const DIGEST_BLOCK_BYTES = 64 * 1024 * 1024;

/** Prefix naming the digest scheme. */
export const DIGEST_PREFIX = 'sha256-64m:';

/** A file's digest and what it was computed from. */
export interface FileDigest {
  /** `sha256-64m:<64 hex digits>`. */
  digest: string;
  /** The 32-byte SHA-256 of every block, concatenated. */
  blocks: Buffer;
  /** The file's size when it was hashed. */
  bytes: number;
}

/** The digest string of a list of block hashes. */
export function digestOfBlocks(blocks: Buffer): string {
  return DIGEST_PREFIX + createHash('sha256').update(blocks).digest('hex');
}

/** True when `s` is a digest string of this scheme. */
export function isDigest(s: unknown): s is string {
  return typeof s === 'string' && /^sha256-64m:[0-9a-f]{64}$/.test(s);
}

/**
 * Computes the digest of a stream of bytes fed in order, in any chunking: a receiver hashes what
 * it writes, so verifying costs no second read.
 */
export class BlockDigest {
  private readonly done: Buffer[] = [];
  private current: Hash = createHash('sha256');
  private inBlock = 0;
  private total = 0;

  constructor(private readonly blockBytes = DIGEST_BLOCK_BYTES) {
    if (!Number.isSafeInteger(blockBytes) || blockBytes < 1) throw new RangeError('blockBytes must be a positive integer');
  }

  /** Bytes fed so far. */
  get bytes(): number {
    return this.total;
  }

  /** Feeds the next bytes. */
  update(chunk: Uint8Array): void {
    let at = 0;
    while (at < chunk.length) {
      const take = Math.min(chunk.length - at, this.blockBytes - this.inBlock);
      this.current.update(chunk.subarray(at, at + take));
      this.inBlock += take;
      this.total += take;
      at += take;
      if (this.inBlock === this.blockBytes) {
        this.done.push(this.current.digest());
        this.current = createHash('sha256');
        this.inBlock = 0;
      }
    }
  }

  /** The digest of everything fed. Call once. */
  finish(): FileDigest {
    if (this.inBlock > 0) this.done.push(this.current.digest());
    const blocks = Buffer.concat(this.done);
    return { digest: digestOfBlocks(blocks), blocks, bytes: this.total };
  }
}

const READ_BYTES = 4 * 1024 * 1024;

/** Hashes blocks `[fromBlock, toBlock)` of a file, returning each block's hash. */
async function hashBlocks(path: string, fromBlock: number, toBlock: number, size: number, blockBytes: number): Promise<Buffer[]> {
  const handle = await open(path, 'r');
  try {
    const out: Buffer[] = [];
    const buf = Buffer.allocUnsafe(Math.min(READ_BYTES, blockBytes));
    for (let b = fromBlock; b < toBlock; b++) {
      const start = b * blockBytes;
      const end = Math.min(size, start + blockBytes);
      const h = createHash('sha256');
      for (let at = start; at < end; ) {
        const { bytesRead } = await handle.read(buf, 0, Math.min(buf.length, end - at), at);
        if (bytesRead === 0) throw new Error(`${path}: file shrank while it was being hashed`);
        h.update(buf.subarray(0, bytesRead));
        at += bytesRead;
      }
      out.push(h.digest());
    }
    return out;
  } finally {
    await handle.close();
  }
}

/** The digest of a whole file (reads all of it). */
export async function digestFile(path: string, blockBytes = DIGEST_BLOCK_BYTES): Promise<FileDigest> {
  const { size } = await stat(path);
  const n = Math.ceil(size / blockBytes);
  const blocks = Buffer.concat(await hashBlocks(path, 0, n, size, blockBytes));
  return { digest: digestOfBlocks(blocks), blocks, bytes: size };
}

/**
 * The digest of a file after the byte ranges `written` changed, given its digest before: only
 * the blocks those ranges touch (and every block from the old end on, when the size changed) are
 * read again. `previous.blocks` must be the hashes of the same file before the writes.
 */
export async function updateFileDigest(
  path: string,
  previous: Pick<FileDigest, 'blocks' | 'bytes'>,
  written: ReadonlyArray<{ offset: number; length: number }>,
  blockBytes = DIGEST_BLOCK_BYTES,
): Promise<FileDigest> {
  const { size } = await stat(path);
  const n = Math.ceil(size / blockBytes);
  const old = previous.blocks;
  if (old.length !== Math.ceil(previous.bytes / blockBytes) * 32) throw new RangeError('previous digest blocks do not match its size');
  const dirty = new Set<number>();
  for (const w of written) {
    if (w.length <= 0) continue;
    for (let b = Math.floor(w.offset / blockBytes); b <= Math.floor((w.offset + w.length - 1) / blockBytes); b++) dirty.add(b);
  }
  if (size !== previous.bytes) {
    for (let b = Math.floor(Math.min(size, previous.bytes) / blockBytes); b < n; b++) dirty.add(b);
  }
  const parts: Buffer[] = [];
  for (let b = 0; b < n; b++) {
    if (dirty.has(b)) parts.push((await hashBlocks(path, b, b + 1, size, blockBytes))[0]!);
    else parts.push(old.subarray(b * 32, b * 32 + 32));
  }
  const blocks = Buffer.concat(parts);
  return { digest: digestOfBlocks(blocks), blocks, bytes: size };
}
