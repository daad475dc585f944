import { Inject, Injectable } from '@nestjs/common';
import { HistoryEntry, ImageMetadata, MetadataTooLargeError, appendHistory } from '@hyperplane/disk-formats';
import { DataSource } from 'typeorm';
import { Logger } from 'pino';
import { DATA_SOURCE, LOGGER } from '../common/tokens';
import { Db, inTransaction } from '../database/database';
import { EventBus } from '../events/event-bus';
import { ImageRepository, ImageRow } from './image.repository';
import { ImageStore } from './image-store';
import { ImageView, imageView } from './image-view';
import { ImageWriter } from './image-writer';

/** History entries kept in an image's metadata: the newest 200 (older ones are dropped as new ones come). */
export const IMAGE_HISTORY_LIMIT = 200;

/** What an operation tells about itself in a history entry (`at` defaults to now, `by` to the control plane). */
export type HistoryRecord = Omit<HistoryEntry, 'at' | 'by'> & { at?: string; by?: string; operationId?: string };

/**
 * `metadata` with `entry` appended and the history bounded to the newest `limit` entries, or null
 * when an entry of the same operation id is already there (a re-run operation records once). Pure.
 */
export function withHistoryEntry(metadata: ImageMetadata, entry: HistoryEntry, limit = IMAGE_HISTORY_LIMIT): ImageMetadata | null {
  const opId = entry.details?.operationId;
  if (typeof opId === 'string' && (metadata.history ?? []).some((h) => h.operation === entry.operation && h.details?.operationId === opId)) return null;
  return appendHistory(metadata, entry, { maxEntries: limit });
}

/**
 * The operation history inside library image files: every operation that touches a disk based on
 * the image (a partition created from it or deleted, a snapshot, a migration, an export) appends
 * one entry, written into the file, re-indexed, version bumped. Appends to one image are
 * serialised by its row lock (across replicas), each reading the file's current history, so
 * concurrent operations lose no entry; the file write stays crash-safe (disk-formats).
 */
@Injectable()
export class ImageHistory {
  constructor(
    private readonly images: ImageRepository,
    private readonly store: ImageStore,
    private readonly writer: ImageWriter,
    private readonly events: EventBus,
    @Inject(DATA_SOURCE) private readonly ds: DataSource,
    @Inject(LOGGER) private readonly log: Logger,
  ) {}

  /**
   * Appends `entry` to the history of the project's library image `imageName`. Returns the image
   * as updated, or null when there is nothing to record into (no such library image, a raw image,
   * or an entry with this operation id already recorded).
   */
  async record(projectId: string, imageName: string, entry: HistoryRecord): Promise<ImageView | null> {
    return this.append((db) => this.images.getByName(db, projectId, imageName).then((r) => (r ? this.images.lockById(db, r.id) : undefined)), entry);
  }

  /** `record` by image id (a partition knows the id of the image its disk is based on). */
  async recordById(imageId: string, entry: HistoryRecord): Promise<ImageView | null> {
    return this.append((db) => this.images.lockById(db, imageId), entry);
  }

  /**
   * Best effort for operations whose own outcome must not depend on the history (a partition
   * create or delete): records, and logs instead of throwing.
   */
  async recordQuietly(imageId: string | null | undefined, entry: HistoryRecord): Promise<void> {
    if (!imageId) return;
    try {
      await this.recordById(imageId, entry);
    } catch (err) {
      this.log.warn({ err, imageId, operation: entry.operation }, 'could not append to the image history');
    }
  }

  private async append(find: (db: Db) => Promise<ImageRow | undefined>, r: HistoryRecord): Promise<ImageView | null> {
    const { operationId, at, by, operation, ...rest } = r;
    const entry: HistoryEntry = {
      at: at ?? new Date().toISOString(),
      operation,
      by: by ?? 'control-plane',
      ...rest,
      ...(operationId ? { details: { ...(rest.details ?? {}), operationId } } : {}),
    };
    const updated = await inTransaction(this.ds, async (db) => {
      const row = await find(db);
      if (!row || row.format === 'raw') return null;
      const current = (await this.store.readMetadata(row.storage_path)) ?? { schemaVersion: 1 as const };
      // A file too full for the whole history keeps fewer of the oldest entries, down to the new one alone.
      for (let limit = IMAGE_HISTORY_LIMIT; ; limit = Math.floor(limit / 2)) {
        const next = withHistoryEntry(current, entry, Math.max(1, limit));
        if (!next) return null;
        try {
          return await this.writer.writeMetadata(db, row, next);
        } catch (e) {
          if (!(e instanceof MetadataTooLargeError) || limit <= 1) throw e;
        }
      }
    });
    if (!updated) return null;
    const view = imageView(updated);
    await this.events.publish({ type: 'image.updated', resourceType: 'image', resourceId: view.id, projectId: view.projectId, data: view });
    return view;
  }
}
