import { crc32c, crc32cWithZeroedField } from './crc32c';
import { ImageRejectedError } from './errors';
import type { ImageIo } from './image-io';

/**
 * The VHDX metadata log (MS-VHDX 2.3): a circular buffer of 4 KiB sectors holding log entries.
 * An entry is a 64-byte header, 32-byte descriptors (data or zero), then one 4 KiB data sector
 * per data descriptor; it is valid when its CRC-32C (over the whole entry, checksum field taken
 * as zero) matches and its LogGuid equals the current header's. The active sequence is the run
 * of consecutive valid entries (sequence numbers +1 each) ending in the highest sequence number;
 * replaying it means applying its descriptors in order. All numbers are little-endian.
 */

/** Size of a log sector and of every log-described write. */
export const LOG_SECTOR = 4096;
const ENTRY_HEADER = 64;
const DESCRIPTOR = 32;

/** One write a log replay performs: 4 KiB of data, or `length` zero bytes when `data` is null. */
export interface LogPatch {
  offset: number;
  length: number;
  data: Buffer | null;
}

/** The active log sequence found in a log region. */
export interface ActiveLogSequence {
  /** Sequence numbers of its entries, oldest first. */
  sequenceNumbers: bigint[];
  /** Writes to replay, in order. */
  patches: LogPatch[];
  /** Largest FlushedFileOffset of its entries: the file must be at least this long. */
  flushedFileOffset: bigint;
  /** Largest LastFileOffset: the file size the writer meant after replay. */
  lastFileOffset: bigint;
}

interface ParsedEntry {
  position: number;
  length: number;
  sequence: bigint;
  patches: LogPatch[];
  flushedFileOffset: bigint;
  lastFileOffset: bigint;
}

/** Reads `length` bytes of the circular log starting at `position`, wrapping at its end. */
function circular(log: Buffer, position: number, length: number): Buffer {
  if (position + length <= log.length) return log.subarray(position, position + length);
  const first = log.subarray(position);
  return Buffer.concat([first, log.subarray(0, length - first.length)]);
}

/** Number of 4 KiB sectors holding the header and `count` descriptors. */
export function descriptorSectors(count: number): number {
  return Math.ceil((count * DESCRIPTOR + ENTRY_HEADER) / LOG_SECTOR);
}

/** Parses the entry at `position`; returns null when it is not a valid entry of this log. */
function parseEntry(log: Buffer, position: number, logGuid: Buffer, budget: { bytes: number }): ParsedEntry | null {
  const head = log.subarray(position, position + ENTRY_HEADER);
  if (head.length < ENTRY_HEADER || head.toString('latin1', 0, 4) !== 'loge') return null;
  const length = head.readUInt32LE(8);
  const sequence = head.readBigUInt64LE(16);
  const count = head.readUInt32LE(24);
  if (length === 0 || length % LOG_SECTOR !== 0 || length > log.length) return null;
  if (sequence === 0n) return null;
  if (!head.subarray(32, 48).equals(logGuid)) return null;
  const sectors = length / LOG_SECTOR;
  const descSectors = descriptorSectors(count);
  if (descSectors > sectors) return null;
  budget.bytes -= length;
  if (budget.bytes < 0) {
    throw new ImageRejectedError('bad-log', 'vhdx log: too many overlapping candidate entries (checksum work budget exceeded)');
  }
  const entry = circular(log, position, length);
  if (crc32cWithZeroedField(entry, 4) !== entry.readUInt32LE(4)) return null;

  const patches: LogPatch[] = [];
  let dataSector = descSectors;
  for (let i = 0; i < count; i++) {
    const d = entry.subarray(ENTRY_HEADER + i * DESCRIPTOR, ENTRY_HEADER + (i + 1) * DESCRIPTOR);
    const sig = d.toString('latin1', 0, 4);
    const fileOffset = d.readBigUInt64LE(16);
    if (d.readBigUInt64LE(24) !== sequence || fileOffset % BigInt(LOG_SECTOR) !== 0n) return null;
    if (fileOffset > BigInt(Number.MAX_SAFE_INTEGER)) return null;
    if (sig === 'zero') {
      const zeroLength = d.readBigUInt64LE(8);
      if (zeroLength % BigInt(LOG_SECTOR) !== 0n || zeroLength > BigInt(Number.MAX_SAFE_INTEGER)) return null;
      patches.push({ offset: Number(fileOffset), length: Number(zeroLength), data: null });
    } else if (sig === 'desc') {
      if (dataSector >= sectors) return null;
      const s = entry.subarray(dataSector * LOG_SECTOR, (dataSector + 1) * LOG_SECTOR);
      dataSector++;
      if (s.toString('latin1', 0, 4) !== 'data') return null;
      const seq = (BigInt(s.readUInt32LE(4)) << 32n) | BigInt(s.readUInt32LE(4092));
      if (seq !== sequence) return null;
      const data = Buffer.alloc(LOG_SECTOR);
      d.copy(data, 0, 8, 16); // LeadingBytes: the sector's first 8 bytes
      s.copy(data, 8, 8, 4092); // the 4084 bytes in the middle
      d.copy(data, 4092, 4, 8); // TrailingBytes: its last 4 bytes
      patches.push({ offset: Number(fileOffset), length: LOG_SECTOR, data });
    } else {
      return null;
    }
  }
  return {
    position,
    length,
    sequence,
    patches,
    flushedFileOffset: head.readBigUInt64LE(48),
    lastFileOffset: head.readBigUInt64LE(56),
  };
}

/**
 * Finds the active sequence in `log` (the whole log region) for `logGuid`, or null when the log
 * holds no valid entry for it (an empty log: nothing to replay). Scans every 4 KiB position,
 * as QEMU does, so a torn or stale entry is skipped rather than trusted. Throws
 * ImageRejectedError('bad-log') if the scan would cost more than 4x the log in checksums.
 */
export function findActiveLogSequence(log: Buffer, logGuid: Buffer): ActiveLogSequence | null {
  const entries = new Map<number, ParsedEntry>();
  // Genuine entries of one LogGuid never overlap, so they checksum at most the log once;
  // a hostile log of overlapping candidates would make the scan quadratic.
  const budget = { bytes: 4 * log.length };
  for (let pos = 0; pos + ENTRY_HEADER <= log.length; pos += LOG_SECTOR) {
    const e = parseEntry(log, pos, logGuid, budget);
    if (e) entries.set(pos, e);
  }
  let best: ParsedEntry[] | null = null;
  for (const start of entries.values()) {
    const chain = [start];
    let cur = start;
    let used = start.length;
    for (;;) {
      const next = entries.get((cur.position + cur.length) % log.length);
      if (!next || next.sequence !== cur.sequence + 1n || used + next.length > log.length) break;
      chain.push(next);
      used += next.length;
      cur = next;
    }
    const last = chain[chain.length - 1].sequence;
    if (!best || last > best[best.length - 1].sequence || (last === best[best.length - 1].sequence && chain.length > best.length)) {
      best = chain;
    }
  }
  if (!best) return null;
  return {
    sequenceNumbers: best.map((e) => e.sequence),
    patches: best.flatMap((e) => e.patches),
    flushedFileOffset: best.reduce((m, e) => (e.flushedFileOffset > m ? e.flushedFileOffset : m), 0n),
    lastFileOffset: best.reduce((m, e) => (e.lastFileOffset > m ? e.lastFileOffset : m), 0n),
  };
}

/**
 * Checks that replaying `seq` stays inside the file and away from the header section's first
 * 192 KiB (file identifier and both headers are never logged), so a hostile log can neither
 * scribble over our headers nor make us grow the file. Throws ImageRejectedError('bad-log').
 */
export function checkLogSequence(seq: ActiveLogSequence, fileSize: number): void {
  if (seq.flushedFileOffset > BigInt(fileSize)) {
    throw new ImageRejectedError(
      'truncated',
      `vhdx log: pending entry expects the file to be at least ${seq.flushedFileOffset} bytes but it is ${fileSize} (truncated)`,
    );
  }
  for (const p of seq.patches) {
    if (p.offset < 192 * 1024 || p.offset + p.length > fileSize) {
      throw new ImageRejectedError(
        'bad-log',
        `vhdx log: pending entry writes ${p.length} bytes at offset ${p.offset}, outside the replayable part of the file (192 KiB..${fileSize})`,
      );
    }
  }
}

/**
 * A read-only view of an image with a pending log applied in memory, so an image can be
 * inspected exactly as QEMU will see it after replay, without writing to it.
 */
export class LogOverlayIo implements ImageIo {
  constructor(
    private readonly base: ImageIo,
    private readonly patches: LogPatch[],
  ) {}

  get size(): number {
    return this.base.size;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = await this.base.read(offset, length);
    const end = offset + buf.length;
    for (const p of this.patches) {
      const a = Math.max(offset, p.offset);
      const b = Math.min(end, p.offset + p.length);
      if (a >= b) continue;
      if (p.data) p.data.copy(buf, a - offset, a - p.offset, b - p.offset);
      else buf.fill(0, a - offset, b - offset);
    }
    return buf;
  }

  async write(): Promise<void> {
    throw new Error('LogOverlayIo is read-only');
  }

  async flush(): Promise<void> {}
}

/** Applies a pending sequence to the file itself (the replay), then flushes. */
export async function applyLogSequence(io: ImageIo, seq: ActiveLogSequence): Promise<void> {
  const zeros = Buffer.alloc(1024 * 1024);
  for (const p of seq.patches) {
    if (p.data) {
      await io.write(p.offset, p.data);
    } else {
      for (let done = 0; done < p.length; done += zeros.length) {
        await io.write(p.offset + done, zeros.subarray(0, Math.min(zeros.length, p.length - done)));
      }
    }
  }
  await io.flush();
}

/** What one log entry we write must say. */
export interface LogEntrySpec {
  logGuid: Buffer;
  sequence: bigint;
  /** Offset in the log of the oldest entry still needed: this entry's own position for a lone entry. */
  tail: number;
  /** Current file size: FlushedFileOffset and LastFileOffset (we never grow the file). */
  fileSize: number;
  /** Whole 4 KiB sectors to write, each at a 4 KiB-aligned file offset. */
  sectors: Array<{ offset: number; data: Buffer }>;
}

/** Builds one log entry (header, data descriptors, data sectors, CRC-32C) ready to write. */
export function buildLogEntry(spec: LogEntrySpec): Buffer {
  const n = spec.sectors.length;
  const descSectors = descriptorSectors(n);
  const entry = Buffer.alloc((descSectors + n) * LOG_SECTOR);
  entry.write('loge', 0, 'latin1');
  entry.writeUInt32LE(entry.length, 8);
  entry.writeUInt32LE(spec.tail, 12);
  entry.writeBigUInt64LE(spec.sequence, 16);
  entry.writeUInt32LE(n, 24);
  spec.logGuid.copy(entry, 32);
  entry.writeBigUInt64LE(BigInt(spec.fileSize), 48);
  entry.writeBigUInt64LE(BigInt(spec.fileSize), 56);
  spec.sectors.forEach((s, i) => {
    if (s.data.length !== LOG_SECTOR || s.offset % LOG_SECTOR !== 0) throw new Error('log sectors must be whole, aligned 4 KiB');
    const d = ENTRY_HEADER + i * DESCRIPTOR;
    entry.write('desc', d, 'latin1');
    s.data.copy(entry, d + 4, 4092, 4096);
    s.data.copy(entry, d + 8, 0, 8);
    entry.writeBigUInt64LE(BigInt(s.offset), d + 16);
    entry.writeBigUInt64LE(spec.sequence, d + 24);
    const ds = (descSectors + i) * LOG_SECTOR;
    entry.write('data', ds, 'latin1');
    entry.writeUInt32LE(Number(spec.sequence >> 32n), ds + 4);
    s.data.copy(entry, ds + 8, 8, 4092);
    entry.writeUInt32LE(Number(spec.sequence & 0xffffffffn), ds + 4092);
  });
  entry.writeUInt32LE(crc32c(entry), 4);
  return entry;
}
