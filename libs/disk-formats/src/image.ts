import { type DiskFormat, detectFormatFromBytes, sniffForeignFormat } from './detect';
import { type EnvelopeEncoding, decodeEnvelope, encodeEnvelopeToFit } from './envelope';
import { ImageRejectedError, MetadataUnsupportedError, quoteForMessage } from './errors';
import { FileImageIo, type ImageIo, PrefetchIo } from './image-io';
import { type ImageMetadata, parseStoredMetadata, serializeMetadata } from './metadata-schema';
import { type Qcow2Header, parseQcow2, qcow2MetadataBytes, qcow2MetadataCapacity, qcow2TooLargeError, writeQcow2Metadata } from './qcow2';
import { type VhdxImage, parseVhdx, vhdxMetadataCapacity, vhdxTooLargeError, writeVhdxMetadata } from './vhdx';

/**
 * The library's entry points: intake inspection, and reading/writing metadata by path. Each
 * opens the file, decides its format from magic bytes (never from the name), and hands it to
 * that format's parser only: a file is never re-tried as another format.
 */

/** Default upper bound on a disk's virtual size at intake: 4 TiB. */
export const DEFAULT_MAX_VIRTUAL_SIZE_BYTES = 4 * 1024 ** 4;

/** What intake accepts. Everything hostile is rejected by default. */
export interface IntakeOptions {
  /** Reject disks larger than this (default DEFAULT_MAX_VIRTUAL_SIZE_BYTES). */
  maxVirtualSizeBytes?: number;
  /** The format the caller was told (upload name, API field); a different magic is rejected. */
  expectedFormat?: DiskFormat;
  /** Accept qcow2 backing files / VHDX parents and report them (default false: reject). */
  allowBackingFile?: boolean;
  /** Accept qcow2 external data files and report them (default false: reject). */
  allowDataFile?: boolean;
  /** Accept raw images (default true). */
  allowRaw?: boolean;
}

/** What intake learned about an accepted image. */
export interface ImageInfo {
  /** Detected from magic bytes; pin it when starting QEMU (format=...). */
  format: DiskFormat;
  virtualSizeBytes: number;
  fileSizeBytes: number;
  /** Allocation unit: qcow2 cluster size, VHDX block size, 512 for raw. */
  clusterSize: number;
  /** Only when allowBackingFile: the qcow2 backing file or VHDX parent path, as stored. */
  backingFile?: string;
  /** Only when allowDataFile: the qcow2 external data file name, if recorded. */
  dataFile?: string;
  encrypted: boolean;
  /** qcow2 dirty bit set, or a VHDX log awaiting replay: QEMU repairs it on a read-write open. */
  needsRepair: boolean;
  /** False for raw: raw images cannot hold metadata. */
  metadataSupported: boolean;
  /** The image's own metadata, validated; null if it has none. */
  metadata: ImageMetadata | null;
  /** Largest metadata envelope (bytes) a crash-safe write could store now (0 for raw). */
  metadataCapacityBytes: number;
  qcow2?: { version: 2 | 3; compressionType: 'zlib' | 'zstd'; refcountBits: number; extendedL2: boolean; lazyRefcounts: boolean; snapshotCount: number };
  vhdx?: { logicalSectorSize: number; physicalSectorSize: number; fixed: boolean; differencing: boolean };
}

/** Metadata as stored in an image, with how it is stored. */
export interface MetadataRecord {
  format: 'qcow2' | 'vhdx';
  metadata: ImageMetadata;
  /**
   * Whether differencing disks / overlays inherit it. VHDX: the item's IsVirtualDisk flag
   * (MS-VHDX: such items are copied into a differencing disk when it is forked, and replace the
   * parent's on merge); qcow2: the same bit in our envelope, applied by our fork/merge helpers.
   */
  inheritable: boolean;
  encoding: EnvelopeEncoding;
  /** Bytes the envelope occupies in the file. */
  storedBytes: number;
}

/** Options for writing metadata. */
export interface WriteMetadataOptions {
  /** See MetadataRecord.inheritable. Default true. */
  inheritable?: boolean;
}

/** What a write stored. */
export interface WriteMetadataResult {
  format: 'qcow2' | 'vhdx';
  encoding: EnvelopeEncoding;
  storedBytes: number;
  /** Every byte range the write changed, in write order (for incremental digests, see block-digest). */
  writtenRanges: Array<{ offset: number; length: number }>;
}

const RAW_MESSAGE = 'raw images cannot hold metadata; convert to qcow2 or vhdx';

type Parsed = { format: 'qcow2'; qcow2: Qcow2Header } | { format: 'vhdx'; vhdx: VhdxImage } | { format: 'raw' };

async function parse(io: ImageIo, limits: { maxVirtualSizeBytes?: number } = {}): Promise<Parsed> {
  // One read of the first 4 KiB serves detection and, for qcow2, usually the whole header.
  const cached = new PrefetchIo(io);
  await cached.prefetch(0, 4096);
  const format = detectFormatFromBytes(await cached.read(0, 8));
  if (format === 'qcow2') return { format, qcow2: await parseQcow2(cached, limits) };
  if (format === 'vhdx') return { format, vhdx: await parseVhdx(io, limits) };
  return { format };
}

function storedRecord(p: Parsed): MetadataRecord | null {
  if (p.format === 'raw') throw new MetadataUnsupportedError(RAW_MESSAGE);
  let bytes: Buffer | null | undefined;
  let where: string;
  let inheritableFlag: boolean | undefined;
  if (p.format === 'qcow2') {
    bytes = qcow2MetadataBytes(p.qcow2);
    where = `qcow2 header extension at ${p.qcow2.metadataExtension?.offset}`;
  } else {
    bytes = p.vhdx.metadataBytes;
    where = `vhdx metadata item at ${p.vhdx.metadataEntry?.offset}`;
    inheritableFlag = p.vhdx.metadataEntry?.isVirtualDisk;
  }
  if (!bytes) return null;
  const env = decodeEnvelope(bytes, where);
  return {
    format: p.format,
    metadata: parseStoredMetadata(env.json, where),
    // On VHDX the table flag is authoritative (other tools may toggle it); the envelope bit mirrors it.
    inheritable: inheritableFlag ?? env.inheritable,
    encoding: env.encoding,
    storedBytes: bytes.length,
  };
}

async function withFile<T>(path: string, mode: 'read' | 'write', f: (io: FileImageIo) => Promise<T>): Promise<T> {
  const io = await FileImageIo.open(path, mode);
  try {
    return await f(io);
  } finally {
    await io.close();
  }
}

/**
 * Intake: treats the file as hostile. Detects and pins the format, validates every structure it
 * reads, and rejects (ImageRejectedError) backing files, external data files, oversized disks,
 * truncated or corrupt headers, foreign formats posing as raw, and undecodable metadata.
 * Reads headers and metadata only, never guest data.
 */
export async function inspectImage(path: string, options: IntakeOptions = {}): Promise<ImageInfo> {
  return withFile(path, 'read', (io) => inspectImageIo(io, options));
}

/** inspectImage over an ImageIo (memory or file). */
export async function inspectImageIo(io: ImageIo, options: IntakeOptions = {}): Promise<ImageInfo> {
  const maxVirtualSizeBytes = options.maxVirtualSizeBytes ?? DEFAULT_MAX_VIRTUAL_SIZE_BYTES;
  const detected = detectFormatFromBytes(await io.read(0, 8));
  if (options.expectedFormat && options.expectedFormat !== detected) {
    throw new ImageRejectedError(
      'format-mismatch',
      `image was declared as ${options.expectedFormat} but its header is ${detected} (the format is decided by magic bytes, not by name)`,
    );
  }
  if (detected === 'raw') {
    if (options.allowRaw === false) throw new ImageRejectedError('unsupported-format', 'raw images are not accepted here');
    const head = await io.read(0, 512);
    const tail = io.size >= 512 ? await io.read(io.size - 512, 512) : Buffer.alloc(0);
    const foreign = sniffForeignFormat(head, tail);
    if (foreign) {
      throw new ImageRejectedError('unsupported-format', `image is ${foreign}, which is not supported; convert it with qemu-img convert -O qcow2`);
    }
    if (io.size === 0) throw new ImageRejectedError('bad-header', 'raw image is empty');
    if (io.size > maxVirtualSizeBytes) {
      throw new ImageRejectedError('virtual-size-too-large', `raw image: size ${io.size} bytes exceeds the limit of ${maxVirtualSizeBytes} bytes`);
    }
    return {
      format: 'raw',
      virtualSizeBytes: io.size,
      fileSizeBytes: io.size,
      clusterSize: 512,
      encrypted: false,
      needsRepair: false,
      metadataSupported: false,
      metadata: null,
      metadataCapacityBytes: 0,
    };
  }
  const p = await parse(io, { maxVirtualSizeBytes });
  const record = storedRecord(p);
  if (p.format === 'qcow2') {
    const h = p.qcow2;
    if (h.corrupt) throw new ImageRejectedError('corrupt', 'qcow2 header: image is marked corrupt (incompatible feature bit 1)');
    if (h.backingFile !== undefined && !options.allowBackingFile) {
      throw new ImageRejectedError('backing-file', `qcow2 header: backing file ${quoteForMessage(h.backingFile)} is not allowed`);
    }
    if (h.hasExternalDataFile && !options.allowDataFile) {
      throw new ImageRejectedError(
        'data-file',
        `qcow2 header: external data file ${h.dataFile !== undefined ? quoteForMessage(h.dataFile) : '(name not recorded)'} is not allowed`,
      );
    }
    if (h.cryptMethod === 1) throw new ImageRejectedError('unsupported-feature', 'qcow2 header: legacy AES encryption is insecure and not accepted');
    return {
      format: 'qcow2',
      virtualSizeBytes: h.virtualSize,
      fileSizeBytes: io.size,
      clusterSize: h.clusterSize,
      backingFile: h.backingFile,
      dataFile: h.dataFile,
      encrypted: h.cryptMethod !== 0,
      needsRepair: h.dirty,
      metadataSupported: true,
      metadata: record?.metadata ?? null,
      metadataCapacityBytes: qcow2MetadataCapacity(h),
      qcow2: {
        version: h.version,
        compressionType: h.compressionType,
        refcountBits: h.refcountBits,
        extendedL2: h.extendedL2,
        lazyRefcounts: h.lazyRefcounts,
        snapshotCount: h.snapshotCount,
      },
    };
  }
  if (p.format === 'vhdx') {
    const v = p.vhdx;
    if (v.hasParent && !options.allowBackingFile) {
      throw new ImageRejectedError('backing-file', `vhdx metadata: differencing disk with parent ${quoteForMessage(v.parentPath ?? '')} is not allowed`);
    }
    return {
      format: 'vhdx',
      virtualSizeBytes: v.virtualSize,
      fileSizeBytes: io.size,
      clusterSize: v.blockSize,
      backingFile: v.parentPath,
      encrypted: false,
      needsRepair: v.pendingLog !== null,
      metadataSupported: true,
      metadata: record?.metadata ?? null,
      metadataCapacityBytes: vhdxMetadataCapacity(v),
      vhdx: { logicalSectorSize: v.logicalSectorSize, physicalSectorSize: v.physicalSectorSize, fixed: v.leaveBlocksAllocated, differencing: v.hasParent },
    };
  }
  throw new Error('unreachable');
}

/**
 * Reads the image's metadata, or null if it has none. Throws MetadataUnsupportedError for raw
 * images and ImageRejectedError for malformed files or metadata. Reads headers only: the cost
 * does not depend on the disk size.
 */
export async function readMetadata(path: string): Promise<ImageMetadata | null> {
  return (await readMetadataRecord(path))?.metadata ?? null;
}

/** readMetadata with how the metadata is stored (inheritance flag, encoding, size). */
export async function readMetadataRecord(path: string): Promise<MetadataRecord | null> {
  return withFile(path, 'read', (io) => readMetadataRecordIo(io));
}

/** readMetadataRecord over an ImageIo. */
export async function readMetadataRecordIo(io: ImageIo): Promise<MetadataRecord | null> {
  return storedRecord(await parse(io));
}

/**
 * Validates `metadata` and stores it in the image, replacing what was there, crash-safely (see
 * writeQcow2Metadata and writeVhdxMetadata for the write ordering). Guest data is never touched.
 * Throws MetadataInvalidError (schema), MetadataTooLargeError (no room), MetadataUnsupportedError
 * (raw), ImageRejectedError (malformed file). Precondition: the image is not open in QEMU, and
 * the caller serializes writers of the same file.
 */
export async function writeMetadata(path: string, metadata: ImageMetadata, options: WriteMetadataOptions = {}): Promise<WriteMetadataResult> {
  const json = serializeMetadata(metadata);
  return withFile(path, 'write', (io) => writeSerialized(io, json, options.inheritable ?? true));
}

/** writeMetadata over an ImageIo. */
export async function writeMetadataIo(io: ImageIo, metadata: ImageMetadata, options: WriteMetadataOptions = {}): Promise<WriteMetadataResult> {
  return writeSerialized(io, serializeMetadata(metadata), options.inheritable ?? true);
}

async function writeSerialized(base: ImageIo, json: string, inheritable: boolean): Promise<WriteMetadataResult> {
  const writtenRanges: Array<{ offset: number; length: number }> = [];
  const io: ImageIo = {
    get size() {
      return base.size;
    },
    read: (offset, length) => base.read(offset, length),
    write: (offset, data) => {
      writtenRanges.push({ offset, length: data.length });
      return base.write(offset, data);
    },
    flush: () => base.flush(),
  };
  const p = await parse(io);
  if (p.format === 'raw') throw new MetadataUnsupportedError(RAW_MESSAGE);
  const capacity = p.format === 'qcow2' ? qcow2MetadataCapacity(p.qcow2) : vhdxMetadataCapacity(p.vhdx);
  const enc = encodeEnvelopeToFit(json, inheritable, (n) => n <= capacity);
  if (!enc.envelope) {
    throw p.format === 'qcow2' ? qcow2TooLargeError(p.qcow2, enc.smallestBytes) : vhdxTooLargeError(p.vhdx, enc.smallestBytes);
  }
  if (p.format === 'qcow2') await writeQcow2Metadata(io, p.qcow2, enc.envelope);
  else await writeVhdxMetadata(io, p.vhdx, enc.envelope, inheritable);
  return { format: p.format, encoding: enc.encoding, storedBytes: enc.envelope.length, writtenRanges };
}

/** Removes the image's metadata crash-safely; returns false if there was none. Raw: throws. */
export async function removeMetadata(path: string): Promise<boolean> {
  return withFile(path, 'write', (io) => removeMetadataIo(io));
}

/** removeMetadata over an ImageIo. */
export async function removeMetadataIo(io: ImageIo): Promise<boolean> {
  const p = await parse(io);
  if (p.format === 'raw') throw new MetadataUnsupportedError(RAW_MESSAGE);
  if (p.format === 'qcow2') {
    if (!p.qcow2.metadataExtension) return false;
    await writeQcow2Metadata(io, p.qcow2, null);
    return true;
  }
  if (!p.vhdx.metadataEntry) return false;
  await writeVhdxMetadata(io, p.vhdx, null, false);
  return true;
}

/**
 * The metadata a new differencing disk / overlay gets from its parent when it is created
 * (MS-VHDX fork rule): the parent's record if it is inheritable, else none.
 */
export function inheritOnFork(parent: MetadataRecord | null): MetadataRecord | null {
  return parent?.inheritable ? parent : null;
}

/**
 * The parent's metadata after a child is merged (committed) into it (MS-VHDX merge rule): an
 * inheritable child item replaces the parent's; otherwise an inheritable parent item is
 * destroyed (it described the disk before the merge) and a non-inheritable one stays.
 */
export function resolveOnMerge(parent: MetadataRecord | null, child: MetadataRecord | null): MetadataRecord | null {
  if (child?.inheritable) return child;
  if (parent?.inheritable) return null;
  return parent;
}
