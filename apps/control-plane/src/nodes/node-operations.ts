import { Injectable, OnModuleInit } from '@nestjs/common';
import { CancelledError, uuidv7 } from '@hyperplane/domain';
import { TransactionRunner } from '../common/transactions';
import { OperationQueueRepository } from '../operations/operation-queue.repository';
import { OperationContext, OperationRunner } from '../operations/operation-runner';
import { OperationRepository, OperationRow } from '../operations/operation.repository';
import { OperationsService, operationView } from '../operations/operations.service';
import { PartitionRepository } from '../partitions/partition.repository';

const ACTIVE = ['scheduled', 'starting', 'running', 'stopping'];
const POLL_MS = 1000;

/**
 * node.drain: every partition on the node gets its own `partition.stop` operation (visible in its
 * project), and the drain waits until none is left active. Cancel leaves the node cordoned.
 */
@Injectable()
export class NodeOperations implements OnModuleInit {
  constructor(
    private readonly runner: OperationRunner,
    private readonly partitions: PartitionRepository,
    private readonly ops: OperationRepository,
    private readonly queue: OperationQueueRepository,
    private readonly operations: OperationsService,
    private readonly tx: TransactionRunner,
  ) {}

  onModuleInit(): void {
    this.runner.register('node.drain', (op, ctx) => this.handleDrain(op, ctx));
  }

  /** Stops every active partition on the node and waits until none is left. */
  async handleDrain(op: OperationRow, ctx: OperationContext): Promise<void> {
    const initial = (await this.partitions.forNode(op.target_id)).filter((p) => ACTIVE.includes(p.state)).length;
    for (;;) {
      if (ctx.signal.aborted) throw new CancelledError('drain cancelled; the node stays cordoned');
      const active = (await this.partitions.forNode(op.target_id)).filter((p) => ACTIVE.includes(p.state));
      if (active.length === 0) return;
      for (const p of active) {
        const started = await this.tx.run({ scope: 'drain', name: 'drain.stop', input: null }, async (db) => {
          if (await this.ops.liveForTarget(db, p.id)) return null;
          return this.ops.insert(db, { id: uuidv7(), projectId: p.project_id, kind: 'partition.stop', targetType: 'partition', targetId: p.id, params: { force: false, graceSeconds: 30 }, requestId: op.request_id });
        });
        if (started) {
          await this.queue.enqueue(started.id, started.kind);
          await this.operations.publishView(operationView(started));
        }
      }
      await ctx.progress('stopping partitions', initial ? Math.round((100 * (initial - active.length)) / initial) : 0);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }
}
