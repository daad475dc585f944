import { Inject, Injectable, OnModuleDestroy } from '@nestjs/common';
import { Job, Queue, Worker } from 'bullmq';
import { Logger } from 'pino';
import { Config, CONFIG } from '../config';
import { LOGGER } from '../common/tokens';
import { Batcher } from '../common/batcher';

/** The payload of an operation's job; the job id is the operation id. */
export interface OperationJobData {
  operationId: string;
}

const QUEUE = 'operations';

/**
 * BullMQ on Redis: one job per operation, with the operation's id as the job id. A replica that
 * dies mid-job loses its lock; BullMQ's stalled-job check hands the job to another replica (or to
 * this one after a restart) within about `lockDurationMs`.
 */
@Injectable()
export class OperationQueueRepository implements OnModuleDestroy {
  private readonly queue: Queue<OperationJobData>;
  private worker: Worker<OperationJobData> | undefined;
  /** A wake of the worker's main loop is due this tick (see setConcurrency). */
  private wakePending = false;
  /** Lock time of a job; a crashed replica's jobs are picked up again after this. */
  static readonly lockDurationMs = 10_000;

  constructor(
    @Inject(CONFIG) private readonly config: Config,
    @Inject(LOGGER) private readonly log: Logger,
  ) {
    this.queue = new Queue<OperationJobData>(QUEUE, { connection: { url: config.redisUrl, maxRetriesPerRequest: null }, prefix: config.redisPrefix });
    this.queue.on('error', (err) => this.log.warn({ err }, 'operation queue error'));
  }

  /**
   * Enqueues the job for an operation; a job with that id already queued is left as it is. Jobs
   * enqueued at the same moment go to Redis in one round trip.
   */
  async enqueue(operationId: string, kind: string): Promise<void> {
    await this.adds.call({ id: operationId, kind });
  }

  private readonly adds = new Batcher<{ id: string; kind: string }, void>(async (ops) => {
    await this.enqueueMany(ops);
    return ops.map(() => undefined);
  });

  /** Enqueues many operations' jobs in one round trip (creates with `count`). */
  async enqueueMany(ops: Array<{ id: string; kind: string }>): Promise<void> {
    await this.queue.addBulk(ops.map((o) => ({ name: o.kind, data: { operationId: o.id }, opts: { jobId: o.id, removeOnComplete: { count: 1000 }, removeOnFail: { count: 1000 }, attempts: 1 } })));
  }

  /**
   * Makes sure a live operation has a job that will run: adds one if none exists, replaces one that
   * BullMQ considers finished. Used on start-up and by the periodic sweep.
   */
  async ensure(operationId: string, kind: string): Promise<'queued' | 'present' | 'requeued'> {
    const job = await this.queue.getJob(operationId);
    if (!job) {
      await this.enqueue(operationId, kind);
      return 'queued';
    }
    const state = await job.getState();
    if (state === 'completed' || state === 'failed' || state === 'unknown') {
      await job.remove().catch(() => undefined);
      await this.enqueue(operationId, kind);
      return 'requeued';
    }
    return 'present';
  }

  /** Removes a job that has not started (a cancelled pending operation). */
  async removeIfWaiting(operationId: string): Promise<void> {
    const job = await this.queue.getJob(operationId);
    if (job && ['waiting', 'delayed', 'prioritized'].includes(await job.getState())) await job.remove().catch(() => undefined);
  }

  /** Starts processing jobs with `handler`; `concurrency` jobs at a time in this replica. */
  startWorker(handler: (job: Job<OperationJobData>) => Promise<void>, concurrency: number): void {
    this.worker = new Worker<OperationJobData>(QUEUE, handler, {
      connection: { url: this.config.redisUrl, maxRetriesPerRequest: null },
      prefix: this.config.redisPrefix,
      concurrency,
      lockDuration: OperationQueueRepository.lockDurationMs,
      stalledInterval: 5_000,
      maxStalledCount: 1000,
    });
    this.worker.on('error', (err) => this.log.warn({ err }, 'operation worker error'));
  }

  /**
   * How many jobs this replica's worker takes at once from now on (at least 1). BullMQ reads a
   * lower value at its next fetch; a higher one it would only read when one of its jobs ends (its
   * main loop waits on them), so the loop is woken as `Worker.resume` wakes it (once per tick).
   */
  setConcurrency(n: number): void {
    const worker = this.worker;
    const next = Math.max(1, n);
    if (!worker || worker.concurrency === next) return;
    const raised = next > worker.concurrency;
    worker.concurrency = next;
    if (raised && !this.wakePending) {
      this.wakePending = true;
      setImmediate(() => {
        this.wakePending = false;
        (worker as unknown as { mainLoopQueue?: { add(p: Promise<unknown>): void } }).mainLoopQueue?.add(Promise.resolve(undefined));
      });
    }
  }

  /** Readiness probe: Redis answers. */
  async ping(): Promise<void> {
    await this.queue.getJobCounts('active');
  }

  async onModuleDestroy(): Promise<void> {
    await this.worker?.close().catch(() => undefined);
    await this.queue.close().catch(() => undefined);
  }
}
