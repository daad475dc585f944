/**
 * Error classes of the disk-formats library. Every failure this library expects (hostile input,
 * full header cluster, raw image, invalid metadata) is one of these; anything else escaping the
 * library is a bug. Transports map them once (e.g. ImageRejectedError -> 400/INVALID_ARGUMENT).
 */

/** Machine-readable reasons an image is rejected. Stable: API clients may switch on them. */
export type ImageRejectReason =
  | 'not-a-regular-file' // path is a directory, FIFO, device...
  | 'unsupported-format' // a known format we do not accept (vmdk, vdi, vhd, qed, luks...) or qcow v1
  | 'format-mismatch' // detected format differs from the one the caller expected
  | 'truncated' // a structure runs past the end of the file
  | 'bad-header' // a field has an impossible value
  | 'bad-checksum' // a CRC-32C does not match
  | 'unsupported-version' // version field we do not implement
  | 'unsupported-feature' // feature bit / required item we do not understand
  | 'backing-file' // qcow2 backing file or VHDX parent (differencing disk)
  | 'data-file' // qcow2 external data file
  | 'virtual-size-too-large' // above the caller's limit
  | 'out-of-bounds' // an offset/length runs past its container (region, cluster, table)
  | 'overlap' // two structures claim the same bytes
  | 'duplicate-item' // an item/extension that must be unique appears twice
  | 'corrupt' // the image itself says it is corrupt (qcow2 corrupt bit)
  | 'bad-log' // VHDX log that cannot be replayed safely
  | 'bad-metadata'; // our metadata payload is undecodable or fails the schema

/** Base class: all errors thrown on purpose by this library. */
export abstract class DiskFormatError extends Error {
  override name = this.constructor.name;
}

/**
 * The image is hostile, corrupt or not acceptable. `reason` is for programs, `message` for
 * people and names the structure and the problem, e.g.
 * "qcow2 header: backing file '/etc/passwd' is not allowed".
 */
export class ImageRejectedError extends DiskFormatError {
  constructor(
    readonly reason: ImageRejectReason,
    message: string,
  ) {
    super(message);
  }
}

/** The image format cannot hold metadata at all (raw) or this file lacks what a safe write needs. */
export class MetadataUnsupportedError extends DiskFormatError {}

/** The metadata does not fit where the format can store it; sizes are in bytes. */
export class MetadataTooLargeError extends DiskFormatError {
  constructor(
    message: string,
    readonly neededBytes: number,
    readonly availableBytes: number,
  ) {
    super(message);
  }
}

/** One schema violation, named by its JSON path ("hardware.minMemoryMiB"). */
export interface FieldError {
  field: string;
  message: string;
}

/** Metadata given to a writer fails the schema; `errors` lists every violation. */
export class MetadataInvalidError extends DiskFormatError {
  constructor(readonly errors: FieldError[]) {
    super(
      `invalid image metadata: ${errors
        .slice(0, 5)
        .map((e) => e.message)
        .join('; ')}${errors.length > 5 ? ` (and ${errors.length - 5} more)` : ''}`,
    );
  }
}

/** Quotes a value taken from an image for an error message: escaped, bounded in length. */
export function quoteForMessage(value: string, max = 200): string {
  const escaped = JSON.stringify(value.length > max ? `${value.slice(0, max)}…` : value);
  return `'${escaped.slice(1, -1).replace(/'/g, "\\'")}'`;
}
