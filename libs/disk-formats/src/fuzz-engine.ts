import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32c, crc32cWithZeroedField } from './crc32c';
import { DiskFormatError, ImageRejectedError } from './errors';
import { inspectImageIo, readMetadataRecordIo, writeMetadataIo } from './image';
import { MemoryImageIo } from './image-io';
import type { ImageMetadata } from './metadata-schema';
import { parseQcow2 } from './qcow2';
import { createImage, mustRun } from './qemu-tools';
import { parseVhdx } from './vhdx';
import { buildLogEntry } from './vhdx-log';

/**
 * A seeded, mutation-based fuzzer for both parsers and writers. Each iteration takes a genuine
 * seed image, applies a few structure-aware mutations (bit flips and interesting values in the
 * header areas, extension/entry splices, truncation, forged VHDX log entries; checksums repaired
 * most of the time so that deeper code is reached), then inspects it, reads its metadata and
 * sometimes writes new metadata and reads it back. The only acceptable failures are this
 * library's own errors (DiskFormatError); anything else is a bug. Iteration i is reproducible
 * from (seed, i) alone.
 */

/** A starting image for the fuzzer. */
export interface FuzzSeed {
  name: string;
  format: 'qcow2' | 'vhdx';
  bytes: Buffer;
  /** Where our metadata envelope sits, if the seed has one. */
  envelope?: { offset: number; length: number };
}

/** Fuzzer settings. */
export interface FuzzOptions {
  seed: number;
  iterations: number;
  /** First iteration index (to replay one failing iteration: start = i, iterations = 1). */
  start?: number;
  seeds: FuzzSeed[];
  /** Called with a line of progress now and then. */
  log?: (line: string) => void;
}

/** What a fuzz run saw. `unexpected` must be empty. */
export interface FuzzSummary {
  seed: number;
  iterations: number;
  accepted: number;
  rejected: Record<string, number>;
  writes: { attempted: number; succeeded: number; refused: number };
  unexpected: Array<{ iteration: number; seedImage: string; step: string; error: string }>;
  elapsedMs: number;
}

/** mulberry32: small, fast, good enough to drive mutations; seeded per iteration. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const INTERESTING_32 = [0, 1, 7, 8, 0x7f, 0x80, 0xff, 0x100, 0x1000, 0xffff, 0x10000, 0x100000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
const INTERESTING_64 = [0n, 1n, 0x10000n, 0x100000n, 0x300000n, 1n << 32n, 1n << 40n, 1n << 53n, (1n << 63n) - 1n, (1n << 64n) - 1n];

function writeInteresting(b: Buffer, off: number, r: () => number, bigEndian: boolean): void {
  if (off < 0) return;
  const wide = r() < 0.4;
  if (wide && off + 8 <= b.length) {
    const v = INTERESTING_64[Math.floor(r() * INTERESTING_64.length)];
    if (bigEndian) b.writeBigUInt64BE(v, off);
    else b.writeBigUInt64LE(v, off);
  } else if (off + 4 <= b.length) {
    const v = r() < 0.8 ? INTERESTING_32[Math.floor(r() * INTERESTING_32.length)] : Math.floor(r() * 2 ** 32);
    if (bigEndian) b.writeUInt32BE(v >>> 0, off);
    else b.writeUInt32LE(v >>> 0, off);
  }
}

/** Byte ranges worth mutating, per format. */
function hotRanges(seed: FuzzSeed): Array<[number, number]> {
  if (seed.format === 'qcow2') return [[0, Math.min(seed.bytes.length, 2048)]];
  const mr = 3 * 1024 * 1024;
  const ranges: Array<[number, number]> = [
    [0, 16],
    [64 * 1024, 64 * 1024 + 96],
    [128 * 1024, 128 * 1024 + 96],
    [192 * 1024, 192 * 1024 + 16 + 3 * 32],
    [mr, mr + 32 + 8 * 32],
    [mr + 64 * 1024, mr + 64 * 1024 + 64],
  ];
  if (seed.envelope) ranges.push([seed.envelope.offset, seed.envelope.offset + Math.min(seed.envelope.length, 64)]);
  return ranges;
}

function fixVhdxChecksums(b: Buffer): void {
  for (const off of [64 * 1024, 128 * 1024]) {
    if (b.length >= off + 4096 && b.toString('latin1', off, off + 4) === 'head') {
      const h = b.subarray(off, off + 4096);
      h.writeUInt32LE(crc32cWithZeroedField(h, 4), 4);
    }
  }
  const rt = 192 * 1024;
  if (b.length >= rt + 65536) {
    const t = b.subarray(rt, rt + 65536);
    t.writeUInt32LE(crc32cWithZeroedField(t, 4), 4);
  }
}

function fixEnvelope(b: Buffer, env: { offset: number; length: number } | undefined): void {
  if (!env || env.offset + env.length > b.length) return;
  b.writeUInt32LE(crc32c(b.subarray(env.offset + 16, env.offset + env.length)), env.offset + 12);
}

/** Applies 1..4 mutations; returns the (possibly shorter) image and a description. */
function mutate(seed: FuzzSeed, r: () => number): { bytes: Buffer; what: string[] } {
  let b = Buffer.from(seed.bytes);
  const what: string[] = [];
  const hot = hotRanges(seed);
  const pickHot = () => {
    const [a, z] = hot[Math.floor(r() * hot.length)];
    return a + Math.floor(r() * Math.max(1, z - a));
  };
  const count = 1 + Math.floor(r() * 4);
  for (let i = 0; i < count; i++) {
    const op = r();
    if (op < 0.3) {
      const at = pickHot();
      if (at < b.length) {
        b[at] ^= 1 << Math.floor(r() * 8);
        what.push(`flip@${at}`);
      }
    } else if (op < 0.6) {
      const at = pickHot() & ~3;
      writeInteresting(b, at, r, seed.format === 'qcow2');
      what.push(`value@${at}`);
    } else if (op < 0.7 && seed.envelope) {
      const at = seed.envelope.offset + 16 + Math.floor(r() * Math.max(1, seed.envelope.length - 16));
      if (at < b.length) b[at] = Math.floor(r() * 256);
      what.push(`payload@${at}`);
    } else if (op < 0.78) {
      // Splice an extension header (qcow2) or a metadata table entry (VHDX).
      if (seed.format === 'qcow2') {
        const at = (112 + Math.floor(r() * 900)) & ~7;
        const types = [0, 0x48506d64, 0x48507064, 0xe2792aca, 0x6803f857, 0x23852875, 0x0537be77, 0x44415441, 0x12345678];
        if (at + 8 <= b.length) {
          b.writeUInt32BE(types[Math.floor(r() * types.length)] >>> 0, at);
          b.writeUInt32BE(r() < 0.5 ? Math.floor(r() * 256) : INTERESTING_32[Math.floor(r() * INTERESTING_32.length)], at + 4);
        }
        what.push(`ext@${at}`);
      } else {
        const mr = 3 * 1024 * 1024;
        const from = mr + 32 + 32 * Math.floor(r() * 6);
        const to = mr + 32 + 32 * Math.floor(r() * 8);
        if (to + 32 <= b.length) {
          b.copy(b, to, from, from + 32);
          if (r() < 0.5) b.writeUInt16LE(Math.floor(r() * 9), mr + 10);
        }
        what.push(`entry ${from}->${to}`);
      }
    } else if (op < 0.86 && seed.format === 'vhdx') {
      // Forge a pending log: new LogGuid in both headers and one entry at the log's start.
      const guid = Buffer.alloc(16);
      for (let k = 0; k < 16; k++) guid[k] = Math.floor(r() * 256);
      for (const h of [64 * 1024, 128 * 1024]) guid.copy(b, h + 48);
      const end = Math.floor(b.length / 4096) * 4096;
      const targets = [192 * 1024, 3 * 1024 * 1024, 3 * 1024 * 1024 + 4096, 3 * 1024 * 1024 + 64 * 1024, 64 * 1024, end - 4096, end + 4096].filter((t) => t >= 0);
      const sectors = Array.from({ length: 1 + Math.floor(r() * 2) }, () => {
        const data = Buffer.alloc(4096);
        const source = targets[Math.floor(r() * targets.length)];
        if (source + 4096 <= b.length) b.copy(data, 0, source, source + 4096);
        data[Math.floor(r() * 4096)] ^= 0xff;
        return { offset: source, data };
      });
      const entry = buildLogEntry({ logGuid: guid, sequence: BigInt(1 + Math.floor(r() * 5)), tail: 0, fileSize: b.length, sectors });
      if (r() < 0.2) entry[Math.floor(r() * entry.length)] ^= 1;
      if (1024 * 1024 + entry.length <= b.length) entry.copy(b, 1024 * 1024);
      what.push(`log(${sectors.map((s) => s.offset).join(',')})`);
    } else if (op < 0.93) {
      const len = r() < 0.5 ? Math.floor(r() * Math.min(b.length, 300 * 1024)) : Math.floor(r() * b.length);
      b = b.subarray(0, len);
      what.push(`truncate ${len}`);
    } else {
      const at = pickHot();
      const n = 1 + Math.floor(r() * 16);
      for (let k = 0; k < n && at + k < b.length; k++) b[at + k] = Math.floor(r() * 256);
      what.push(`random@${at}+${n}`);
    }
  }
  if (r() < 0.7) {
    if (seed.format === 'vhdx') fixVhdxChecksums(b);
    fixEnvelope(b, seed.envelope);
    what.push('checksums fixed');
  }
  return { bytes: Buffer.from(b), what };
}

const WORDS = ['web', 'db', 'x86_64', 'päivää', '日本', '🚀', '', 'a"b', '\\', '\u0000', 'prod', 'q35'];

/** A small valid metadata document drawn from `r`. */
function randomMetadata(r: () => number): ImageMetadata {
  const word = () => WORDS[Math.floor(r() * WORDS.length)] + Math.floor(r() * 1000);
  const m: ImageMetadata = { schemaVersion: 1 };
  if (r() < 0.7) m.description = Array.from({ length: Math.floor(r() * 20) }, word).join(' ');
  if (r() < 0.5) m.hardware = { arch: 'x86_64', minVcpus: 1 + Math.floor(r() * 64), minMemoryMiB: 1 + Math.floor(r() * 65536) };
  if (r() < 0.5) m.tags = Array.from({ length: Math.floor(r() * 5) }, word);
  if (r() < 0.5) m.labels = { env: word(), tier: word() };
  if (r() < 0.3) m.configFiles = [{ path: '/etc/motd', content: word().repeat(Math.floor(r() * 2000)) }];
  if (r() < 0.5) m.history = Array.from({ length: Math.floor(r() * 10) }, () => ({ at: '2026-11-23T12:00:00Z', operation: 'op', by: word() || 'x' }));
  return m;
}

/** Runs the fuzzer; never throws for a finding (findings go to `unexpected`). */
export async function runFuzz(options: FuzzOptions): Promise<FuzzSummary> {
  const started = Date.now();
  const summary: FuzzSummary = {
    seed: options.seed,
    iterations: options.iterations,
    accepted: 0,
    rejected: {},
    writes: { attempted: 0, succeeded: 0, refused: 0 },
    unexpected: [],
    elapsedMs: 0,
  };
  const first = options.start ?? 0;
  for (let i = first; i < first + options.iterations; i++) {
    const r = rng((Math.imul(options.seed, 0x9e3779b1) ^ Math.imul(i + 1, 0x85ebca6b)) >>> 0);
    const seed = options.seeds[Math.floor(r() * options.seeds.length)];
    const { bytes, what } = mutate(seed, r);
    const io = new MemoryImageIo(bytes);
    let step = 'inspect';
    const t0 = Date.now();
    try {
      try {
        await inspectImageIo(io, { allowBackingFile: r() < 0.5, allowDataFile: r() < 0.5 });
        summary.accepted++;
      } catch (e) {
        if (!(e instanceof DiskFormatError)) throw e;
        const key = e instanceof ImageRejectedError ? e.reason : e.name;
        summary.rejected[key] = (summary.rejected[key] ?? 0) + 1;
      }
      step = 'read';
      let readable = true;
      try {
        await readMetadataRecordIo(io);
      } catch (e) {
        if (!(e instanceof DiskFormatError)) throw e;
        readable = false;
      }
      if (readable && r() < 0.35) {
        step = 'write';
        summary.writes.attempted++;
        const m = randomMetadata(r);
        let wrote = false;
        try {
          await writeMetadataIo(io, m, { inheritable: r() < 0.5 });
          wrote = true;
        } catch (e) {
          if (!(e instanceof DiskFormatError)) throw e;
          summary.writes.refused++;
        }
        if (wrote) {
          summary.writes.succeeded++;
          step = 'read-after-write';
          const back = await readMetadataRecordIo(io);
          if (JSON.stringify(back?.metadata) !== JSON.stringify(m)) throw new Error('metadata read back differs from what was written');
        }
      }
      if (Date.now() - t0 > 5000) throw new Error(`iteration took ${Date.now() - t0} ms`);
    } catch (e) {
      const err = e as Error;
      summary.unexpected.push({
        iteration: i,
        seedImage: seed.name,
        step,
        error: `${err?.name}: ${err?.message} [${what.join('; ')}] ${(err?.stack ?? '').split('\n').slice(1, 4).join(' | ')}`,
      });
    }
    if (options.log && (i - first + 1) % 1000 === 0) options.log(`${i - first + 1}/${options.iterations} iterations, ${summary.unexpected.length} unexpected`);
  }
  summary.elapsedMs = Date.now() - started;
  return summary;
}

/**
 * Makes the seed images with qemu-img in `dir`: qcow2 (v3 with metadata, v2, 4 KiB clusters,
 * overlay with a backing file) and VHDX (with and without metadata).
 */
export async function createFuzzSeeds(dir: string): Promise<FuzzSeed[]> {
  const seeds: FuzzSeed[] = [];
  const add = async (name: string, format: 'qcow2' | 'vhdx', withMetadata: boolean) => {
    const path = join(dir, name);
    const io = new MemoryImageIo(await readFile(path));
    if (withMetadata) {
      await writeMetadataIo(io, {
        schemaVersion: 1,
        description: 'fuzz seed',
        hardware: { arch: 'x86_64', minVcpus: 1, minMemoryMiB: 128 },
        tags: ['seed'],
        history: [{ at: '2026-11-23T12:00:00Z', operation: 'created', by: 'fuzz' }],
      });
    }
    let envelope: FuzzSeed['envelope'];
    if (withMetadata && format === 'qcow2') {
      const ext = (await parseQcow2(io)).metadataExtension!;
      envelope = { offset: ext.offset + 8, length: ext.length };
    } else if (withMetadata) {
      const img = await parseVhdx(io);
      envelope = { offset: img.metadataRegion.offset + img.metadataEntry!.offset, length: img.metadataEntry!.length };
    }
    seeds.push({ name, format, bytes: io.bytes, envelope });
  };
  await createImage(join(dir, 'seed-v3.qcow2'), 'qcow2', '16M');
  await add('seed-v3.qcow2', 'qcow2', true);
  await createImage(join(dir, 'seed-v2.qcow2'), 'qcow2', '16M', 'compat=0.10');
  await add('seed-v2.qcow2', 'qcow2', false);
  await createImage(join(dir, 'seed-4k.qcow2'), 'qcow2', '16M', 'cluster_size=4096');
  await add('seed-4k.qcow2', 'qcow2', true);
  await createImage(join(dir, 'backing.raw'), 'raw', '16M');
  await mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', join(dir, 'backing.raw'), '-F', 'raw', join(dir, 'seed-overlay.qcow2')]);
  await add('seed-overlay.qcow2', 'qcow2', true);
  await createImage(join(dir, 'seed.vhdx'), 'vhdx', '16M');
  await add('seed.vhdx', 'vhdx', true);
  await createImage(join(dir, 'seed-empty.vhdx'), 'vhdx', '16M');
  await add('seed-empty.vhdx', 'vhdx', false);
  return seeds;
}
