import { randomBytes } from 'node:crypto';
import { crc32cWithZeroedField } from './crc32c';
import { ImageRejectedError, type ImageRejectReason, MetadataTooLargeError, MetadataUnsupportedError } from './errors';
import { type ImageIo, PrefetchIo, readExact } from './image-io';
import {
  type ActiveLogSequence,
  LOG_SECTOR,
  LogOverlayIo,
  applyLogSequence,
  buildLogEntry,
  checkLogSequence,
  descriptorSectors,
  findActiveLogSequence,
} from './vhdx-log';

/**
 * VHDX (Microsoft MS-VHDX): header section parsing with hostile-input checks, and our metadata
 * stored as a *user metadata item* of the metadata region (IsUser set, IsRequired clear, so any
 * VHDX implementation can still open the file). Changes to the metadata table go through the
 * VHDX log, as the specification requires for metadata-region updates. Little-endian throughout.
 *
 * Layout of the header section (first 1 MiB): file identifier at 0, headers at 64 KiB and
 * 128 KiB (4 KiB each, CRC-32C), region tables at 192 KiB and 256 KiB (64 KiB each, CRC-32C).
 * QEMU, like us, reads region table 1 only; neither of us ever rewrites region tables.
 */

const KiB = 1024;
const MiB = 1024 * KiB;
const HEADER_OFFSETS = [64 * KiB, 128 * KiB] as const;
const HEADER_SIZE = 4 * KiB;
const REGION_TABLE_OFFSET = 192 * KiB;
const REGION_TABLE_SIZE = 64 * KiB;
const METADATA_TABLE_SIZE = 64 * KiB;
const MAX_ITEM_LENGTH = 1 * MiB;
const MAX_LOG_BYTES_READ = 32 * MiB;
/** MS-VHDX caps virtual disks at 64 TiB. */
const VHDX_MAX_VIRTUAL_SIZE = 64 * 1024 * 1024 * MiB;

const FLAG_IS_USER = 1;
const FLAG_IS_VIRTUAL_DISK = 2;
const FLAG_IS_REQUIRED = 4;

/** Converts a GUID string to the 16 bytes MS-VHDX stores (first three fields little-endian). */
export function guidToBytes(guid: string): Buffer {
  const hex = guid.replace(/[{}-]/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new Error(`not a GUID: ${guid}`);
  const b = Buffer.from(hex, 'hex');
  return Buffer.concat([Buffer.from(b.subarray(0, 4)).reverse(), Buffer.from(b.subarray(4, 6)).reverse(), Buffer.from(b.subarray(6, 8)).reverse(), b.subarray(8)]);
}

/** Formats 16 stored GUID bytes as a lowercase GUID string. */
export function bytesToGuid(b: Uint8Array): string {
  const x = Buffer.from(b);
  const h = Buffer.concat([Buffer.from(x.subarray(0, 4)).reverse(), Buffer.from(x.subarray(4, 6)).reverse(), Buffer.from(x.subarray(6, 8)).reverse(), x.subarray(8, 16)]).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Region and metadata item GUIDs (MS-VHDX 2.2.3.2, 2.6.2). */
export const VHDX_GUIDS = {
  batRegion: '2dc27766-f623-4200-9d64-115e9bfd4a08',
  metadataRegion: '8b7ca206-4790-4b9a-b8fe-575f050f886e',
  fileParameters: 'caa16737-fa36-4d43-b3b6-33f0aa44e76b',
  virtualDiskSize: '2fa54224-cd1b-4876-b211-5dbed83bf4b8',
  page83Data: 'beca12ab-b2e6-4523-93ef-c309e000c746',
  logicalSectorSize: '8141bf1d-a96f-4709-ba47-f233a8faab5f',
  physicalSectorSize: 'cda348c7-445d-4471-9cc9-e9885251c556',
  parentLocator: 'a8d35f2d-b30b-454d-abf7-d3d84834ab0c',
  vhdxParentLocatorType: 'b04aefb7-d19e-4a81-b789-25b8e9445913',
  /** Our user metadata item. */
  hyperplaneMetadata: '8c6d0afd-d3f3-452b-8ea0-34813b8512dc',
} as const;

/** Some tools wrote the Virtual Disk Size item under this variant GUID; accepted on read. */
const VIRTUAL_DISK_SIZE_ALT = '2fa54224-cd1b-4876-b211-5be07a6ce32c';
const SYSTEM_ITEMS = new Set<string>([
  VHDX_GUIDS.fileParameters,
  VHDX_GUIDS.virtualDiskSize,
  VIRTUAL_DISK_SIZE_ALT,
  VHDX_GUIDS.page83Data,
  VHDX_GUIDS.logicalSectorSize,
  VHDX_GUIDS.physicalSectorSize,
  VHDX_GUIDS.parentLocator,
]);
const ZERO_GUID = Buffer.alloc(16);

/** One of the two 4 KiB headers. */
export interface VhdxHeader {
  slot: 0 | 1;
  sequence: bigint;
  fileWriteGuid: Buffer;
  dataWriteGuid: Buffer;
  logGuid: Buffer;
  logLength: number;
  logOffset: number;
  /** The whole 4 KiB as stored (reserved bytes are carried over on update). */
  raw: Buffer;
}

/** One region table entry. */
export interface VhdxRegion {
  guid: string;
  offset: number;
  length: number;
  required: boolean;
}

/** One metadata table entry. */
export interface VhdxMetadataEntry {
  index: number;
  itemId: string;
  offset: number;
  length: number;
  isUser: boolean;
  isVirtualDisk: boolean;
  isRequired: boolean;
}

/** Everything we know about a VHDX file after validating its header section and metadata. */
export interface VhdxImage {
  current: VhdxHeader;
  /** The other header if it is valid (both are kept up to date by every writer). */
  other: VhdxHeader | null;
  /** Active log sequence awaiting replay (already applied to everything below, in memory). */
  pendingLog: ActiveLogSequence | null;
  bat: VhdxRegion;
  metadataRegion: VhdxRegion;
  regions: VhdxRegion[];
  /** The 64 KiB metadata table as it reads after any pending log. */
  metadataTable: Buffer;
  entries: VhdxMetadataEntry[];
  blockSize: number;
  leaveBlocksAllocated: boolean;
  hasParent: boolean;
  virtualSize: number;
  logicalSectorSize: number;
  physicalSectorSize: number;
  /** Parent locator key/value pairs of a differencing disk. */
  parentLocator?: Record<string, string>;
  /** The parent path a differencing disk points at (relative_path, volume_path or absolute_win32_path). */
  parentPath?: string;
  /** Our item's entry, if present. */
  metadataEntry?: VhdxMetadataEntry;
  /** Our item's bytes (the envelope), if present and non-empty. */
  metadataBytes?: Buffer;
}

function reject(reason: ImageRejectReason, msg: string): never {
  throw new ImageRejectedError(reason, `vhdx ${msg}`);
}

function parseHeader(raw: Buffer, slot: 0 | 1): { header: VhdxHeader | null; badChecksum: boolean } {
  if (raw.toString('latin1', 0, 4) !== 'head') return { header: null, badChecksum: false };
  if (crc32cWithZeroedField(raw, 4) !== raw.readUInt32LE(4)) return { header: null, badChecksum: true };
  if (raw.readUInt16LE(66) !== 1) return { header: null, badChecksum: false };
  const logOffset = raw.readBigUInt64LE(72);
  return {
    badChecksum: false,
    header: {
      slot,
      sequence: raw.readBigUInt64LE(8),
      fileWriteGuid: Buffer.from(raw.subarray(16, 32)),
      dataWriteGuid: Buffer.from(raw.subarray(32, 48)),
      logGuid: Buffer.from(raw.subarray(48, 64)),
      logLength: raw.readUInt32LE(68),
      logOffset: logOffset > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(logOffset),
      raw,
    },
  };
}

function overlaps(a: { offset: number; length: number }, b: { offset: number; length: number }): boolean {
  return a.offset < b.offset + b.length && b.offset < a.offset + a.length;
}

const isPow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;

/**
 * Parses and validates a VHDX file: headers, log (a pending log is applied in memory, never
 * written), region table, metadata table and the system items. Reads the header section, the
 * 64 KiB metadata table and the items, never the BAT or payload blocks, so its cost does not
 * grow with the disk. Throws ImageRejectedError for anything malformed or hostile.
 */
export async function parseVhdx(io: ImageIo, limits: { maxVirtualSizeBytes?: number } = {}): Promise<VhdxImage> {
  if (io.size < 1 * MiB) reject('truncated', `file: ${io.size} bytes, shorter than the 1 MiB header section`);
  const ident = await readExact(io, 0, 8, 'vhdx file identifier');
  if (ident.toString('latin1') !== 'vhdxfile') reject('bad-header', 'file identifier: missing "vhdxfile" signature');

  // Headers: the current one is the valid one with the higher sequence number. Region table 1
  // is fetched in the same round trip (re-read below if a pending log changes it).
  const [h1, h2, rtRaw] = await Promise.all([
    readExact(io, HEADER_OFFSETS[0], HEADER_SIZE, 'vhdx header 1'),
    readExact(io, HEADER_OFFSETS[1], HEADER_SIZE, 'vhdx header 2'),
    readExact(io, REGION_TABLE_OFFSET, REGION_TABLE_SIZE, 'vhdx region table'),
  ]);
  const parsed = [parseHeader(h1, 0), parseHeader(h2, 1)];
  const valid = parsed.map((p) => p.header).filter((h): h is VhdxHeader => h !== null);
  if (valid.length === 0) {
    if (parsed.some((p) => p.badChecksum)) reject('bad-checksum', 'header: both headers fail their CRC-32C checksum');
    reject('bad-header', 'header: no valid header (signature "head", version 1) at 64 KiB or 128 KiB');
  }
  if (valid.length === 2 && valid[0].sequence === valid[1].sequence && !valid[0].raw.equals(valid[1].raw)) {
    reject('bad-header', 'header: both headers have sequence number ' + valid[0].sequence + ' but differ');
  }
  const current = valid.length === 2 && valid[1].sequence > valid[0].sequence ? valid[1] : valid[0];
  const other = valid.find((h) => h !== current) ?? null;
  const logVersion = current.raw.readUInt16LE(64);
  if (logVersion !== 0) reject('unsupported-version', `header: log version ${logVersion} is not supported (expected 0)`);
  if (current.logOffset < MiB || current.logOffset % MiB !== 0) reject('bad-header', `header: log offset ${current.logOffset} is not a multiple of 1 MiB at or above 1 MiB`);
  if (current.logLength % MiB !== 0) reject('bad-header', `header: log length ${current.logLength} is not a multiple of 1 MiB`);
  if (current.logOffset + current.logLength > io.size) {
    reject('out-of-bounds', `header: log at ${current.logOffset} (${current.logLength} bytes) runs past the end of the file (${io.size} bytes)`);
  }
  const log: VhdxRegion = { guid: 'log', offset: current.logOffset, length: current.logLength, required: true };

  // A non-zero LogGuid with valid entries means a writer crashed after logging: replay in memory.
  let pendingLog: ActiveLogSequence | null = null;
  let view: ImageIo = io;
  if (!current.logGuid.equals(ZERO_GUID) && current.logLength > 0) {
    if (current.logLength > MAX_LOG_BYTES_READ) reject('bad-log', `log: ${current.logLength} bytes pending, above the ${MAX_LOG_BYTES_READ}-byte limit we replay`);
    const logBytes = await readExact(io, current.logOffset, current.logLength, 'vhdx log');
    pendingLog = findActiveLogSequence(logBytes, current.logGuid);
    if (pendingLog) {
      checkLogSequence(pendingLog, io.size);
      view = new LogOverlayIo(io, pendingLog.patches);
    }
  }

  // Region table 1.
  const rt = pendingLog ? await readExact(view, REGION_TABLE_OFFSET, REGION_TABLE_SIZE, 'vhdx region table') : rtRaw;
  if (rt.toString('latin1', 0, 4) !== 'regi') reject('bad-header', 'region table: missing "regi" signature');
  if (crc32cWithZeroedField(rt, 4) !== rt.readUInt32LE(4)) reject('bad-checksum', 'region table: CRC-32C checksum mismatch');
  const regionCount = rt.readUInt32LE(8);
  if (regionCount > 2047) reject('bad-header', `region table: ${regionCount} entries, above the limit of 2047`);
  const regions: VhdxRegion[] = [];
  const taken: VhdxRegion[] = [{ guid: 'header section', offset: 0, length: MiB, required: true }];
  if (log.length > 0) taken.push(log);
  for (let i = 0; i < regionCount; i++) {
    const e = rt.subarray(16 + i * 32, 48 + i * 32);
    const guid = bytesToGuid(e.subarray(0, 16));
    const rawOffset = e.readBigUInt64LE(16);
    const region: VhdxRegion = {
      guid,
      offset: rawOffset > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(rawOffset),
      length: e.readUInt32LE(24),
      required: (e.readUInt32LE(28) & 1) === 1,
    };
    const name = guid === VHDX_GUIDS.batRegion ? 'BAT region' : guid === VHDX_GUIDS.metadataRegion ? 'metadata region' : `region ${guid}`;
    if (region.offset < MiB || region.offset % MiB !== 0 || region.length === 0 || region.length % MiB !== 0) {
      reject('bad-header', `region table: ${name} at ${region.offset} (${region.length} bytes) is not a non-empty 1 MiB-aligned range after the header section`);
    }
    if (region.offset + region.length > io.size) {
      reject('out-of-bounds', `region table: ${name} at ${region.offset} (${region.length} bytes) runs past the end of the file (${io.size} bytes)`);
    }
    const clash = taken.find((t) => overlaps(t, region));
    if (clash) reject('overlap', `region table: ${name} at ${region.offset} overlaps the ${clash.guid === 'log' || clash.guid === 'header section' ? clash.guid : `region at ${clash.offset}`}`);
    if (regions.some((r) => r.guid === guid)) reject('duplicate-item', `region table: ${name} appears twice`);
    if (guid !== VHDX_GUIDS.batRegion && guid !== VHDX_GUIDS.metadataRegion && region.required) {
      reject('unsupported-feature', `region table: required region ${guid} is not understood`);
    }
    regions.push(region);
    taken.push(region);
  }
  const bat = regions.find((r) => r.guid === VHDX_GUIDS.batRegion);
  const metadataRegion = regions.find((r) => r.guid === VHDX_GUIDS.metadataRegion);
  if (!bat || !metadataRegion) reject('bad-header', `region table: the ${bat ? 'metadata' : 'BAT'} region is missing`);

  // Metadata table, fetched together with the first 4 KiB of items (where the system items and
  // usually ours live) so that reading them costs no further round trips.
  const md = new PrefetchIo(view);
  await md.prefetch(metadataRegion.offset, Math.min(metadataRegion.length, METADATA_TABLE_SIZE + 4096));
  view = md;
  const table = await readExact(view, metadataRegion.offset, METADATA_TABLE_SIZE, 'vhdx metadata table');
  if (table.toString('latin1', 0, 8) !== 'metadata') reject('bad-header', 'metadata table: missing "metadata" signature');
  const entryCount = table.readUInt16LE(10);
  if (entryCount > 2047) reject('bad-header', `metadata table: ${entryCount} entries, above the limit of 2047`);
  const entries: VhdxMetadataEntry[] = [];
  let userCount = 0;
  for (let i = 0; i < entryCount; i++) {
    const e = table.subarray(32 + i * 32, 64 + i * 32);
    const flags = e.readUInt32LE(24);
    const entry: VhdxMetadataEntry = {
      index: i,
      itemId: bytesToGuid(e.subarray(0, 16)),
      offset: e.readUInt32LE(16),
      length: e.readUInt32LE(20),
      isUser: (flags & FLAG_IS_USER) !== 0,
      isVirtualDisk: (flags & FLAG_IS_VIRTUAL_DISK) !== 0,
      isRequired: (flags & FLAG_IS_REQUIRED) !== 0,
    };
    const name = `metadata item ${entry.itemId}${entry.isUser ? ' (user)' : ''}`;
    if (entry.length > MAX_ITEM_LENGTH) reject('out-of-bounds', `metadata table: ${name} is ${entry.length} bytes, above the 1 MiB item limit`);
    if ((entry.length === 0) !== (entry.offset === 0)) reject('bad-header', `metadata table: ${name} has offset ${entry.offset} and length ${entry.length} (zero only together)`);
    if (entry.length > 0 && entry.offset < 64 * KiB) reject('overlap', `metadata table: ${name} at offset ${entry.offset} overlaps the metadata table (items start at 64 KiB)`);
    if (entry.offset + entry.length > metadataRegion.length) {
      reject('out-of-bounds', `metadata table: ${name} at ${entry.offset} (${entry.length} bytes) runs past the end of the ${metadataRegion.length}-byte metadata region`);
    }
    if (entries.some((x) => x.itemId === entry.itemId && x.isUser === entry.isUser)) reject('duplicate-item', `metadata table: ${name} appears twice`);
    const clash = entry.length > 0 ? entries.find((x) => x.length > 0 && overlaps(x, entry)) : undefined;
    if (clash) reject('overlap', `metadata table: ${name} at ${entry.offset} overlaps item ${clash.itemId} at ${clash.offset}`);
    if (entry.isUser && ++userCount > 1024) reject('bad-header', 'metadata table: more than 1024 user items');
    const known = entry.isUser ? entry.itemId === VHDX_GUIDS.hyperplaneMetadata : SYSTEM_ITEMS.has(entry.itemId);
    if (entry.isRequired && !known) reject('unsupported-feature', `metadata table: required ${name} is not understood`);
    entries.push(entry);
  }

  const sys = (guid: string) => entries.find((e) => !e.isUser && e.itemId === guid);
  const readItem = async (guid: string, what: string, min: number): Promise<Buffer> => {
    const e = sys(guid) ?? (guid === VHDX_GUIDS.virtualDiskSize ? sys(VIRTUAL_DISK_SIZE_ALT) : undefined);
    if (!e) reject('bad-header', `metadata: required ${what} item is missing`);
    if (e.length < min) reject('bad-header', `metadata: ${what} item is ${e.length} bytes, expected at least ${min}`);
    return readExact(view, metadataRegion.offset + e.offset, e.length, `vhdx ${what} item`);
  };
  const params = await readItem(VHDX_GUIDS.fileParameters, 'file parameters', 8);
  const sizeItem = await readItem(VHDX_GUIDS.virtualDiskSize, 'virtual disk size', 8);
  const logical = (await readItem(VHDX_GUIDS.logicalSectorSize, 'logical sector size', 4)).readUInt32LE(0);
  const physical = (await readItem(VHDX_GUIDS.physicalSectorSize, 'physical sector size', 4)).readUInt32LE(0);
  await readItem(VHDX_GUIDS.page83Data, 'page 83 data', 16);

  const blockSize = params.readUInt32LE(0);
  const leaveBlocksAllocated = (params.readUInt32LE(4) & 1) !== 0;
  const hasParent = (params.readUInt32LE(4) & 2) !== 0;
  if (!isPow2(blockSize) || blockSize < MiB || blockSize > 256 * MiB) reject('bad-header', `metadata: block size ${blockSize} is not a power of two between 1 MiB and 256 MiB`);
  if (logical !== 512 && logical !== 4096) reject('bad-header', `metadata: logical sector size ${logical} is not 512 or 4096`);
  if (physical !== 512 && physical !== 4096) reject('bad-header', `metadata: physical sector size ${physical} is not 512 or 4096`);
  const rawSize = sizeItem.readBigUInt64LE(0);
  if (rawSize > BigInt(VHDX_MAX_VIRTUAL_SIZE)) reject('virtual-size-too-large', `metadata: virtual size ${rawSize} bytes exceeds the VHDX maximum of 64 TiB`);
  const virtualSize = Number(rawSize);
  if (limits.maxVirtualSizeBytes !== undefined && virtualSize > limits.maxVirtualSizeBytes) {
    reject('virtual-size-too-large', `metadata: virtual size ${virtualSize} bytes exceeds the limit of ${limits.maxVirtualSizeBytes} bytes`);
  }
  if (virtualSize === 0 || virtualSize % logical !== 0) reject('bad-header', `metadata: virtual size ${virtualSize} is not a positive multiple of the ${logical}-byte sector`);

  // The BAT must have room for every block (and, interleaved, the sector bitmap blocks).
  const chunkRatio = (2 ** 23 * logical) / blockSize;
  const dataBlocks = Math.ceil(virtualSize / blockSize);
  const batEntries = hasParent ? Math.ceil(dataBlocks / chunkRatio) * (chunkRatio + 1) : dataBlocks + Math.floor((dataBlocks - 1) / chunkRatio);
  if (batEntries * 8 > bat.length) reject('bad-header', `BAT region of ${bat.length} bytes is too small for ${batEntries} entries`);

  let parentLocator: Record<string, string> | undefined;
  let parentPath: string | undefined;
  if (hasParent) {
    const loc = await readItem(VHDX_GUIDS.parentLocator, 'parent locator', 20);
    parentLocator = parseParentLocator(loc);
    parentPath = parentLocator.relative_path ?? parentLocator.volume_path ?? parentLocator.absolute_win32_path;
    if (parentPath === undefined) reject('bad-header', 'parent locator: no relative_path, volume_path or absolute_win32_path entry');
  }

  const metadataEntry = entries.find((e) => e.isUser && e.itemId === VHDX_GUIDS.hyperplaneMetadata);
  const metadataBytes =
    metadataEntry && metadataEntry.length > 0
      ? await readExact(view, metadataRegion.offset + metadataEntry.offset, metadataEntry.length, 'vhdx Hyperplane metadata item')
      : undefined;

  return {
    current,
    other,
    pendingLog,
    bat,
    metadataRegion,
    regions,
    metadataTable: table,
    entries,
    blockSize,
    leaveBlocksAllocated,
    hasParent,
    virtualSize,
    logicalSectorSize: logical,
    physicalSectorSize: physical,
    parentLocator,
    parentPath,
    metadataEntry,
    metadataBytes,
  };
}

/** Parses a VHDX parent locator item (MS-VHDX 2.6.2.6): type GUID, then UTF-16 key/value pairs. */
function parseParentLocator(item: Buffer): Record<string, string> {
  const type = bytesToGuid(item.subarray(0, 16));
  if (type !== VHDX_GUIDS.vhdxParentLocatorType) reject('unsupported-feature', `parent locator: type ${type} is not the VHDX locator type`);
  const count = item.readUInt16LE(18);
  if (20 + count * 12 > item.length) reject('out-of-bounds', `parent locator: ${count} entries run past the ${item.length}-byte item`);
  const out: Record<string, string> = Object.create(null) as Record<string, string>;
  for (let i = 0; i < count; i++) {
    const e = item.subarray(20 + i * 12, 32 + i * 12);
    const [ko, vo, kl, vl] = [e.readUInt32LE(0), e.readUInt32LE(4), e.readUInt16LE(8), e.readUInt16LE(10)];
    if (ko + kl > item.length || vo + vl > item.length) reject('out-of-bounds', `parent locator: entry ${i} points past the end of the item`);
    out[item.toString('utf16le', ko, ko + kl)] = item.toString('utf16le', vo, vo + vl);
  }
  return out;
}

/** The error for metadata of `needed` bytes that does not fit this file's metadata region. */
export function vhdxTooLargeError(img: VhdxImage, needed: number): MetadataTooLargeError {
  const cap = vhdxMetadataCapacity(img);
  return new MetadataTooLargeError(
    `vhdx metadata region (${img.metadataRegion.length} bytes) has room for ${cap} bytes next to the existing items ` +
      `(the old copy stays until the log switches the table to the new one, and an item is at most 1 MiB); ` +
      `this metadata needs ${needed} bytes even compressed. Trim the history.`,
    needed,
    cap,
  );
}

/** Largest item (bytes) a write could place in the metadata region now, next to everything live. */
export function vhdxMetadataCapacity(img: VhdxImage): number {
  return Math.min(MAX_ITEM_LENGTH, largestGap(img));
}

function liveItems(img: VhdxImage): Array<{ offset: number; length: number }> {
  return img.entries.filter((e) => e.length > 0).map((e) => ({ offset: e.offset, length: e.length }));
}

function gaps(img: VhdxImage): Array<[number, number]> {
  const live = liveItems(img).sort((a, b) => a.offset - b.offset);
  const out: Array<[number, number]> = [];
  let cursor = 64 * KiB;
  for (const it of live) {
    if (it.offset > cursor) out.push([cursor, it.offset]);
    cursor = Math.max(cursor, it.offset + it.length);
  }
  if (img.metadataRegion.length > cursor) out.push([cursor, img.metadataRegion.length]);
  return out;
}

function largestGap(img: VhdxImage): number {
  return gaps(img).reduce((m, [a, b]) => Math.max(m, b - a), 0);
}

/**
 * Header update (MS-VHDX 2.2.2.1): write the non-current header with sequence + 1 and the new
 * fields, flush; it is now current. Called twice so both copies are up to date.
 */
async function updateHeader(io: ImageIo, cur: VhdxHeader, fields: { fileWriteGuid: Buffer; logGuid: Buffer }): Promise<VhdxHeader> {
  const slot: 0 | 1 = cur.slot === 0 ? 1 : 0;
  const raw = Buffer.from(cur.raw);
  raw.writeBigUInt64LE(cur.sequence + 1n, 8);
  fields.fileWriteGuid.copy(raw, 16);
  fields.logGuid.copy(raw, 48);
  raw.writeUInt32LE(0, 4);
  raw.writeUInt32LE(crc32cWithZeroedField(raw, 4), 4);
  await io.write(HEADER_OFFSETS[slot], raw);
  await io.flush();
  return { ...cur, slot, sequence: cur.sequence + 1n, fileWriteGuid: Buffer.from(fields.fileWriteGuid), logGuid: Buffer.from(fields.logGuid), raw };
}

async function updateHeaders(io: ImageIo, cur: VhdxHeader, fields: { fileWriteGuid: Buffer; logGuid: Buffer }): Promise<VhdxHeader> {
  return updateHeader(io, await updateHeader(io, cur, fields), fields);
}

/**
 * Replays a pending log onto the file, as an opening writer must before changing anything:
 * headers first (new FileWriteGuid), then the logged writes, flush, then LogGuid cleared.
 * Returns the freshly parsed image.
 */
export async function replayVhdxLog(io: ImageIo, img: VhdxImage, fileWriteGuid: Buffer = randomBytes(16)): Promise<VhdxImage> {
  if (!img.pendingLog) return img;
  const cur = await updateHeaders(io, img.current, { fileWriteGuid, logGuid: img.current.logGuid });
  await applyLogSequence(io, img.pendingLog);
  await updateHeaders(io, cur, { fileWriteGuid, logGuid: ZERO_GUID });
  return parseVhdx(io);
}

/** What a metadata write changes; `sectors` are the 4 KiB metadata-table sectors to log. */
interface VhdxTableChange {
  itemOffset: number | null;
  sectors: Array<{ offset: number; data: Buffer }>;
}

/** Computes the new metadata table for writing `envelope` (null: remove our item). */
function planTableChange(img: VhdxImage, envelope: Buffer | null, inheritable: boolean): VhdxTableChange {
  const table = Buffer.from(img.metadataTable);
  const ours = img.metadataEntry;
  let itemOffset: number | null = null;
  if (envelope) {
    const fit = gaps(img).find(([a, b]) => ((a + 7) & ~7) + envelope.length <= b);
    if (!fit) throw vhdxTooLargeError(img, envelope.length);
    itemOffset = (fit[0] + 7) & ~7;
    let index = ours?.index;
    if (index === undefined) {
      index = table.readUInt16LE(10);
      if (index >= 2047) throw new MetadataTooLargeError('vhdx metadata table is full (2047 entries)', 1, 0);
      table.writeUInt16LE(index + 1, 10);
    }
    const e = 32 + index * 32;
    table.fill(0, e, e + 32);
    guidToBytes(VHDX_GUIDS.hyperplaneMetadata).copy(table, e);
    table.writeUInt32LE(itemOffset, e + 16);
    table.writeUInt32LE(envelope.length, e + 20);
    table.writeUInt32LE(FLAG_IS_USER | (inheritable ? FLAG_IS_VIRTUAL_DISK : 0), e + 24);
  } else if (ours) {
    const last = table.readUInt16LE(10) - 1;
    const e = 32 + ours.index * 32;
    table.copy(table, e, 32 + last * 32, 64 + last * 32);
    table.fill(0, 32 + last * 32, 64 + last * 32);
    table.writeUInt16LE(last, 10);
  }
  const sectors: VhdxTableChange['sectors'] = [];
  for (let s = 0; s < METADATA_TABLE_SIZE; s += LOG_SECTOR) {
    const next = table.subarray(s, s + LOG_SECTOR);
    if (!next.equals(img.metadataTable.subarray(s, s + LOG_SECTOR))) sectors.push({ offset: img.metadataRegion.offset + s, data: Buffer.from(next) });
  }
  return { itemOffset, sectors };
}

/**
 * Writes (or removes, with null) our user metadata item, following the VHDX log protocol:
 * 0. A pending log is replayed first (as any opening writer must).
 * 1. Both headers are updated (new FileWriteGuid for this session, a fresh LogGuid), flushed.
 *    DataWriteGuid is left alone: guest-visible data does not change, and differencing
 *    children link to it.
 * 2. The new item bytes go to a free range of the metadata region that no table entry
 *    references (invisible until step 4, like a new payload block before its BAT entry); flush.
 * 3. One log entry, at the start of the log, carries the changed 4 KiB metadata-table sectors
 *    as data descriptors (sequence 1, tail = itself, CRC-32C); flush.
 * 4. The same sectors are written in place; flush.
 * 5. Both headers are updated with LogGuid zero (log empty), each flushed.
 * A crash before 3 is durable leaves the old table (LogGuid set but no valid entry: nothing to
 * replay). A crash after 3 and before 5 leaves a valid log that any reader replays (QEMU on a
 * read-write open or `qemu-img check -r all`, and this library in memory) to the new table.
 * Precondition: no other process has the file open; writers are serialized by the caller.
 */
export async function writeVhdxMetadata(io: ImageIo, image: VhdxImage, envelope: Buffer | null, inheritable: boolean): Promise<void> {
  const fileWriteGuid = randomBytes(16);
  let img = image;
  // Each write bumps the header sequence number 4 times (2 header updates, twice each), maybe 8
  // with a replay; a u64 that cannot take that is hostile or broken, not something to wrap.
  if (img.current.sequence > 2n ** 64n - 16n) reject('bad-header', 'header: sequence number is exhausted; cannot update headers');
  const change0 = planTableChange(img, envelope, inheritable); // fail early, before any write
  if (change0.sectors.length === 0) return;
  const entrySize = (descriptorSectors(change0.sectors.length) + change0.sectors.length) * LOG_SECTOR;
  if (img.current.logLength < entrySize) {
    throw new MetadataUnsupportedError(
      `vhdx file has a ${img.current.logLength}-byte log, too small for a ${entrySize}-byte log entry; metadata cannot be updated crash-safely`,
    );
  }
  if (img.pendingLog) img = await replayVhdxLog(io, img, fileWriteGuid);
  const change = img === image ? change0 : planTableChange(img, envelope, inheritable);
  if (change.sectors.length === 0) return;

  const logGuid = randomBytes(16);
  const cur = await updateHeaders(io, img.current, { fileWriteGuid, logGuid });
  if (envelope && change.itemOffset !== null) {
    await io.write(img.metadataRegion.offset + change.itemOffset, envelope);
    await io.flush();
  }
  const entry = buildLogEntry({ logGuid, sequence: 1n, tail: 0, fileSize: io.size, sectors: change.sectors });
  await io.write(img.current.logOffset, entry);
  await io.flush();
  for (const s of change.sectors) await io.write(s.offset, s.data);
  await io.flush();
  await updateHeaders(io, cur, { fileWriteGuid, logGuid: ZERO_GUID });
}
