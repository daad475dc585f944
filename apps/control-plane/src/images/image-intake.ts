import { Injectable } from '@nestjs/common';
import { FailedPreconditionError, ValidationError } from '@hyperplane/domain';
import { ImageInfo, ImageMetadata, digestOfBlocks, validateMetadata } from '@hyperplane/disk-formats';
import { IMAGE_HISTORY_LIMIT, withHistoryEntry } from './image-history';
import { ImageStore } from './image-store';
import { diskFormatDomainError } from './image-errors';

/** A received file after `stampCreated`: the metadata it holds now, and its size and digest. */
export interface StampedFile {
  metadata: ImageMetadata;
  sizeBytes: number;
  digest: string;
  blocks: Buffer;
  mtimeMs: number;
}

/**
 * Intake of files that become library images, whoever sent them (an upload, a node's store, an
 * export): the hostile-image checks, then the `created` entry written into the file. The file is
 * still a temporary one of the store; registering it is the caller's.
 */
@Injectable()
export class ImageIntake {
  constructor(private readonly store: ImageStore) {}

  /**
   * Intake of a received file (an upload, or a file imported from a node): format detected and
   * pinned, hostile structures rejected (disk-formats), `qemu-img check` under limits. Returns
   * what disk-formats learnt. Throws domain errors naming the reason; the caller removes the file.
   */
  async check(path: string, bytes: number, what = 'image'): Promise<ImageInfo> {
    if (bytes === 0) throw ValidationError.field('body', `is empty: send the ${what} file`);
    const info = await this.store.inspect(path).catch((e) => { throw diskFormatDomainError(e, what); });
    const checked = await this.store.check(path, info.format);
    if (!checked.ok) throw new ValidationError([{ field: 'body', message: `${what} rejected: ${checked.message}` }], `${what} rejected: ${checked.message}`);
    return info;
  }

  /**
   * The metadata a new image starts with: what its file holds, with `created` recorded in its
   * history, written into the (not yet registered) file. Raw images hold none. Returns the document
   * and the file's size and digest after the write.
   */
  async stampCreated(path: string, info: ImageInfo, received: { bytes: number; blocks?: Buffer }, details: { by: string; node?: string; how: string }, patch?: Partial<ImageMetadata>): Promise<StampedFile> {
    let metadata: ImageMetadata = { ...(info.metadata ?? { schemaVersion: 1 }), ...(patch ?? {}), schemaVersion: 1 };
    if (patch) {
      metadata.history = info.metadata?.history;
      if (metadata.history === undefined) delete metadata.history;
      const valid = validateMetadata(metadata);
      if (!valid.ok) throw new ValidationError(valid.errors.map((f) => ({ field: f.field ? `metadata.${f.field}` : 'metadata', message: f.message })));
    }
    if (info.format === 'raw') {
      if (patch && Object.keys(patch).length) throw new FailedPreconditionError('raw images cannot hold metadata; convert to qcow2 or vhdx');
      const { mtimeMs } = await this.store.fileState(path);
      if (received.blocks) return { metadata: { schemaVersion: 1 }, sizeBytes: received.bytes, digest: digestOfBlocks(received.blocks), blocks: received.blocks, mtimeMs };
      const d = await this.store.digest(path);
      return { metadata: { schemaVersion: 1 }, sizeBytes: d.digest.bytes, digest: d.digest.digest, blocks: d.digest.blocks, mtimeMs: d.mtimeMs };
    }
    metadata = withHistoryEntry(metadata, { at: new Date().toISOString(), operation: 'created', by: details.by, ...(details.node ? { node: details.node } : {}), details: { how: details.how } }, IMAGE_HISTORY_LIMIT) ?? metadata;
    const written = await this.store.writeMetadata(path, metadata, received.blocks ? { blocks: received.blocks, bytes: received.bytes } : undefined).catch((e) => { throw diskFormatDomainError(e, 'image'); });
    return { metadata, sizeBytes: written.sizeBytes, digest: written.digest.digest, blocks: written.digest.blocks, mtimeMs: written.mtimeMs };
  }
}
