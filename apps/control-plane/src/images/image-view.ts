import { etagOf } from '../common/etag';
import { ImageRow } from './image.repository';

/** An image as both APIs show it. */
export interface ImageView {
  id: string;
  projectId: string;
  name: string;
  /** Detected from the file's magic bytes at intake; QEMU is always told this format. '' while importing. */
  format: string;
  state: string;
  sizeBytes: number;
  virtualSizeBytes: number;
  /** The metadata stored inside the image file, as indexed. */
  metadata: Record<string, unknown>;
  expiresAt: string | null;
  expired: boolean;
  /** `sha256-64m:<hex>`: SHA-256 over the SHA-256 of each 64 MiB block of the file, current after every write; null when unknown. */
  digest: string | null;
  etag: string;
  createdAt: string;
  updatedAt: string;
}

/** Maps an image row to its view. */
export function imageView(r: ImageRow, now = Date.now()): ImageView {
  return {
    id: r.id,
    projectId: r.project_id,
    name: r.name,
    format: r.state === 'importing' ? '' : r.format,
    state: r.state,
    sizeBytes: Number(r.size_bytes),
    virtualSizeBytes: Number(r.virtual_size_bytes),
    metadata: r.metadata,
    expiresAt: r.expires_at ? r.expires_at.toISOString() : null,
    expired: r.expires_at !== null && r.expires_at.getTime() <= now,
    digest: r.digest ?? null,
    etag: etagOf(r.version),
    createdAt: r.created_at.toISOString(),
    updatedAt: r.updated_at.toISOString(),
  };
}
