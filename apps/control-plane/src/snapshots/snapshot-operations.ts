import { Inject, Injectable, OnModuleInit } from '@nestjs/common';
import { CancelledError, InternalError } from '@hyperplane/domain';
import { DataSource } from 'typeorm';
import { agentV1 } from '@hyperplane/proto';
import { AgentSessions } from '../agents/agent-sessions';
import { agentFailure } from '../agents/agent-errors';
import { DATA_SOURCE } from '../common/tokens';
import { inTransaction } from '../database/database';
import { EventBus } from '../events/event-bus';
import { OperationContext, OperationRunner } from '../operations/operation-runner';
import { OperationRow } from '../operations/operation.repository';
import { OperationsService } from '../operations/operations.service';
import { PartitionRepository, PartitionRow } from '../partitions/partition.repository';
import { partitionEvent, partitionView } from '../partitions/partition-view';
import { SnapshotRepository, SnapshotRow } from './snapshot.repository';
import { revertPhase, snapshotEvent, snapshotView } from './snapshot-view';
import { PartitionImages } from '../images/partition-images';

/** An operation's partition and snapshot, undefined where gone. */
type Read = [PartitionRow | undefined, SnapshotRow | undefined];

/** Longest a node may take to save or load a snapshot (RAM is written to the disk file). */
const SNAPSHOT_TIMEOUT_MS = 10 * 60_000;

/** What a node answers for one snapshot (SnapshotEntry in agent.proto). */
interface SnapshotEntry {
  tag: string;
  vmStateBytes: number;
  vmClockMs: number;
}

/**
 * The handlers behind snapshot operations. The node does the work (internal qcow2 snapshots,
 * tagged with the snapshot's id); the handler records the outcome. Each is idempotent: after a
 * control-plane crash it asks the node what it has before doing anything again.
 */
@Injectable()
export class SnapshotOperations implements OnModuleInit {
  constructor(
    private readonly runner: OperationRunner,
    private readonly snapshots: SnapshotRepository,
    private readonly partitions: PartitionRepository,
    private readonly sessions: AgentSessions,
    private readonly events: EventBus,
    @Inject(DATA_SOURCE) private readonly ds: DataSource,
    private readonly images: PartitionImages,
    private readonly operations: OperationsService,
  ) {}

  onModuleInit(): void {
    this.runner.register('snapshot.create', (op, ctx) => this.handleCreate(op, ctx));
    // A revert is short: its partition and snapshot are read alongside the operation's start.
    this.runner.register('snapshot.revert', (op, ctx, read?: Read) => this.handleRevert(op, ctx, read), (id) => Promise.all([this.partitions.ofOperation(id), this.snapshots.ofOperation(id)]));
    this.runner.register('snapshot.delete', (op, ctx) => this.handleDelete(op, ctx));
    // Cancelled before the node was asked: a snapshot being created was never made; one being deleted stays.
    this.operations.onCancelledBeforeStart('snapshot.create', async (op) => {
      const [partition, snap] = await this.read(op);
      if (partition && snap?.state === 'creating') await this.discard(snap, partition);
    });
    // A revert cancelled before the node was asked: the snapshot current before is current again.
    this.operations.onCancelledBeforeStart('snapshot.revert', async (op) => {
      const partition = op.params.currentRecorded === true ? await this.partitions.getById(op.target_id) : undefined;
      if (partition) await this.setCurrent(partition, (op.params.previousSnapshotId as string | null | undefined) ?? null);
    });
    this.operations.onCancelledBeforeStart('snapshot.delete', async (op) => {
      const [partition, snap] = await this.read(op);
      if (partition && snap?.state === 'deleting') await this.backToReady(snap, partition);
    });
  }

  /** snapshot.create: the node saves it; a failure leaves no snapshot listed and the guest running as before. */
  async handleCreate(op: OperationRow, ctx: OperationContext): Promise<void> {
    const { partition, snap } = await this.load(op);
    if (snap.state === 'ready') return;
    const node = partition.node_id!;
    void ctx.progress(snap.with_memory ? 'saving memory and disk' : 'saving disk', 20).catch(() => undefined); // shown while the node works; not waited for
    let entry: SnapshotEntry | undefined;
    try {
      // A re-run after a crash: the node may have finished it already.
      if (op.attempts > 1) entry = (await this.list(node, partition)).find((e) => e.tag === snap.id);
      if (!entry) {
        const r = await this.sessions.command(node, { snapshotCreate: { partitionId: partition.id, tag: snap.id, withMemory: snap.with_memory } }, SNAPSHOT_TIMEOUT_MS);
        if (r.ok) entry = JSON.parse(r.payload || '{}') as SnapshotEntry;
        else {
          entry = (await this.list(node, partition).catch(() => [])).find((e) => e.tag === snap.id);
          if (!entry) throw agentFailure(r, `snapshot ${snap.name} of partition ${partition.name}`);
        }
      }
    } catch (e) {
      // No half snapshot stays listed; if the node made it after all, it goes too.
      await this.discard(snap, partition);
      void this.sessions.command(node, { snapshotDelete: { partitionId: partition.id, tag: snap.id } }, SNAPSHOT_TIMEOUT_MS).catch(() => undefined);
      throw e;
    }
    const done = entry;
    const ready = await inTransaction(this.ds, async (tx) => {
      const s = await this.snapshots.markReady(tx, snap.id, { vmStateBytes: Number(done.vmStateBytes ?? 0), vmClockMs: Number(done.vmClockMs ?? 0) });
      const p = await this.partitions.setCurrentSnapshot(tx, partition.id, snap.id);
      return { s, p };
    });
    if (ready.s) await this.events.publish(snapshotEvent('snapshot.updated', snapshotView(ready.s, snap.id)));
    if (ready.p) await this.events.publish(partitionEvent('partition.updated', partitionView(ready.p)));
    await this.images.record(op, partition, 'snapshotted', { details: { snapshot: snap.name, withMemory: snap.with_memory } });
  }

  /**
   * snapshot.revert: the node loads it (a running guest resumes from it); it becomes the current
   * snapshot. The request records it as current (`currentRecorded`), so nothing is written while
   * the node loads it (a commit then slowed QEMU's load by 10-20 ms) and nothing stands between
   * the node's answer and the operation's end; the one before (kept in the operation's params) is
   * put back if the revert fails. Operations requested before that record it while the node loads
   * it (`previousSnapshotId` alone: since 2026-12-01; a re-run after a crash records it again) or
   * once the node answered (neither: before).
   */
  async handleRevert(op: OperationRow, ctx: OperationContext, read?: Read): Promise<void> {
    const { partition, snap } = await this.load(op, read);
    const loading = revertPhase(partition.state);
    if (op.phase !== loading.phase) void ctx.progress(loading.phase, loading.progress).catch(() => undefined); // started here, it began in it
    // A re-run records it again (an earlier attempt may have put the one before back).
    const recorded = op.params.currentRecorded === true && op.attempts <= 1;
    const current = recorded ? Promise.resolve() : 'previousSnapshotId' in op.params ? this.setCurrent(partition, snap.id) : undefined;
    current?.catch(() => undefined); // awaited below; until then a failure must not go unhandled
    try {
      const r = await this.sessions.command(partition.node_id!, { snapshotRevert: { partitionId: partition.id, tag: snap.id } }, SNAPSHOT_TIMEOUT_MS);
      if (!r.ok) throw agentFailure(r, `revert of partition ${partition.name} to snapshot ${snap.name}`);
    } catch (e) {
      if (current) await this.putBackCurrent(op, partition, current);
      throw e;
    }
    await (current ?? this.setCurrent(partition, snap.id));
    await this.images.record(op, partition, 'reverted', { details: { snapshot: snap.name } });
  }

  /** Records `snapshotId` as the partition's current snapshot and tells the event streams. */
  private async setCurrent(partition: PartitionRow, snapshotId: string | null): Promise<void> {
    const p = await this.partitions.setCurrentSnapshot(this.ds.manager, partition.id, snapshotId);
    if (p) void this.events.publish(partitionEvent('partition.updated', partitionView(p))); // heard here at once; not waited for
  }

  /** A revert that failed: the current snapshot is the one from before the request again. */
  private async putBackCurrent(op: OperationRow, partition: PartitionRow, recorded: Promise<void>): Promise<void> {
    await recorded.catch(() => undefined);
    await this.setCurrent(partition, (op.params.previousSnapshotId as string | null | undefined) ?? null);
  }

  /** snapshot.delete: the node drops it (already gone is fine); children move up to its parent. */
  async handleDelete(op: OperationRow, ctx: OperationContext): Promise<void> {
    const partition = await this.partitions.getById(op.target_id);
    if (!partition) throw new CancelledError(`partition ${op.target_id} no longer exists`);
    const snap = await this.snapshots.get(partition.id, String(op.params.snapshotId));
    if (!snap) return; // removed already: a re-run after a crash
    void ctx.progress('deleting', 30).catch(() => undefined);
    const r = await this.sessions.command(partition.node_id!, { snapshotDelete: { partitionId: partition.id, tag: snap.id } }, SNAPSHOT_TIMEOUT_MS);
    if (!r.ok && r.errorCode !== 'NOT_FOUND') {
      await this.backToReady(snap, partition);
      throw agentFailure(r, `delete of snapshot ${snap.name} of partition ${partition.name}`);
    }
    const out = await inTransaction(this.ds, async (tx) => {
      const cur = await this.partitions.getById(partition.id, tx);
      const p = cur?.current_snapshot_id === snap.id ? await this.partitions.setCurrentSnapshot(tx, partition.id, snap.parent_id) : undefined;
      return { ...(await this.snapshots.remove(tx, snap.id)), p, currentId: p ? snap.parent_id : cur?.current_snapshot_id ?? null };
    });
    if (out.removed) await this.events.publish(snapshotEvent('snapshot.deleted', snapshotView(out.removed, out.currentId)));
    for (const c of out.reparented) await this.events.publish(snapshotEvent('snapshot.updated', snapshotView(c, out.currentId)));
    if (out.p) await this.events.publish(partitionEvent('partition.updated', partitionView(out.p)));
  }

  /** The operation's partition and snapshot, read together (undefined where gone). */
  private read(op: OperationRow): Promise<Read> {
    return Promise.all([this.partitions.getById(op.target_id), this.snapshots.get(op.target_id, String(op.params.snapshotId))]);
  }

  /** A snapshot whose delete did not happen is ready again. */
  private async backToReady(snap: SnapshotRow, partition: PartitionRow): Promise<void> {
    const back = await this.snapshots.setState(this.ds.manager, snap.id, 'ready');
    if (back) await this.events.publish(snapshotEvent('snapshot.updated', snapshotView(back, partition.current_snapshot_id)));
  }

  /** The operation's partition and snapshot (`read` ahead, or read now); Cancelled when either is gone. */
  private async load(op: OperationRow, read?: Read): Promise<{ partition: PartitionRow; snap: SnapshotRow }> {
    const [partition, snap] = read ?? (await this.read(op));
    if (!partition) throw new CancelledError(`partition ${op.target_id} no longer exists`);
    if (!partition.node_id) throw new InternalError(`partition ${partition.name} has no node`);
    if (!snap) throw new CancelledError(`snapshot ${String(op.params.snapshotId)} no longer exists`);
    return { partition, snap };
  }

  /** The snapshots the node has on the partition's disk. */
  private async list(node: string, partition: PartitionRow): Promise<SnapshotEntry[]> {
    const r: agentV1.CommandResult__Output = await this.sessions.command(node, { snapshotList: { partitionId: partition.id } }, 60_000);
    if (!r.ok) throw agentFailure(r, `snapshots of partition ${partition.name}`);
    return (JSON.parse(r.payload || '{}') as { snapshots?: SnapshotEntry[] }).snapshots ?? [];
  }

  /** A snapshot that did not happen: its record goes, so none is listed. */
  private async discard(snap: SnapshotRow, partition: PartitionRow): Promise<void> {
    const { removed } = await inTransaction(this.ds, (tx) => this.snapshots.remove(tx, snap.id));
    if (removed) await this.events.publish(snapshotEvent('snapshot.deleted', snapshotView(removed, partition.current_snapshot_id)));
  }
}

