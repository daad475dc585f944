import { Injectable } from '@nestjs/common';
import { FailedPreconditionError, NotFoundError, Principal, UUID_RE, requireRole, uuidv7 } from '@hyperplane/domain';
import { checkIfMatch } from '../common/etag';
import { Page, parsePage, toPage } from '../common/pagination';
import { MutationOptions } from '../common/transactions';
import { Db } from '../database/database';
import { EventBus } from '../events/event-bus';
import { OperationView } from '../operations/operations.service';
import { PartitionRepository, PartitionRow } from '../partitions/partition.repository';
import { PartitionView } from '../partitions/partition-view';
import { PartitionsService } from '../partitions/partitions.service';
import { SnapshotRepository, SnapshotRow } from './snapshot.repository';
import { SnapshotView, revertPhase, snapshotEvent, snapshotView } from './snapshot-view';
import { CreateSnapshotInput } from './snapshots.dto';

/** The answer to every state-changing snapshot call: the snapshot, its partition and the operation doing the work. */
export interface SnapshotOperationView {
  snapshot: SnapshotView;
  partition: PartitionView;
  operation: OperationView;
}

/**
 * Snapshots of a partition. Requests are checked and recorded synchronously (a snapshot that is
 * refused changes nothing); the node does the work in an operation on the partition, so a
 * snapshot, revert or delete never runs alongside another action on the same partition.
 */
@Injectable()
export class SnapshotsService {
  constructor(
    private readonly snapshots: SnapshotRepository,
    private readonly partitions: PartitionsService,
    private readonly events: EventBus,
    private readonly partitionRows: PartitionRepository,
  ) {}

  /**
   * Takes a snapshot: with memory (the default for a running partition) it holds RAM and device
   * state, so a revert resumes the guest where it was; a stopped partition gets a disk-only one.
   * Its parent is the partition's current snapshot.
   */
  create(principal: Principal, projectId: string, partitionId: string, input: CreateSnapshotInput, opts: MutationOptions = {}): Promise<SnapshotOperationView> {
    const id = uuidv7();
    return this.run(principal, projectId, partitionId, 'snapshot', 'snapshot.create', opts, async (db, row) => {
      const withMemory = input.memory ?? row.state === 'running';
      if (withMemory && row.state !== 'running') {
        throw new FailedPreconditionError(`cannot save the memory of partition ${row.name}: it is ${row.state} (a stopped partition gets disk-only snapshots: leave memory unset or false)`);
      }
      const snap = await this.snapshots.insert(db, { id, projectId, partitionId: row.id, parentId: row.current_snapshot_id, name: input.name, description: input.description ?? '', withMemory });
      return { snap, params: { snapshotId: snap.id, withMemory } };
    }, 'snapshot.created');
  }

  /** A partition's snapshots, oldest first, each with its parent (the tree) and whether it is current. */
  async list(principal: Principal, projectId: string, partitionId: string, q: { pageSize?: unknown; pageToken?: unknown }): Promise<Page<SnapshotView>> {
    requireRole(principal, 'viewer', 'list snapshots');
    const page = parsePage(q.pageSize, q.pageToken);
    const partition = await this.partitions.find(projectId, partitionId);
    const rows = await this.snapshots.list(partition.id, page);
    return toPage(rows, page, (r) => snapshotView(r, partition.current_snapshot_id));
  }

  /** One snapshot of a partition of the project; anything else is 404. */
  async get(principal: Principal, projectId: string, partitionId: string, id: string): Promise<SnapshotView> {
    requireRole(principal, 'viewer', 'read snapshots');
    const partition = await this.partitions.find(projectId, partitionId);
    return snapshotView(await this.mustGet(partition, id), partition.current_snapshot_id);
  }

  /** Deletes a snapshot; its children hang from its parent afterwards, and every other snapshot stays usable. */
  delete(principal: Principal, projectId: string, partitionId: string, id: string, opts: MutationOptions = {}): Promise<SnapshotOperationView> {
    return this.run(principal, projectId, partitionId, 'delete snapshots of', 'snapshot.delete', { ...opts, ifMatch: undefined }, async (db, row) => {
      const snap = await this.lockReady(db, row, id, 'delete');
      checkIfMatch('snapshot', id, opts.ifMatch, snap.version);
      return { snap: (await this.snapshots.setState(db, snap.id, 'deleting'))!, params: { snapshotId: snap.id } };
    }, 'snapshot.updated');
  }

  /**
   * Reverts the partition to a snapshot, any one of the tree. A running partition keeps running
   * from the snapshot's memory and disk (the snapshot must hold memory); a stopped one gets the
   * snapshot's disk and boots from it at its next start.
   */
  revert(principal: Principal, projectId: string, partitionId: string, id: string, opts: MutationOptions = {}): Promise<SnapshotOperationView> {
    return this.run(principal, projectId, partitionId, 'revert', 'snapshot.revert', { ...opts, ifMatch: undefined }, async (db, row) => {
      const snap = await this.lockReady(db, row, id, 'revert to');
      checkIfMatch('snapshot', id, opts.ifMatch, snap.version);
      if (row.state === 'running' && !snap.with_memory) {
        throw new FailedPreconditionError(`cannot revert running partition ${row.name} to snapshot ${snap.name}: it holds no memory state; stop the partition first`);
      }
      // Recorded as current with the request (no write while the node loads it: a commit then
      // slowed the load); the one before is kept, and the handler puts it back if the revert fails.
      const moved = await this.partitionRows.setCurrentSnapshot(db, row.id, snap.id);
      // The handler's first read (SnapshotOperations' prefetch) as committed here.
      return { snap, row: moved, phase: revertPhase(row.state), params: { snapshotId: snap.id, previousSnapshotId: row.current_snapshot_id, currentRecorded: true }, read: moved && [moved, snap] };
    }, null);
  }

  private async run(
    principal: Principal,
    projectId: string,
    partitionId: string,
    action: 'snapshot' | 'revert' | 'delete snapshots of',
    kind: string,
    opts: MutationOptions,
    prepare: (db: Db, row: PartitionRow) => Promise<{ snap: SnapshotRow; params: Record<string, unknown>; row?: PartitionRow; phase?: { phase: string; progress: number }; read?: unknown }>,
    eventType: string | null,
  ): Promise<SnapshotOperationView> {
    const r = await this.partitions.act<SnapshotView>(principal, projectId, partitionId, action, kind, {}, opts, async (db, row) => {
      const { snap, params, row: changed, phase, read } = await prepare(db, row);
      return { params, row: changed, phase, read, extra: snapshotView(snap, (changed ?? row).current_snapshot_id) };
    }, async (done) => {
      if (eventType && done.extra) await this.events.publish(snapshotEvent(eventType, done.extra));
    });
    return { snapshot: r.extra!, partition: r.partition, operation: r.operation };
  }

  private async mustGet(partition: PartitionRow, id: string, db?: Db): Promise<SnapshotRow> {
    const snap = UUID_RE.test(id) ? await this.snapshots.get(partition.id, id, db) : undefined;
    if (!snap) throw new NotFoundError('snapshot', id);
    return snap;
  }

  /** A ready snapshot of the partition, locked for the transaction: 404 for anything else, 409 while it is created or deleted. */
  async lockReady(db: Db, partition: PartitionRow, id: string, verb: string): Promise<SnapshotRow> {
    const snap = UUID_RE.test(id) ? await this.snapshots.lock(db, partition.id, id) : undefined;
    if (!snap) throw new NotFoundError('snapshot', id);
    if (snap.state !== 'ready') throw new FailedPreconditionError(`cannot ${verb} snapshot ${snap.name} of partition ${partition.name}: it is ${snap.state}`);
    return snap;
  }
}
