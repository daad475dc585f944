import { Inject, Injectable } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { Db, rows } from '../database/database';
import { DATA_SOURCE } from '../common/tokens';

/** A node_images row: one file of a node's image store, as its agent last reported it. */
export interface NodeImageRow {
  node_id: string;
  name: string;
  path: string;
  format: string;
  size_bytes: string | number;
  virtual_size_bytes: string | number;
  metadata: Record<string, unknown> | null;
  rejected_reason: string | null;
  rejected_message: string | null;
  library_image_id: string | null;
  reported_at: Date;
}

/** One reported file of a node's image store, parsed. */
export interface NodeImageReport {
  name: string;
  path: string;
  format: string;
  sizeBytes: number;
  virtualSizeBytes: number;
  /** The metadata stored inside the file, as the node read it (null: none, or too large to report). */
  metadata: Record<string, unknown> | null;
  /** Why the file is not usable (hostile-image checks); null when it is. */
  rejected: { reason: string; message: string } | null;
  /** Set for a copy of a library image the control plane distributed. */
  libraryImageId: string | null;
}

/** SQL for what nodes report of their image stores. */
@Injectable()
export class NodeImageRepository {
  constructor(@Inject(DATA_SOURCE) private readonly ds: DataSource) {}

  /** Replaces a node's whole report (every file it has) in the caller's transaction. */
  async replace(tx: Db, nodeId: string, images: NodeImageReport[]): Promise<void> {
    await tx.query(`DELETE FROM node_images WHERE node_id = $1`, [nodeId]);
    if (images.length === 0) return;
    await tx.query(
      `INSERT INTO node_images (node_id, name, path, format, size_bytes, virtual_size_bytes, metadata, rejected_reason, rejected_message, library_image_id)
       SELECT $1, u.name, u.path, u.format, u.size, u.vsize, u.metadata::jsonb, u.reason, u.message, u.library
       FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::uuid[])
         AS u(name, path, format, size, vsize, metadata, reason, message, library)
       ON CONFLICT (node_id, path) DO NOTHING`,
      [
        nodeId,
        images.map((i) => i.name),
        images.map((i) => i.path),
        images.map((i) => i.format),
        images.map((i) => i.sizeBytes),
        images.map((i) => i.virtualSizeBytes),
        images.map((i) => (i.metadata ? JSON.stringify(i.metadata) : null)),
        images.map((i) => i.rejected?.reason ?? null),
        images.map((i) => i.rejected?.message ?? null),
        images.map((i) => i.libraryImageId),
      ],
    );
  }

  /** Records where a node's image store is. */
  async setStoreDir(tx: Db, nodeId: string, dir: string): Promise<void> {
    await tx.query(`UPDATE nodes SET image_store_dir = $2 WHERE id = $1 AND image_store_dir IS DISTINCT FROM $2`, [nodeId, dir]);
  }

  /** A node's reported files, by path. */
  list(nodeId: string): Promise<NodeImageRow[]> {
    return rows(this.ds, `SELECT * FROM node_images WHERE node_id = $1 ORDER BY path`, [nodeId]);
  }

  /** True when the node reported a usable copy of library image `imageId`. */
  async hasLibraryCopy(nodeId: string, imageId: string): Promise<boolean> {
    const found = await rows(this.ds, `SELECT 1 FROM node_images WHERE node_id = $1 AND library_image_id = $2 AND rejected_reason IS NULL`, [nodeId, imageId]);
    return found.length > 0;
  }
}
