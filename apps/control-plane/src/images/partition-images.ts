import { Inject, Injectable } from '@nestjs/common';
import { CancelledError } from '@hyperplane/domain';
import { DataSource } from 'typeorm';
import { DATA_SOURCE } from '../common/tokens';
import { EventBus } from '../events/event-bus';
import { NodeRepository } from '../nodes/node.repository';
import { OperationContext } from '../operations/operation-runner';
import { OperationRow } from '../operations/operation.repository';
import { PartitionRepository, PartitionRow } from '../partitions/partition.repository';
import { partitionEvent, partitionView } from '../partitions/partition-view';
import { ImageDistribution } from './image-distribution';
import { ImageHistory } from './image-history';

/**
 * What partition operations do about the library image a partition's disk is based on: fetch it
 * to the partition's node before the guest starts there, and record the partition's creation and
 * deletion in the image's history. Partitions of node-store images (`sample`) have nothing to do.
 */
@Injectable()
export class PartitionImages {
  constructor(
    private readonly distribution: ImageDistribution,
    private readonly history: ImageHistory,
    private readonly nodes: NodeRepository,
    private readonly partitions: PartitionRepository,
    private readonly events: EventBus,
    @Inject(DATA_SOURCE) private readonly ds: DataSource,
  ) {}

  /**
   * Before `row`'s guest starts on its node: the node gets the library image if it lacks it (a
   * failed fetch marks the partition failed with the reason, and throws), then a create records
   * `partition-created` in the image's history (once per operation).
   */
  async beforeStart(op: OperationRow, row: PartitionRow, ctx: OperationContext): Promise<void> {
    if (!row.image_id || !row.node_id) return;
    try {
      await this.distribution.ensureOnNode({ imageId: row.image_id, nodeId: row.node_id }, ctx);
    } catch (e) {
      if (!(e instanceof CancelledError) && !ctx.signal.aborted) {
        const failed = await this.partitions.setState(this.ds.manager, row.id, 'failed', `could not fetch image ${row.image} to the node: ${(e as Error).message}`, ['deleting']);
        if (failed) await this.events.publish(partitionEvent('partition.updated', partitionView(failed)));
      }
      throw e;
    }
    if (op.kind === 'partition.create') await this.record(op, row, 'partition-created');
  }

  /**
   * For a migration: the target node gets the partition's library image before it prepares the
   * incoming guest (its spec carries library_image_id; the overlay's base is that copy). No-op for
   * node-store images, and when the node has the copy.
   */
  async ensureOnNode(row: PartitionRow, nodeId: string, ctx: OperationContext): Promise<void> {
    await this.distribution.ensureOnNode({ imageId: row.image_id, nodeId }, ctx);
  }

  /**
   * Records an operation on `row`'s disk (`snapshotted`, `migrated`, `exported`...) in the history
   * of the library image it is based on, once per operation; nothing for node-store images. Never
   * throws (the history must not fail the operation); `node` defaults to the partition's node.
   */
  async record(op: OperationRow, row: PartitionRow, operation: string, extra: { node?: string; details?: Record<string, string | number | boolean | null> } = {}): Promise<void> {
    if (!row.image_id) return;
    const node = extra.node ?? (row.node_id ? (await this.nodes.findByIdOrName(row.node_id))?.name : undefined);
    await this.history.recordQuietly(row.image_id, { operation, partition: row.id, ...(node ? { node } : {}), operationId: op.id, details: { name: row.name, ...(extra.details ?? {}) } });
  }

  /** After `row` was deleted: `partition-deleted` in its image's history (once per operation). */
  async afterDelete(op: OperationRow, row: PartitionRow): Promise<void> {
    await this.record(op, row, 'partition-deleted');
  }
}
