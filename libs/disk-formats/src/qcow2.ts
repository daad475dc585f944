import { ImageRejectedError, type ImageRejectReason, MetadataTooLargeError } from './errors';
import { type ImageIo, readExact } from './image-io';

/**
 * qcow2 (QEMU docs/interop/qcow2.txt): header parsing with hostile-input checks, and our metadata
 * stored as a header extension with a private magic. QEMU keeps header extensions it does not
 * know (it carries them over when it rewrites the header: snapshot, resize, amend), so the
 * metadata travels with the file. All numbers in qcow2 are big-endian.
 */

/** Header extension type of our metadata ("HPmd"). */
export const QCOW2_METADATA_EXT = 0x48506d64;
/** Header extension type of our padding ("HPpd"): its body is dead space, skipped by everyone. */
export const QCOW2_PADDING_EXT = 0x48507064;

const EXT_END = 0x00000000;
const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_FEATURE_TABLE = 0x6803f857;
const EXT_BITMAPS = 0x23852875;
const EXT_CRYPTO = 0x0537be77;
const EXT_DATA_FILE = 0x44415441;
const KNOWN_EXT_NAMES: Record<number, string> = {
  [EXT_BACKING_FORMAT]: 'backing file format',
  [EXT_FEATURE_TABLE]: 'feature name table',
  [EXT_BITMAPS]: 'bitmaps',
  [EXT_CRYPTO]: 'encryption header pointer',
  [EXT_DATA_FILE]: 'external data file name',
};

const INCOMPAT_DIRTY = 1n;
const INCOMPAT_CORRUPT = 2n;
const INCOMPAT_DATA_FILE = 4n;
const INCOMPAT_COMPRESSION = 8n;
const INCOMPAT_EXTENDED_L2 = 16n;
const INCOMPAT_KNOWN = 0x1fn;
const COMPAT_LAZY_REFCOUNTS = 1n;

/** QEMU's implementation limits (block/qcow2.h), which we also apply to untrusted headers. */
const MAX_L1_BYTES = 32 * 1024 * 1024;
const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
const MAX_SNAPSHOTS = 65536;
const MAX_BACKING_NAME = 1023;

/**
 * Bytes of the header cluster we leave free for QEMU: it may later add a bitmaps extension, a
 * backing format, or a backing file name (rebase), and fails with ENOSPC if the cluster is full.
 */
export function qcow2HeaderHeadroom(clusterSize: number): number {
  return Math.min(1024, clusterSize / 8);
}

/** One header extension as found in the file. */
export interface Qcow2Extension {
  offset: number;
  type: number;
  length: number;
  /** Offset just past the padded body. */
  end: number;
}

/** Everything we know about a qcow2 file's header cluster after validation. */
export interface Qcow2Header {
  version: 2 | 3;
  clusterSize: number;
  virtualSize: number;
  headerLength: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  snapshotCount: number;
  snapshotsOffset: number;
  dirty: boolean;
  corrupt: boolean;
  lazyRefcounts: boolean;
  extendedL2: boolean;
  compressionType: 'zlib' | 'zstd';
  refcountBits: number;
  backingFileOffset: number;
  backingFileSize: number;
  backingFile?: string;
  backingFormat?: string;
  /** True when the image keeps guest data in an external file (incompatible bit 2). */
  hasExternalDataFile: boolean;
  dataFile?: string;
  extensions: Qcow2Extension[];
  /** Offset of the end-of-extensions marker; null if the chain runs to `extensionsEnd`. */
  endMarkerOffset: number | null;
  /** Where QEMU stops looking for extensions: backing file name offset, else the cluster end. */
  extensionsEnd: number;
  /**
   * First byte of the file used by anything other than the header and its extensions: the
   * lowest of the backing file name, L1 table, refcount table, snapshot table, encryption
   * header, bitmap directory, and the end of the first cluster.
   */
  firstUsedOffset: number;
  /** Like firstUsedOffset but ignoring the backing file name (which a writer may move). */
  tablesOffset: number;
  /** Our metadata extension, if present. */
  metadataExtension?: Qcow2Extension;
  /** Bytes [0, extensionsEnd) as read (possibly fewer if the file is shorter). */
  headerBytes: Buffer;
}

function reject(reason: ImageRejectReason, msg: string): never {
  throw new ImageRejectedError(reason, `qcow2 header: ${msg}`);
}

const hex = (n: number) => `0x${n.toString(16).padStart(8, '0')}`;
const pad8 = (n: number) => (n + 7) & ~7;

/** Grows a buffer of the file's head on demand, so a typical header costs one small read. */
class HeadWindow {
  buf = Buffer.alloc(0);
  constructor(
    private readonly io: ImageIo,
    private readonly cap: number,
  ) {}

  async ensure(end: number, what: string): Promise<Buffer> {
    if (end <= this.buf.length) return this.buf;
    const target = Math.max(end, Math.min(this.cap, Math.max(4096, this.buf.length * 2)));
    const start = this.buf.length;
    const more = await readExact(this.io, start, Math.min(target, Math.max(end, this.io.size)) - start, `qcow2 header: ${what}`);
    this.buf = Buffer.concat([this.buf, more]);
    return this.buf;
  }
}

function toSafe(v: bigint, what: string, reason: ImageRejectReason = 'out-of-bounds'): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) reject(reason, `${what} ${v} is too large`);
  return Number(v);
}

/**
 * Parses and validates the qcow2 header cluster (`limits.maxVirtualSizeBytes` is checked first,
 * so a huge size is reported as such rather than as a too-small L1 table). Reads only the header and its extensions
 * (at most one cluster), never the L1/L2 tables or guest data. Throws ImageRejectedError for
 * anything QEMU would refuse or that could point QEMU outside the image.
 */
export async function parseQcow2(io: ImageIo, limits: { maxVirtualSizeBytes?: number } = {}): Promise<Qcow2Header> {
  if (io.size < 72) reject('truncated', `file is ${io.size} bytes, shorter than the 72-byte header`);
  const win = new HeadWindow(io, Math.min(io.size, 2 * 1024 * 1024));
  let b = await win.ensure(72, 'fixed header');
  if (b.readUInt32BE(0) !== 0x514649fb) reject('bad-header', 'missing QFI\\xfb magic');
  const version = b.readUInt32BE(4);
  if (version === 1) reject('unsupported-format', 'qcow version 1 images are not supported; convert them to qcow2');
  if (version !== 2 && version !== 3) reject('unsupported-version', `version ${version} is not supported (expected 2 or 3)`);

  const clusterBits = b.readUInt32BE(20);
  if (clusterBits < 9 || clusterBits > 21) reject('bad-header', `cluster_bits ${clusterBits} is outside 9..21`);
  const clusterSize = 2 ** clusterBits;
  const rawSize = b.readBigUInt64BE(24);
  const virtualSize = toSafe(rawSize, 'virtual size', 'virtual-size-too-large');
  if (limits.maxVirtualSizeBytes !== undefined && virtualSize > limits.maxVirtualSizeBytes) {
    reject('virtual-size-too-large', `virtual size ${virtualSize} bytes exceeds the limit of ${limits.maxVirtualSizeBytes} bytes`);
  }
  const cryptMethod = b.readUInt32BE(32);
  if (cryptMethod > 2) reject('bad-header', `unknown crypt_method ${cryptMethod}`);
  const l1Size = b.readUInt32BE(36);
  const l1TableOffset = toSafe(b.readBigUInt64BE(40), 'L1 table offset');
  const refcountTableOffset = toSafe(b.readBigUInt64BE(48), 'refcount table offset');
  const refcountTableClusters = b.readUInt32BE(56);
  const snapshotCount = b.readUInt32BE(60);
  const snapshotsOffset = toSafe(b.readBigUInt64BE(64), 'snapshot table offset');
  const backingFileOffset = toSafe(b.readBigUInt64BE(8), 'backing file offset');
  const backingFileSize = b.readUInt32BE(16);

  let headerLength = 72;
  let incompatible = 0n;
  let compatible = 0n;
  let refcountOrder = 4;
  let compressionType: 'zlib' | 'zstd' = 'zlib';
  if (version === 3) {
    b = await win.ensure(104, 'version 3 header');
    incompatible = b.readBigUInt64BE(72);
    compatible = b.readBigUInt64BE(80);
    refcountOrder = b.readUInt32BE(96);
    headerLength = b.readUInt32BE(100);
    if (headerLength < 104 || headerLength % 8 !== 0 || headerLength > clusterSize) {
      reject('bad-header', `header_length ${headerLength} must be a multiple of 8 between 104 and the cluster size ${clusterSize}`);
    }
    if (refcountOrder > 6) reject('bad-header', `refcount_order ${refcountOrder} is above 6`);
    const unknown = incompatible & ~INCOMPAT_KNOWN;
    if (unknown) reject('unsupported-feature', `unknown incompatible feature bits 0x${unknown.toString(16)}`);
    b = await win.ensure(headerLength, 'header');
    const compressionField = headerLength > 104 ? b[104] : 0;
    if (incompatible & INCOMPAT_COMPRESSION) {
      if (compressionField !== 1) reject('bad-header', `compression type bit set but compression_type is ${compressionField}`);
      compressionType = 'zstd';
    } else if (compressionField !== 0) {
      reject('bad-header', `compression_type ${compressionField} without the compression type feature bit`);
    }
    if (incompatible & INCOMPAT_EXTENDED_L2 && clusterBits < 14) reject('bad-header', 'extended L2 entries need clusters of at least 16 KiB');
  }
  const extendedL2 = (incompatible & INCOMPAT_EXTENDED_L2) !== 0n;

  // Backing file name: stored after the extensions, inside the first cluster.
  let backingFile: string | undefined;
  if (backingFileOffset !== 0) {
    if (backingFileOffset < headerLength || backingFileOffset > clusterSize) {
      reject('bad-header', `backing file name offset ${backingFileOffset} is outside the header cluster`);
    }
    if (backingFileSize > MAX_BACKING_NAME) reject('bad-header', `backing file name of ${backingFileSize} bytes exceeds 1023`);
    if (backingFileOffset + backingFileSize > io.size) reject('truncated', 'backing file name runs past the end of the file');
    const nameBytes = await readExact(io, backingFileOffset, backingFileSize, 'qcow2 header: backing file name');
    backingFile = nameBytes.toString('utf8');
  }

  // Header extensions, walked exactly as QEMU does: until type 0 or the extension area's end.
  const extensionsEnd = backingFileOffset !== 0 ? backingFileOffset : clusterSize;
  const extensions: Qcow2Extension[] = [];
  const seenKnown = new Set<number>();
  let endMarkerOffset: number | null = null;
  let metadataExtension: Qcow2Extension | undefined;
  let backingFormat: string | undefined;
  let dataFile: string | undefined;
  let cryptoOffset = 0;
  let bitmapDirOffset = 0;
  let off = headerLength;
  while (off < extensionsEnd) {
    if (off + 8 > extensionsEnd) reject('out-of-bounds', `header extension at ${off} does not fit before offset ${extensionsEnd}`);
    b = await win.ensure(off + 8, `header extension at ${off}`);
    const type = b.readUInt32BE(off);
    const length = b.readUInt32BE(off + 4);
    if (type === EXT_END) {
      endMarkerOffset = off;
      break;
    }
    if (length > extensionsEnd - off - 8) {
      reject('out-of-bounds', `header extension ${hex(type)} at ${off} claims ${length} bytes, past the end of the extension area at ${extensionsEnd}`);
    }
    b = await win.ensure(off + 8 + length, `header extension ${hex(type)} at ${off}`);
    const ext: Qcow2Extension = { offset: off, type, length, end: off + 8 + pad8(length) };
    const body = b.subarray(off + 8, off + 8 + length);
    extensions.push(ext);
    if (KNOWN_EXT_NAMES[type]) {
      if (seenKnown.has(type)) reject('duplicate-item', `the ${KNOWN_EXT_NAMES[type]} extension appears twice`);
      seenKnown.add(type);
    }
    switch (type) {
      case EXT_BACKING_FORMAT:
        if (length >= 16) reject('bad-header', `backing format name of ${length} bytes is too long`);
        backingFormat = body.toString('utf8');
        break;
      case EXT_DATA_FILE:
        dataFile = body.toString('utf8');
        break;
      case EXT_CRYPTO:
        if (length !== 16) reject('bad-header', `encryption header pointer extension is ${length} bytes, expected 16`);
        if (cryptMethod !== 2) reject('bad-header', 'encryption header pointer without LUKS encryption');
        cryptoOffset = toSafe(body.readBigUInt64BE(0), 'encryption header offset');
        if (cryptoOffset === 0 || cryptoOffset % clusterSize !== 0) reject('bad-header', `encryption header offset ${cryptoOffset} is not cluster-aligned`);
        if (cryptoOffset < clusterSize) reject('overlap', `encryption header at ${cryptoOffset} overlaps the header cluster`);
        break;
      case EXT_BITMAPS:
        if (length !== 24) reject('bad-header', `bitmaps extension is ${length} bytes, expected 24`);
        bitmapDirOffset = toSafe(body.readBigUInt64BE(16), 'bitmap directory offset');
        if (bitmapDirOffset % clusterSize !== 0) reject('bad-header', `bitmap directory offset ${bitmapDirOffset} is not cluster-aligned`);
        if (bitmapDirOffset < clusterSize) reject('overlap', `bitmap directory at ${bitmapDirOffset} overlaps the header cluster`);
        break;
      case QCOW2_METADATA_EXT:
        if (metadataExtension) reject('duplicate-item', `two Hyperplane metadata extensions (at ${metadataExtension.offset} and ${off})`);
        metadataExtension = ext;
        break;
      default:
        break;
    }
    off = ext.end;
  }
  if (cryptMethod === 2 && !cryptoOffset) reject('bad-header', 'LUKS encryption without an encryption header pointer');

  // Table placement. Every table must be cluster-aligned, outside the header cluster and inside
  // the file: a table "at offset 0" would make QEMU read the header as an L1 table.
  const checkTable = (name: string, offset: number, bytes: number, entirelyInFile: boolean) => {
    if (offset % clusterSize !== 0) reject('bad-header', `${name} offset ${offset} is not aligned to the cluster size ${clusterSize}`);
    if (offset < clusterSize) reject('overlap', `${name} at offset ${offset} overlaps the header cluster`);
    const end = entirelyInFile ? offset + bytes : offset + 1;
    if (end > io.size) reject('out-of-bounds', `${name} at offset ${offset} (${bytes} bytes) runs past the end of the file (${io.size} bytes)`);
  };
  if (l1Size * 8 > MAX_L1_BYTES) reject('bad-header', `L1 table of ${l1Size} entries exceeds QEMU's 32 MiB limit`);
  const l2Entries = BigInt(clusterSize / (extendedL2 ? 16 : 8));
  const l1Needed = (rawSize + BigInt(clusterSize) * l2Entries - 1n) / (BigInt(clusterSize) * l2Entries);
  if (BigInt(l1Size) < l1Needed) reject('bad-header', `L1 table has ${l1Size} entries, too few for a virtual size of ${rawSize} bytes`);
  if (l1Size > 0) checkTable('L1 table', l1TableOffset, l1Size * 8, true);
  if (refcountTableClusters === 0 || refcountTableOffset === 0) reject('bad-header', 'image has no refcount table');
  if (refcountTableClusters * clusterSize > MAX_REFTABLE_BYTES) {
    reject('bad-header', `refcount table of ${refcountTableClusters} clusters exceeds QEMU's 8 MiB limit`);
  }
  checkTable('refcount table', refcountTableOffset, refcountTableClusters * clusterSize, false);
  if (snapshotCount > MAX_SNAPSHOTS) reject('bad-header', `${snapshotCount} snapshots exceed QEMU's limit of ${MAX_SNAPSHOTS}`);
  if (snapshotCount > 0) checkTable('snapshot table', snapshotsOffset, 1, false);

  const tablesOffset = Math.min(
    clusterSize,
    ...[l1Size > 0 ? l1TableOffset : 0, refcountTableOffset, snapshotCount > 0 ? snapshotsOffset : 0, cryptoOffset, bitmapDirOffset].filter((o) => o > 0),
  );
  const firstUsedOffset = backingFileOffset > 0 ? Math.min(backingFileOffset, tablesOffset) : tablesOffset;
  return {
    version,
    clusterSize,
    virtualSize,
    headerLength,
    cryptMethod,
    l1Size,
    l1TableOffset,
    refcountTableOffset,
    refcountTableClusters,
    snapshotCount,
    snapshotsOffset,
    dirty: (incompatible & INCOMPAT_DIRTY) !== 0n,
    corrupt: (incompatible & INCOMPAT_CORRUPT) !== 0n,
    lazyRefcounts: (compatible & COMPAT_LAZY_REFCOUNTS) !== 0n,
    extendedL2,
    compressionType,
    refcountBits: 2 ** refcountOrder,
    backingFileOffset,
    backingFileSize,
    backingFile,
    backingFormat,
    hasExternalDataFile: (incompatible & INCOMPAT_DATA_FILE) !== 0n || dataFile !== undefined,
    dataFile,
    extensions,
    endMarkerOffset,
    extensionsEnd,
    firstUsedOffset,
    tablesOffset,
    metadataExtension,
    headerBytes: win.buf,
  };
}

/** Returns the stored envelope bytes of our extension, or null when the image has none. */
export function qcow2MetadataBytes(h: Qcow2Header): Buffer | null {
  const ext = h.metadataExtension;
  return ext ? h.headerBytes.subarray(ext.offset + 8, ext.offset + 8 + ext.length) : null;
}

/**
 * A crash-safe change of the extension chain, as two writes:
 * 1. `body` at `bodyOffset`: bytes nobody reads yet (dead padding or past the end marker); flush.
 * 2. `link` (8 bytes, one extension header) at `linkOffset`: the switch; flush.
 * An 8-byte aligned write sits in one sector and lands whole or not at all, so after a crash
 * the chain is either the old one or the new one, never a mix.
 */
export interface Qcow2WritePlan {
  bodyOffset: number;
  body: Buffer;
  linkOffset: number;
  link: Buffer;
}

function extHeader(type: number, length: number): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt32BE(type >>> 0, 0);
  h.writeUInt32BE(length, 4);
  return h;
}

/** Where a backing file name of `size` bytes is kept while we own the extension area: the cluster's end. */
function backingNameHome(h: Qcow2Header): number {
  return h.clusterSize - pad8(h.backingFileSize);
}

/**
 * The limit of our area: the first byte used by anything else (tables, and the backing file
 * name once it sits at the end of the cluster), minus headroom QEMU may need later.
 */
function areaLimit(h: Qcow2Header): number {
  const nameReserve = h.backingFileOffset > 0 ? pad8(h.backingFileSize) : 0;
  return Math.min(h.tablesOffset, h.clusterSize - nameReserve - qcow2HeaderHeadroom(h.clusterSize));
}

/**
 * Where the writer may place bytes. Our area starts at `start`, the first extension of ours
 * (metadata or padding) or else the end marker; foreign extensions after it are carried over.
 */
interface Qcow2Space {
  start: number;
  limit: number;
  tail: Buffer;
  /** Free (unread) intervals [a, b) inside (start + 8, limit), 8-aligned starts. */
  gaps: Array<[number, number]>;
}

function space(h: Qcow2Header): Qcow2Space | null {
  const ours = (t: number) => t === QCOW2_METADATA_EXT || t === QCOW2_PADDING_EXT;
  const first = h.extensions.find((e) => ours(e.type));
  const start = first ? first.offset : h.endMarkerOffset;
  if (start === null) return null; // the chain fills the whole area: nowhere to link from
  const limit = areaLimit(h);
  if (start + 8 > limit) return null;
  const visible: Array<[number, number]> = [];
  const tailParts: Buffer[] = [];
  for (const e of h.extensions) {
    if (e.offset < start) continue;
    visible.push([e.offset, e.offset + 8]);
    if (e.type !== QCOW2_PADDING_EXT) visible.push([e.offset + 8, e.end]);
    if (!ours(e.type)) {
      const copy = Buffer.alloc(e.end - e.offset);
      h.headerBytes.copy(copy, 0, e.offset, e.offset + 8 + e.length);
      tailParts.push(copy);
    }
  }
  if (h.endMarkerOffset !== null) visible.push([h.endMarkerOffset, h.endMarkerOffset + 8]);
  // The backing file name is not in the way: the writer moves it to the end of the cluster first.
  visible.sort((x, y) => x[0] - y[0]);
  const gaps: Array<[number, number]> = [];
  let cursor = start + 8;
  for (const [a, b] of visible) {
    if (a > cursor) gaps.push([cursor, Math.min(a, limit)]);
    cursor = Math.max(cursor, b);
    if (cursor >= limit) break;
  }
  if (cursor < limit) gaps.push([cursor, limit]);
  return { start, limit, tail: Buffer.concat(tailParts), gaps: gaps.filter(([a, b]) => b > a) };
}

/**
 * Plans replacing our area with `block` (first 8 bytes: the header of the first extension or an
 * end marker). In place when the bytes after `start` are dead (the link is then the block's own
 * first header); otherwise at the end of the last free gap that holds it, with `start` turned
 * into a padding extension that jumps there. Returns null if no gap holds it.
 */
function plan(s: Qcow2Space, block: Buffer): Qcow2WritePlan | null {
  const n = block.length;
  const front = s.gaps[0];
  if (n === 8 || (front && front[0] === s.start + 8 && s.start + n <= front[1])) {
    return { bodyOffset: s.start + 8, body: block.subarray(8), linkOffset: s.start, link: block.subarray(0, 8) };
  }
  for (const [a, b] of [...s.gaps].reverse()) {
    const pos = (b & ~7) - n;
    if (pos >= a) return { bodyOffset: pos, body: block, linkOffset: s.start, link: extHeader(QCOW2_PADDING_EXT, pos - s.start - 8) };
  }
  return null;
}

/** Largest envelope (bytes) a crash-safe write can place in this header cluster right now. */
export function qcow2MetadataCapacity(h: Qcow2Header): number {
  const s = space(h);
  if (!s) return 0;
  const front = s.gaps[0] && s.gaps[0][0] === s.start + 8 ? s.gaps[0][1] - s.start : 8;
  const block = Math.max(front, ...s.gaps.map(([a, b]) => (b & ~7) - a));
  return Math.max(0, (block - 16 - s.tail.length) & ~7);
}

/** The error for metadata of `needed` bytes that does not fit this header cluster crash-safely. */
export function qcow2TooLargeError(h: Qcow2Header, needed: number): MetadataTooLargeError {
  const capacity = qcow2MetadataCapacity(h);
  return new MetadataTooLargeError(
    `qcow2 header cluster (cluster size ${h.clusterSize}) has room for ${capacity} bytes of metadata ` +
      `(a crash-safe update keeps the old copy until the new one is linked, so about half the free header space is usable, ` +
      `and ${qcow2HeaderHeadroom(h.clusterSize)} bytes stay free for QEMU); this metadata needs ${needed} bytes even compressed. ` +
      'Trim the history, or convert the image with a larger cluster size (qemu-img convert -O qcow2 -o cluster_size=2M) or to VHDX.',
    needed,
    capacity,
  );
}

/**
 * Plans writing `envelope` as our extension (or removing it when null). Throws
 * MetadataTooLargeError naming the room there is when it cannot be done crash-safely.
 */
export function planQcow2MetadataWrite(h: Qcow2Header, envelope: Buffer | null): Qcow2WritePlan {
  const s = space(h);
  const parts: Buffer[] = [];
  if (envelope) {
    const ext = Buffer.alloc(8 + pad8(envelope.length));
    extHeader(QCOW2_METADATA_EXT, envelope.length).copy(ext);
    envelope.copy(ext, 8);
    parts.push(ext);
  }
  const block = Buffer.concat([...parts, s?.tail ?? Buffer.alloc(0), Buffer.alloc(8)]);
  const p = s && plan(s, block);
  if (!p) throw qcow2TooLargeError(h, envelope?.length ?? 0);
  return p;
}

/**
 * Moves the backing file name out of the way, to the end of the header cluster, if it sits
 * inside the area our extensions may use (QEMU stores it right after the extensions). Copy
 * first (into bytes nobody reads), flush, then switch the 8-byte aligned backing_file_offset
 * field, flush: atomic, like the extension link. Returns the re-parsed header.
 */
async function relocateBackingName(io: ImageIo, h: Qcow2Header): Promise<Qcow2Header> {
  if (h.backingFileOffset === 0 || h.backingFileOffset >= areaLimit(h)) return h;
  const home = backingNameHome(h);
  if (h.backingFileOffset + h.backingFileSize > home) {
    throw new MetadataTooLargeError(
      `qcow2 header: backing file name (${h.backingFileSize} bytes) leaves no room for metadata in a ${h.clusterSize}-byte cluster`,
      1,
      0,
    );
  }
  const name = await readExact(io, h.backingFileOffset, h.backingFileSize, 'qcow2 header: backing file name');
  await io.write(home, name);
  await io.flush();
  const field = Buffer.alloc(8);
  field.writeBigUInt64BE(BigInt(home));
  await io.write(8, field);
  await io.flush();
  return parseQcow2(io);
}

/**
 * Writes (or removes, with null) our metadata extension, crash-safely.
 *
 * Ordering, and why it is safe:
 * 0. If the image has a backing file whose name sits where our extension must go, the name is
 *    first copied to the end of the header cluster and backing_file_offset switched to it
 *    (see relocateBackingName): each step leaves a valid image.
 * 1. The new extension (followed by copies of any foreign extensions that came after ours, and a
 *    fresh end-of-extensions marker) is written where no reader looks: into the dead body of a
 *    padding extension, or past the current end marker. It must end before the first byte used
 *    by anything else (L1/refcount/snapshot tables, encryption header, bitmap directory, the
 *    backing file name, the end of cluster 0; all computed from the header fields), minus
 *    headroom QEMU may need later. Then fsync.
 * 2. One 8-byte extension header at the start of our area is rewritten: either as the new
 *    extension's own header (in place), or as a padding extension whose length jumps to it.
 *    Then fsync. Readers (QEMU included) see the old chain until this write, the new one after.
 * If no placement fits, nothing is written and MetadataTooLargeError explains the limit.
 * Precondition: no other process (QEMU) has the image open; writers are serialized by the caller.
 */
export async function writeQcow2Metadata(io: ImageIo, header: Qcow2Header, envelope: Buffer | null): Promise<void> {
  if (header.corrupt) reject('corrupt', 'image is marked corrupt; repair it with qemu-img check -r all before writing');
  planQcow2MetadataWrite(header, envelope); // refuse before touching anything
  const h = await relocateBackingName(io, header);
  const p = planQcow2MetadataWrite(h, envelope);
  if (p.body.length) {
    await io.write(p.bodyOffset, p.body);
    await io.flush();
  }
  await io.write(p.linkOffset, p.link);
  await io.flush();
}
