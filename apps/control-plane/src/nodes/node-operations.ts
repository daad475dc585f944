import { Inject, Injectable, OnModuleInit } from '@nestjs/common';
import { CancelledError, DomainError, Principal, ResourceExhaustedError, uuidv7 } from '@hyperplane/domain';
import { Logger } from 'pino';
import { DATA_SOURCE, LOGGER } from '../common/tokens';
import { DataSource } from 'typeorm';
import { TransactionRunner } from '../common/transactions';
import { MigrationService } from '../migration/migration.service';
import { OperationQueueRepository } from '../operations/operation-queue.repository';
import { OperationContext, OperationRunner } from '../operations/operation-runner';
import { OperationRepository, OperationRow } from '../operations/operation.repository';
import { OperationsService, operationView } from '../operations/operations.service';
import { PartitionRepository, PartitionRow } from '../partitions/partition.repository';

/** States in which a partition still keeps a drained node busy (a guest may run, or will). */
const ACTIVE = ['scheduled', 'starting', 'running', 'stopping', 'migrating'];
const POLL_MS = 1000;
/** Attempts to move one partition before the drain reports it as one it could not move. */
const MAX_MOVES = 3;

/**
 * node.drain. Mode `migrate` (the default): every running partition gets a live
 * `partition.migrate` operation and every stopped one a cold one, to nodes the scheduler chooses
 * (the drained node is cordoned, so never back to it); the drain waits until none is left, and
 * fails naming the partitions that could not move (no node fits, migration failed three times).
 * Mode `stop`: every partition gets a `partition.stop` operation instead. Each of these
 * operations is visible in its project. Cancel leaves the node cordoned.
 */
@Injectable()
export class NodeOperations implements OnModuleInit {
  constructor(
    private readonly runner: OperationRunner,
    private readonly partitions: PartitionRepository,
    private readonly ops: OperationRepository,
    private readonly queue: OperationQueueRepository,
    private readonly operations: OperationsService,
    private readonly migration: MigrationService,
    private readonly tx: TransactionRunner,
    @Inject(DATA_SOURCE) private readonly ds: DataSource,
    @Inject(LOGGER) private readonly log: Logger,
  ) {}

  onModuleInit(): void {
    this.runner.register('node.drain', (op, ctx) => this.handleDrain(op, ctx));
  }

  /** Moves (or stops) every partition on the node and waits until none is left. */
  async handleDrain(op: OperationRow, ctx: OperationContext): Promise<void> {
    const mode = op.params.mode === 'stop' ? 'stop' : 'migrate';
    const principal: Principal = { tokenId: `drain:${op.id}`, role: 'cluster-admin', projectId: null };
    const busy = (ps: PartitionRow[]) => ps.filter((p) => ACTIVE.includes(p.state) || (mode === 'migrate' && p.state === 'stopped'));
    const initial = busy(await this.partitions.forNode(op.target_id)).length;
    const attempts = new Map<string, number>();
    const refused = new Map<string, string>();
    for (;;) {
      if (ctx.signal.aborted) throw new CancelledError('drain cancelled; the node stays cordoned');
      const left = busy(await this.partitions.forNode(op.target_id)).filter((p) => !refused.has(p.id));
      if (left.length === 0) break;
      for (const p of left) {
        if (mode === 'stop') {
          if (p.state !== 'migrating') await this.startStop(p, op);
          continue;
        }
        if (p.state !== 'running' && p.state !== 'stopped') continue; // settling, or moving already
        if (await this.ops.liveForTarget(this.ds.manager, p.id)) continue;
        const n = (attempts.get(p.id) ?? 0) + 1;
        attempts.set(p.id, n);
        try {
          if (n > MAX_MOVES) throw new ResourceExhaustedError(`migration failed ${MAX_MOVES} times`);
          await this.migration.migrate(principal, p.project_id, p.id, {}, { requestId: op.request_id });
        } catch (e) {
          if (!(e instanceof DomainError)) throw e;
          refused.set(p.id, `${p.name}: ${e.message}`);
          this.log.warn({ operationId: op.id, partition: p.name, error: e.message }, 'drain cannot move a partition');
        }
      }
      const done = initial - left.length;
      await ctx.progress(mode === 'stop' ? 'stopping partitions' : 'migrating partitions', initial ? Math.round((100 * done) / initial) : 0);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    if (refused.size > 0) {
      throw new ResourceExhaustedError(`drain could not move ${refused.size} partition(s); the node stays cordoned: ${[...refused.values()].join('; ')}`);
    }
  }

  /** Starts a `partition.stop` operation unless the partition has one in flight. */
  private async startStop(p: PartitionRow, op: OperationRow): Promise<void> {
    const started = await this.tx.run({ scope: 'drain', name: 'drain.stop', input: null }, async (db) => {
      if (await this.ops.liveForTarget(db, p.id)) return null;
      return this.ops.insert(db, { id: uuidv7(), projectId: p.project_id, kind: 'partition.stop', targetType: 'partition', targetId: p.id, params: { force: false, graceSeconds: 30 }, requestId: op.request_id });
    });
    if (started) {
      await this.queue.enqueue(started.id, started.kind);
      await this.operations.publishView(operationView(started));
    }
  }
}
