import { Injectable } from '@nestjs/common';
import { DIGEST_BLOCK_BYTES, ImageMetadata } from '@hyperplane/disk-formats';
import { Db } from '../database/database';
import { ImageRepository, ImageRow } from './image.repository';
import { ImageStore } from './image-store';

/**
 * Writes into library image files and keeps their record in step: the metadata goes into the file
 * (crash-safely, copy-on-write while a transfer reads it), then the index, the digest and the
 * version follow in the caller's transaction. Callers hold the image's row lock, which is what
 * serialises writers of one file across replicas.
 */
@Injectable()
export class ImageWriter {
  constructor(
    private readonly images: ImageRepository,
    private readonly store: ImageStore,
  ) {}

  /** Stores `metadata` in the locked image's file and re-indexes it (version bumped). Throws disk-formats errors. */
  async writeMetadata(db: Db, row: ImageRow, metadata: ImageMetadata): Promise<ImageRow> {
    const previous = await this.trustedBlocks(db, row);
    const written = await this.store.writeMetadata(row.storage_path, metadata, previous);
    await this.images.saveDigest(db, row.id, written.digest, DIGEST_BLOCK_BYTES, written.sizeBytes, written.mtimeMs);
    return this.images.updateMetadata(db, row.id, metadata, metadata.expiresAt ?? null, written.sizeBytes, written.digest.digest);
  }

  /**
   * The digest and size that describe the locked image's file as it is now: the recorded ones
   * while the file is as they describe it, else recomputed from the whole file (a crash between a
   * write and its commit, or a file changed behind the control plane's back) and recorded.
   */
  async currentDigest(db: Db, row: ImageRow): Promise<{ digest: string; sizeBytes: number }> {
    const fresh = await this.trustedBlocks(db, row);
    if (fresh && row.digest) return { digest: row.digest, sizeBytes: fresh.bytes };
    const { digest, mtimeMs } = await this.store.digest(row.storage_path);
    await this.images.saveDigest(db, row.id, digest, DIGEST_BLOCK_BYTES, digest.bytes, mtimeMs);
    await this.images.setDigest(db, row.id, digest.digest);
    return { digest: digest.digest, sizeBytes: digest.bytes };
  }

  /** The recorded block hashes when they still describe the file (same size and mtime), else undefined. */
  private async trustedBlocks(db: Db, row: ImageRow): Promise<{ blocks: Buffer; bytes: number } | undefined> {
    const d = await this.images.getDigest(db, row.id);
    if (!d || d.block_bytes !== DIGEST_BLOCK_BYTES) return undefined;
    const now = await this.store.fileState(row.storage_path);
    if (now.sizeBytes !== Number(d.file_bytes) || now.mtimeMs !== d.file_mtime_ms) return undefined;
    return { blocks: d.blocks, bytes: now.sizeBytes };
  }
}
