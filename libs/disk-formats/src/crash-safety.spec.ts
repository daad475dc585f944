import fc from 'fast-check';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { readMetadataRecordIo, removeMetadataIo, writeMetadataIo } from './image';
import { type ImageIo, MemoryImageIo, type RecordedOp } from './image-io';
import type { ImageMetadata } from './metadata-schema';
import { checkImage, makeTempDir, mustRun } from './qemu-tools';
import { metadataArb } from './testing/arbitraries';
import { type BaseImage, makeBaseImage } from './testing/images';
import { appendEntry } from './testing/vhdx-edit';

/**
 * Crash model: a completed flush makes every earlier write durable. Writes issued after the last
 * completed flush may each be lost, land whole, or land torn at 512-byte sector granularity (a
 * sector is written entirely or not at all). We replay every such outcome of a recorded write
 * and require the image to read as the old metadata or the new one, never anything else.
 */

let tmp: Awaited<ReturnType<typeof makeTempDir>>;
const bases: Record<string, BaseImage> = {};

beforeAll(async () => {
  tmp = await makeTempDir('hp-crash');
  bases.qcow2 = await makeBaseImage(tmp.dir, 'qcow2');
  bases.vhdx = await makeBaseImage(tmp.dir, 'vhdx');
  // An overlay whose backing file name sits right after the extensions: the writer must move it.
  const backing = join(tmp.dir, 'backing.raw');
  const overlay = join(tmp.dir, 'overlay.qcow2');
  await mustRun('qemu-img', ['create', '-q', '-f', 'raw', backing, '64M']);
  await mustRun('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', backing, '-F', 'raw', overlay]);
  bases.overlay = { format: 'qcow2', path: overlay, bytes: await readFile(overlay) };
  // A VHDX whose metadata table already holds 130 (empty) user items: our entry then lands in
  // another sector than the entry count, in the table's second 4 KiB, so the table change spans
  // sectors and only the log makes it atomic.
  const crowded = Buffer.from(bases.vhdx.bytes);
  for (let i = 0; i < 130; i++) {
    appendEntry(crowded, { guid: `0000${i.toString(16).padStart(4, '0')}-0000-4000-8000-000000000000`, offset: 0, length: 0, flags: 1 });
  }
  const crowdedPath = join(tmp.dir, 'crowded.vhdx');
  await writeFile(crowdedPath, crowded);
  bases.crowded = { format: 'vhdx', path: crowdedPath, bytes: crowded };
});
afterAll(async () => tmp.cleanup());

type Write = { offset: number; data: Buffer };

/**
 * An image as a pristine base plus writes laid over it: crash states cost no copy of the
 * (multi-MiB) file. Records writes and flushes like MemoryImageIo.
 */
class PatchedIo implements ImageIo {
  readonly ops: RecordedOp[] = [];
  constructor(
    readonly base: Buffer,
    readonly patches: Write[] = [],
  ) {}

  get size(): number {
    return this.base.length;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const end = Math.min(this.base.length, offset + length);
    const out = Buffer.from(this.base.subarray(Math.min(offset, end), end));
    for (const p of this.patches) {
      const a = Math.max(offset, p.offset);
      const b = Math.min(end, p.offset + p.data.length);
      if (a < b) p.data.copy(out, a - offset, a - p.offset, b - p.offset);
    }
    return out;
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.patches.push({ offset, data: Buffer.from(data) });
    this.ops.push({ kind: 'write', offset, data: Buffer.from(data) });
  }

  async flush(): Promise<void> {
    this.ops.push({ kind: 'flush' });
  }

  materialize(): Buffer {
    const out = Buffer.from(this.base);
    for (const p of this.patches) p.data.copy(out, p.offset);
    return out;
  }
}

/** Splits recorded ops into epochs: the writes between two flushes. */
function epochs(ops: RecordedOp[]): Write[][] {
  const out: Write[][] = [[]];
  for (const op of ops) {
    if (op.kind === 'flush') out.push([]);
    else out[out.length - 1].push({ offset: op.offset, data: op.data });
  }
  return out.filter((e, i) => e.length > 0 || i === 0);
}

/** What became of one write that was in flight: lost, landed, or torn (only even / odd 512-byte sectors landed). */
type Fate = 'lost' | 'whole' | 'even' | 'odd';
const FATES: Fate[] = ['lost', 'whole', 'even', 'odd'];

function pieces(w: Write, fate: Fate): Write[] {
  if (fate === 'lost') return [];
  if (fate === 'whole') return [w];
  const out: Write[] = [];
  for (let s = Math.floor(w.offset / 512); s * 512 < w.offset + w.data.length; s++) {
    if ((s % 2 === 0) !== (fate === 'even')) continue;
    const a = Math.max(w.offset, s * 512);
    const b = Math.min(w.offset + w.data.length, (s + 1) * 512);
    out.push({ offset: a, data: w.data.subarray(a - w.offset, b - w.offset) });
  }
  return out;
}

/** Every state the file can be in after a crash at any point of the recorded write. */
function* crashStates(start: PatchedIo, eps: Write[][]): Generator<{ label: string; io: PatchedIo }> {
  for (let k = 0; k <= eps.length; k++) {
    const durable = [...start.patches, ...eps.slice(0, k).flat()];
    const inFlight = eps[k] ?? [];
    const combos = inFlight.length === 0 ? 1 : FATES.length ** Math.min(inFlight.length, 3);
    for (let c = 0; c < combos; c++) {
      const fates = inFlight.map((_, i) => FATES[Math.floor(c / FATES.length ** Math.min(i, 2)) % FATES.length]);
      const landed = inFlight.flatMap((w, i) => pieces(w, fates[i]));
      yield { label: `after ${k} flushes, in flight: ${fates.join(',') || 'nothing'}`, io: new PatchedIo(start.base, [...durable, ...landed]) };
    }
  }
}

async function record(start: PatchedIo, m: ImageMetadata | null): Promise<Write[][]> {
  const io = new PatchedIo(start.base, [...start.patches]);
  if (m) await writeMetadataIo(io, m);
  else await removeMetadataIo(io);
  return epochs(io.ops);
}

async function readsAs(io: ImageIo): Promise<ImageMetadata | null> {
  return (await readMetadataRecordIo(io))?.metadata ?? null;
}

/** The image before the write under test: `oldDoc` stored (and, for "crowded", items after ours). */
async function startingPoint(kind: string, oldDoc: ImageMetadata | null): Promise<PatchedIo> {
  const io = new PatchedIo(bases[kind].bytes);
  if (oldDoc) await writeMetadataIo(io, oldDoc);
  if (kind === 'crowded') {
    // Items added after ours by someone else: removing ours then moves the last entry into its
    // slot and lowers the count, changes in three different 512-byte sectors.
    const bytes = io.materialize();
    for (let i = 0; i < 10; i++) appendEntry(bytes, { guid: `ffff00${i.toString(16).padStart(2, '0')}-0000-4000-8000-000000000000`, offset: 0, length: 0, flags: 1 });
    return new PatchedIo(bytes);
  }
  return io;
}

describe('crash safety of metadata writes', () => {
  it.each(['qcow2', 'overlay', 'vhdx', 'crowded'])('%s: after a crash at any point, with any fate of the writes in flight, the image reads as the old or the new metadata', async (kind) => {
    await fc.assert(
      fc.asyncProperty(fc.option(metadataArb(), { freq: 3 }), fc.option(metadataArb(), { freq: 3 }), async (oldDoc, newDoc) => {
        const start = await startingPoint(kind, oldDoc);
        const eps = await record(start, newDoc);
        for (const { label, io } of crashStates(start, eps)) {
          let got: ImageMetadata | null | Error;
          try {
            got = await readsAs(io);
          } catch (e) {
            got = e as Error;
          }
          expect({ label, ok: [oldDoc, newDoc].some((d) => JSON.stringify(d) === JSON.stringify(got)) }).toEqual({ label, ok: true });
        }
        // The next write after any crash (here: the worst, everything torn) succeeds and sticks.
        const states = [...crashStates(start, eps)];
        const after = states[states.length - 1].io;
        await writeMetadataIo(after, { schemaVersion: 1, description: 'after the crash' });
        expect(await readsAs(after)).toEqual({ schemaVersion: 1, description: 'after the crash' });
      }),
      { numRuns: kind === 'qcow2' || kind === 'overlay' ? 40 : 12 },
    );
  });

  it.each(['qcow2', 'overlay', 'crowded'] as const)('%s: QEMU accepts the file at every flush boundary of a write', async (kind) => {
    const format = bases[kind].format;
    const first = { schemaVersion: 1 as const, description: 'old' };
    const second = { schemaVersion: 1 as const, description: 'new', tags: ['x'] };
    const start = await startingPoint(kind, first);
    const eps = await record(start, second);
    for (let k = 0; k <= eps.length; k++) {
      const io = new PatchedIo(start.base, [...start.patches, ...eps.slice(0, k).flat()]);
      const p = join(tmp.dir, `boundary-${kind}-${k}.${format}`);
      await writeFile(p, io.materialize());
      const before = await readsAs(io);
      expect([first, second]).toContainEqual(before);
      // -r all: a crash may leave a VHDX log to replay, which QEMU does here.
      const check = await checkImage(p, format, true);
      expect({ k, code: check.code, out: check.stdout + check.stderr }).toMatchObject({ code: 0 });
      expect(await readsAs(new MemoryImageIo(await readFile(p)))).toEqual(before);
    }
  });
});
