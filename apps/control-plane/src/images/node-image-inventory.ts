import { Inject, Injectable } from '@nestjs/common';
import { NotFoundError, Principal, UUID_RE, requireRole } from '@hyperplane/domain';
import { validateMetadata } from '@hyperplane/disk-formats';
import type { agentV1 } from '@hyperplane/proto';
import { DataSource } from 'typeorm';
import { Db, inTransaction, rows } from '../database/database';
import { DATA_SOURCE } from '../common/tokens';
import { EventBus } from '../events/event-bus';
import { NodeImage, NodeRepository, NodeRow } from '../nodes/node.repository';
import { nodeView } from '../nodes/nodes.service';
import { NodeImageReport, NodeImageRepository, NodeImageRow } from './node-image.repository';

/** A file of a node's image store as both APIs show it: what the node reported, and when. */
export interface NodeStoreImageView extends NodeImageReport {
  reportedAt: string;
}

/** Maps a node_images row to its view. */
export function nodeStoreImageView(r: NodeImageRow): NodeStoreImageView {
  return {
    name: r.name,
    path: r.path,
    format: r.format,
    sizeBytes: Number(r.size_bytes),
    virtualSizeBytes: Number(r.virtual_size_bytes),
    metadata: r.metadata,
    rejected: r.rejected_reason ? { reason: r.rejected_reason, message: r.rejected_message ?? '' } : null,
    libraryImageId: r.library_image_id,
    reportedAt: r.reported_at.toISOString(),
  };
}

/** Largest metadata document kept per reported image (agents omit bigger ones; this is the backstop). */
const MAX_REPORTED_METADATA_BYTES = 64 * 1024;

const clip = (s: unknown, max: number): string => (typeof s === 'string' ? s.slice(0, max) : '');

/**
 * Parses what an agent reported of its store. The agent is not trusted with the control plane's
 * data: metadata that is not valid JSON or fails the schema is dropped, ids that are not UUIDs are
 * dropped, strings are clipped.
 */
export function parseImageReports(images: agentV1.ImageInfo__Output[] | undefined): NodeImageReport[] {
  return (images ?? []).map((i) => {
    let metadata: Record<string, unknown> | null = null;
    const json = i.metadataJson ?? '';
    if (json && json.length <= MAX_REPORTED_METADATA_BYTES) {
      try {
        const v = validateMetadata(JSON.parse(json));
        if (v.ok) metadata = v.value as unknown as Record<string, unknown>;
      } catch {
        metadata = null;
      }
    }
    const reason = clip(i.rejectedReason, 64);
    const library = i.libraryImageId && UUID_RE.test(i.libraryImageId) ? i.libraryImageId : null;
    return {
      name: clip(i.name, 255),
      path: clip(i.path, 4096),
      format: clip(i.format, 16),
      sizeBytes: Math.max(0, Number(i.sizeBytes ?? 0)) || 0,
      virtualSizeBytes: Math.max(0, Number(i.virtualSizeBytes ?? 0)) || 0,
      metadata,
      rejected: reason ? { reason, message: clip(i.rejectedMessage, 1024) } : null,
      libraryImageId: library,
    };
  });
}

/**
 * The images a node offers by name (for the scheduler's image filter and `nodes.images`): its own
 * files that passed the checks. Rejected files and library copies are never usable by name (a
 * library copy belongs to its project and is used through its id).
 */
export function usableByName(reports: NodeImageReport[]): NodeImage[] {
  return reports
    .filter((r) => !r.rejected && !r.libraryImageId && r.name)
    .map((r) => ({ name: r.name, format: r.format, sizeBytes: r.sizeBytes, virtualSizeBytes: r.virtualSizeBytes }));
}

/**
 * What each node has in its image store, as its agent reports it at registration and whenever the
 * store changes (agent.proto ImageInventory): the full report in node_images, the images usable by
 * name in nodes.images (what placement reads).
 */
@Injectable()
export class NodeImageInventory {
  constructor(
    private readonly repo: NodeImageRepository,
    private readonly nodes: NodeRepository,
    private readonly events: EventBus,
    @Inject(DATA_SOURCE) private readonly ds: DataSource,
  ) {}

  /**
   * Records the report that came with a registration (nodes.images is written by the registration
   * itself) and where the node's store is (`storeDir`, absolute; imports name files in it).
   */
  async recordRegistration(nodeId: string, reports: NodeImageReport[], storeDir: string): Promise<void> {
    await inTransaction(this.ds, async (tx) => {
      await this.repo.replace(tx, nodeId, reports);
      await this.repo.setStoreDir(tx, nodeId, storeDir.startsWith('/') ? storeDir.slice(0, 4096) : '');
    });
  }

  /** Records a store change reported on the stream; the node's record and placement see it at once. */
  async recordChange(nodeId: string, images: agentV1.ImageInfo__Output[] | undefined): Promise<void> {
    const reports = parseImageReports(images);
    const row = await inTransaction(this.ds, async (tx) => {
      await this.repo.replace(tx, nodeId, reports);
      return this.setUsable(tx, nodeId, usableByName(reports));
    });
    if (row) await this.events.publish({ type: 'node.updated', resourceType: 'node', resourceId: row.id, projectId: null, data: nodeView(row) });
  }

  /** What a node last reported of its store (cluster admins: GET /v1/nodes/{id}/images). */
  async list(principal: Principal, ref: string): Promise<{ items: NodeStoreImageView[] }> {
    requireRole(principal, 'cluster-admin', 'read nodes');
    const node = await this.nodes.findByIdOrName(ref);
    if (!node) throw new NotFoundError('node', ref);
    return { items: (await this.repo.list(node.id)).map(nodeStoreImageView) };
  }

  private async setUsable(tx: Db, nodeId: string, images: NodeImage[]): Promise<NodeRow | undefined> {
    const found = await rows<NodeRow>(tx, `UPDATE nodes SET images = $2, version = version + 1, updated_at = now() WHERE id = $1 RETURNING *`, [nodeId, JSON.stringify(images)]);
    return found[0];
  }
}
