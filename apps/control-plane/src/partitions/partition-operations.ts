import { Inject, Injectable, OnModuleInit } from '@nestjs/common';
import { CancelledError, DeadlineExceededError, FailedPreconditionError, InternalError, UnavailableError } from '@hyperplane/domain';
import { Config, CONFIG } from '../config';
import { inTransaction } from '../database/database';
import { DATA_SOURCE } from '../common/tokens';
import { DataSource } from 'typeorm';
import { AgentSessions } from '../agents/agent-sessions';
import { EventBus } from '../events/event-bus';
import { NodeRepository } from '../nodes/node.repository';
import { OperationContext, OperationRunner } from '../operations/operation-runner';
import { OperationRow } from '../operations/operation.repository';
import { waitFor } from '../operations/wait-for';
import { PartitionImages } from '../images/partition-images';
import { PartitionRepository, PartitionRow } from './partition.repository';
import { partitionEvent, partitionView } from './partition-view';

/** How often a waiting operation re-reads the partition, in case an event was missed. */
const POLL_MS = 1000;

/**
 * The handlers behind partition operations. Each is idempotent: after a control-plane crash it
 * runs again and carries the operation on from wherever the partition is. The node is told what
 * to do through the partition's desired state; the handler then waits for the node's report.
 */
@Injectable()
export class PartitionOperations implements OnModuleInit {
  constructor(
    private readonly runner: OperationRunner,
    private readonly partitions: PartitionRepository,
    private readonly nodes: NodeRepository,
    private readonly sessions: AgentSessions,
    private readonly events: EventBus,
    @Inject(DATA_SOURCE) private readonly ds: DataSource,
    @Inject(CONFIG) private readonly config: Config,
    private readonly images: PartitionImages,
  ) {}

  onModuleInit(): void {
    // A create run where it was accepted gets its partition row as the request committed it.
    this.runner.register<PartitionRow>('partition.create', (op, ctx, committed) => this.handleStart(op, ctx, committed));
    this.runner.register('partition.start', (op, ctx) => this.handleStart(op, ctx));
    this.runner.register('partition.stop', (op, ctx) => this.handleStop(op, ctx));
    this.runner.register('partition.reboot', (op, ctx) => this.handleReboot(op, ctx));
    this.runner.register('partition.delete', (op, ctx) => this.handleDelete(op, ctx));
  }

  /** create/start: desired running, then wait for the node to report it running. Cancel stops it again. `known`: the row, when the caller has it. */
  async handleStart(op: OperationRow, ctx: OperationContext, known?: PartitionRow): Promise<void> {
    let row = known ?? (await this.mustGet(op));
    if (row.state === 'running' && row.observed_state === 'running') return;
    if (row.state === 'deleting') throw new CancelledError(`partition ${row.name} is being deleted`);
    try {
      await this.images.beforeStart(op, row, ctx);
    } catch (e) {
      if (e instanceof CancelledError || ctx.signal.aborted) await this.stopCancelledStart(row);
      throw e instanceof CancelledError || !ctx.signal.aborted ? e : new CancelledError('start cancelled; the partition is stopped');
    }
    await ctx.progress('starting', 10);
    /** The row as this handler just wrote it: pushed to the node and judged first as it is (any other is read again). */
    let written: PartitionRow | undefined;
    if (row.desired !== 'running' || (row.state !== 'starting' && row.state !== 'running')) {
      written = await this.partitions.setDesired(this.ds.manager, row.id, 'running', 'starting');
      row = written ?? row;
      await this.publish(row);
    }
    await this.tellNode(row, written);
    try {
      await this.waitFor(row.id, ctx, written, (r) => {
        if (r.state === 'running' && r.observed_state === 'running' && Number(r.observed_generation) >= Number(row.generation)) return true;
        if (r.state === 'failed') throw new FailedPreconditionError(`partition ${r.name} failed to start: ${r.state_reason || 'no reason given'}`);
        if (r.state === 'deleting') throw new CancelledError(`partition ${r.name} is being deleted`);
        return false;
      });
    } catch (e) {
      if (e instanceof CancelledError || ctx.signal.aborted) {
        await this.stopCancelledStart(row);
        throw e instanceof CancelledError ? e : new CancelledError('start cancelled; the partition is being stopped');
      }
      throw e;
    }
    // Done: finishing the operation records progress 100 (phase 'done'), so no step of its own.
  }

  /**
   * After a create or start was cancelled: the partition is stopped again. One its node was not
   * told to run yet (`scheduled`, `stopped`: cancelled while its image came to the node) is stopped
   * in the record alone; any other is told to stop.
   */
  private async stopCancelledStart(row: PartitionRow): Promise<void> {
    const cur = await this.partitions.getById(row.id);
    if (!cur || cur.state === 'deleting') return;
    if (cur.state === 'scheduled' || (cur.state === 'stopped' && cur.desired !== 'running')) {
      const stopped = await this.partitions.setDesired(this.ds.manager, row.id, 'stopped', 'stopped', 'start cancelled');
      if (stopped) await this.publish(stopped);
      return;
    }
    const stopped = await this.partitions.setDesired(this.ds.manager, row.id, 'stopped', 'stopping', 'start cancelled');
    if (stopped) {
      await this.publish(stopped);
      await this.tellNode(stopped, stopped).catch(() => undefined);
    }
  }

  /** stop: desired stopped, a stop command (graceful or forced), then wait for the node to report it stopped. */
  async handleStop(op: OperationRow, ctx: OperationContext): Promise<void> {
    let row = await this.mustGet(op);
    if (row.state === 'stopped') return;
    const force = op.params.force === true;
    const graceMs = Number(op.params.graceSeconds ?? 30) * 1000;
    const written = await this.partitions.setDesired(this.ds.manager, row.id, 'stopped', 'stopping', force ? 'forced stop' : 'stop requested');
    row = written ?? row;
    await this.publish(row);
    await ctx.progress(force ? 'quitting' : 'powering-down', 20);
    const node = this.requireNode(row);
    await this.tellNode(row, written);
    await this.sessions
      .command(node, { stop: { partitionId: row.id, force, graceMs } }, graceMs + 15_000)
      .catch((e: Error) => { if (!(e instanceof DeadlineExceededError)) throw e; });
    // The node reports the guest stopped before it answers the command: read, not the row from before.
    await this.waitFor(row.id, ctx, undefined, (r) => {
      if (r.state === 'stopped') return true;
      if (r.state === 'failed') return true;
      if (r.state === 'deleting') throw new CancelledError(`partition ${r.name} is being deleted`);
      return false;
    });
  }

  /** reboot: a guest reset on the node. */
  async handleReboot(op: OperationRow, ctx: OperationContext): Promise<void> {
    const row = await this.mustGet(op);
    if (row.state !== 'running') throw new FailedPreconditionError(`cannot reboot partition ${row.name}: it is ${row.state}`);
    await ctx.progress('resetting', 30);
    const r = await this.sessions.command(this.requireNode(row), { reboot: { partitionId: row.id } }, 30_000);
    if (!r.ok) throw new FailedPreconditionError(`reboot of partition ${row.name} failed: ${r.errorMessage}`);
  }

  /** delete: desired absent, wait for the node to remove the guest and its files, then drop the record and free the capacity. */
  async handleDelete(op: OperationRow, ctx: OperationContext): Promise<void> {
    const row = await this.partitions.getById(op.target_id);
    if (!row) return; // already gone: a re-run after a crash
    await ctx.progress('removing', 20);
    if (row.node_id) {
      const node = await this.nodes.findByIdOrName(row.node_id);
      if (node?.status !== 'ready' || !(await this.sessions.sync(row.node_id, row.id, row))) {
        throw new UnavailableError(`node ${node?.name ?? row.node_id} is unreachable; the partition stays deleting until it is back`);
      }
      await this.waitFor(row.id, ctx, row, (r) => r.observed_state === 'absent' && Number(r.observed_generation) >= Number(row.generation));
    }
    const gone = await inTransaction(this.ds, async (tx) => {
      const deleted = await this.partitions.delete(tx, row.id);
      if (deleted?.node_id) {
        await this.nodes.reserve(tx, deleted.node_id, { vcpus: -deleted.vcpus, memoryMiB: -Number(deleted.memory_mib), diskBytes: -deleted.disk_gib * 1024 ** 3 });
      }
      return deleted;
    });
    if (gone) await this.events.publish(partitionEvent('partition.deleted', partitionView(gone)));
    if (gone) await this.images.afterDelete(op, gone);
  }

  private async mustGet(op: OperationRow): Promise<PartitionRow> {
    const row = await this.partitions.getById(op.target_id);
    if (!row) throw new CancelledError(`partition ${op.target_id} no longer exists`);
    return row;
  }

  private requireNode(row: PartitionRow): string {
    if (!row.node_id) throw new InternalError(`partition ${row.name} has no node`);
    return row.node_id;
  }

  /**
   * Pushes the partition's spec to its node (`written`: the row as this handler just wrote it, sent
   * as it is; else read); fails fast when no replica holds the node's stream.
   */
  private async tellNode(row: PartitionRow, written?: PartitionRow): Promise<void> {
    const nodeId = this.requireNode(row);
    if (!(await this.sessions.sync(nodeId, row.id, written))) {
      const node = await this.nodes.findByIdOrName(nodeId);
      const failed = await this.partitions.setState(this.ds.manager, row.id, 'failed', `node ${node?.name ?? nodeId} is unreachable`, ['deleting', 'stopped']);
      if (failed) await this.publish(failed);
      throw new UnavailableError(`node ${node?.name ?? nodeId} is unreachable`);
    }
  }

  /**
   * Waits until `done(row)` is true (or throws), the operation is cancelled, or the timeout passes.
   * Judges `known` first (the row as the handler just read or wrote it, when nothing the node does
   * could have changed it since: else undefined, and the first check reads), then each row an event of
   * this replica carries (the agent's reports), and reads the row for the poll and for events from
   * other replicas.
   */
  private waitFor(id: string, ctx: OperationContext, known: PartitionRow | undefined, done: (r: PartitionRow) => boolean): Promise<void> {
    return waitFor(this.events, ctx, async (record) => {
      const r = (record as PartitionRow | undefined) ?? (await this.partitions.getById(id));
      if (!r) throw new CancelledError(`partition ${id} no longer exists`);
      return done(r);
    }, {
      known,
      resourceId: id,
      resourceType: 'partition',
      pollMs: POLL_MS,
      timeoutMs: this.config.operationTimeoutMs,
      timeoutMessage: `partition ${id} did not reach the expected state within ${this.config.operationTimeoutMs / 1000} s`,
    });
  }

  private async publish(r: PartitionRow): Promise<void> {
    await this.events.publish(partitionEvent('partition.updated', partitionView(r)), r);
  }
}
