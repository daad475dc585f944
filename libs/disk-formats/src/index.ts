/**
 * @hyperplane/disk-formats: disk images that describe themselves. Reads and writes Hyperplane
 * metadata inside qcow2 (header extension) and VHDX (user metadata item) files, and inspects
 * untrusted images at intake. Pure TypeScript over Node's standard library; no Nest, no QEMU.
 */
export { BlockDigest, DIGEST_BLOCK_BYTES, DIGEST_PREFIX, type FileDigest, digestFile, digestOfBlocks, isDigest, updateFileDigest } from './block-digest';
export { crc32c } from './crc32c';
export { type DiskFormat, detectFormat, detectFormatFromBytes, sniffForeignFormat } from './detect';
export { ENVELOPE_HEADER_BYTES, type EnvelopeEncoding, decodeEnvelope, encodeEnvelope } from './envelope';
export {
  DiskFormatError,
  type FieldError,
  ImageRejectedError,
  type ImageRejectReason,
  MetadataInvalidError,
  MetadataTooLargeError,
  MetadataUnsupportedError,
} from './errors';
export {
  DEFAULT_MAX_VIRTUAL_SIZE_BYTES,
  type ImageInfo,
  type IntakeOptions,
  type MetadataRecord,
  type WriteMetadataOptions,
  type WriteMetadataResult,
  inheritOnFork,
  inspectImage,
  inspectImageIo,
  readMetadata,
  readMetadataRecord,
  readMetadataRecordIo,
  removeMetadata,
  removeMetadataIo,
  resolveOnMerge,
  writeMetadata,
  writeMetadataIo,
} from './image';
export { FileImageIo, type ImageIo, MemoryImageIo, type RecordedOp } from './image-io';
export {
  type AppendHistoryOptions,
  type ConfigFile,
  type ContentInfo,
  type DrmStatus,
  type Firmware,
  type HardwareRequirements,
  type HistoryDetailValue,
  type HistoryEntry,
  type HostCompatibility,
  type ImageMetadata,
  MAX_HISTORY_ENTRIES,
  MAX_METADATA_JSON_BYTES,
  METADATA_SCHEMA_VERSION,
  type NetworkInterface,
  type NetworkTopology,
  type PatchState,
  type UsagePolicy,
  type ValidationResult,
  appendHistory,
  isExpired,
  serializeMetadata,
  validateMetadata,
} from './metadata-schema';
export { QCOW2_METADATA_EXT, QCOW2_PADDING_EXT } from './qcow2';
export { VHDX_GUIDS } from './vhdx';
