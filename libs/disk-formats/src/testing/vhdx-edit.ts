import { crc32cWithZeroedField } from '../crc32c';
import { VHDX_GUIDS, guidToBytes } from '../vhdx';

/**
 * Byte-level editing of a VHDX file in memory, for building hostile or unusual images from a
 * genuine qemu-img one. Test-only. Offsets follow MS-VHDX; the caller decides which checksums
 * to repair so that exactly one defect is under test.
 */

export const RT_OFFSET = 192 * 1024;

/** Offset of the metadata region (from region table 1). */
export function metadataRegionOffset(b: Buffer): number {
  const count = b.readUInt32LE(RT_OFFSET + 8);
  const want = guidToBytes(VHDX_GUIDS.metadataRegion);
  for (let i = 0; i < count; i++) {
    const e = RT_OFFSET + 16 + i * 32;
    if (b.subarray(e, e + 16).equals(want)) return Number(b.readBigUInt64LE(e + 16));
  }
  throw new Error('no metadata region');
}

/** Recomputes both header checksums. */
export function fixHeaderChecksums(b: Buffer): void {
  for (const off of [64 * 1024, 128 * 1024]) {
    const h = b.subarray(off, off + 4096);
    h.writeUInt32LE(crc32cWithZeroedField(h, 4), 4);
  }
}

/** Recomputes the checksum of region table 1. */
export function fixRegionTableChecksum(b: Buffer): void {
  const rt = b.subarray(RT_OFFSET, RT_OFFSET + 64 * 1024);
  rt.writeUInt32LE(crc32cWithZeroedField(rt, 4), 4);
}

/** Patches region table 1 entry `index` (then repairs its checksum unless told not to). */
export function setRegion(b: Buffer, index: number, fields: { offset?: number; length?: number; guid?: string; required?: boolean }, fixCrc = true): void {
  const e = RT_OFFSET + 16 + index * 32;
  if (fields.guid) guidToBytes(fields.guid).copy(b, e);
  if (fields.offset !== undefined) b.writeBigUInt64LE(BigInt(fields.offset), e + 16);
  if (fields.length !== undefined) b.writeUInt32LE(fields.length, e + 24);
  if (fields.required !== undefined) b.writeUInt32LE(fields.required ? 1 : 0, e + 28);
  if (fixCrc) fixRegionTableChecksum(b);
}

/** Index of the region table entry with `guid`. */
export function regionIndex(b: Buffer, guid: string): number {
  const count = b.readUInt32LE(RT_OFFSET + 8);
  for (let i = 0; i < count; i++) if (b.subarray(RT_OFFSET + 16 + i * 32, RT_OFFSET + 32 + i * 32).equals(guidToBytes(guid))) return i;
  throw new Error(`no region ${guid}`);
}

/** A metadata table entry as raw fields. */
export interface RawEntry {
  guid: string;
  offset: number;
  length: number;
  flags: number;
}

/** Reads metadata table entry `index`. */
export function getEntry(b: Buffer, index: number): RawEntry & { at: number } {
  const at = metadataRegionOffset(b) + 32 + index * 32;
  const g = b.subarray(at, at + 16);
  const hex = Buffer.concat([Buffer.from(g.subarray(0, 4)).reverse(), Buffer.from(g.subarray(4, 6)).reverse(), Buffer.from(g.subarray(6, 8)).reverse(), g.subarray(8)]).toString('hex');
  return { at, guid: `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`, offset: b.readUInt32LE(at + 16), length: b.readUInt32LE(at + 20), flags: b.readUInt32LE(at + 24) };
}

/** Number of metadata table entries. */
export function entryCount(b: Buffer): number {
  return b.readUInt16LE(metadataRegionOffset(b) + 10);
}

/** Index of the first entry with `guid` (and IsUser = `user`). */
export function entryIndex(b: Buffer, guid: string, user = false): number {
  for (let i = 0; i < entryCount(b); i++) {
    const e = getEntry(b, i);
    if (e.guid === guid && ((e.flags & 1) === 1) === user) return i;
  }
  throw new Error(`no entry ${guid}`);
}

/** Overwrites metadata table entry `index`. */
export function setEntry(b: Buffer, index: number, fields: Partial<RawEntry>): void {
  const at = metadataRegionOffset(b) + 32 + index * 32;
  if (fields.guid) guidToBytes(fields.guid).copy(b, at);
  if (fields.offset !== undefined) b.writeUInt32LE(fields.offset, at + 16);
  if (fields.length !== undefined) b.writeUInt32LE(fields.length, at + 20);
  if (fields.flags !== undefined) b.writeUInt32LE(fields.flags, at + 24);
}

/** Appends a metadata table entry and bumps the count. */
export function appendEntry(b: Buffer, entry: RawEntry): number {
  const mr = metadataRegionOffset(b);
  const count = b.readUInt16LE(mr + 10);
  b.fill(0, mr + 32 + count * 32, mr + 64 + count * 32);
  b.writeUInt16LE(count + 1, mr + 10);
  setEntry(b, count, entry);
  return count;
}

/** Writes item bytes at `offset` within the metadata region. */
export function writeItem(b: Buffer, offset: number, data: Buffer): void {
  data.copy(b, metadataRegionOffset(b) + offset);
}

/** Builds a VHDX parent locator item (type GUID, UTF-16 key/value pairs). */
export function parentLocator(pairs: Record<string, string>): Buffer {
  const keys = Object.keys(pairs);
  const head = Buffer.alloc(20 + keys.length * 12);
  guidToBytes(VHDX_GUIDS.vhdxParentLocatorType).copy(head, 0);
  head.writeUInt16LE(keys.length, 18);
  const strings: Buffer[] = [];
  let cursor = head.length;
  keys.forEach((k, i) => {
    const kb = Buffer.from(k, 'utf16le');
    const vb = Buffer.from(pairs[k], 'utf16le');
    const e = 20 + i * 12;
    head.writeUInt32LE(cursor, e);
    head.writeUInt32LE(cursor + kb.length, e + 4);
    head.writeUInt16LE(kb.length, e + 8);
    head.writeUInt16LE(vb.length, e + 10);
    strings.push(kb, vb);
    cursor += kb.length + vb.length;
  });
  return Buffer.concat([head, ...strings]);
}

/** Turns a genuine dynamic VHDX into a differencing disk whose parent locator holds `pairs`. */
export function makeDifferencing(b: Buffer, pairs: Record<string, string>): void {
  const params = getEntry(b, entryIndex(b, VHDX_GUIDS.fileParameters));
  const mr = metadataRegionOffset(b);
  b.writeUInt32LE(b.readUInt32LE(mr + params.offset + 4) | 2, mr + params.offset + 4); // HasParent
  const loc = parentLocator(pairs);
  const at = 128 * 1024;
  writeItem(b, at, loc);
  appendEntry(b, { guid: VHDX_GUIDS.parentLocator, offset: at, length: loc.length, flags: 4 | 2 });
}
