import { randomUUID } from 'node:crypto';
import { Inject, Injectable, OnApplicationBootstrap, OnModuleDestroy } from '@nestjs/common';
import { CancelledError, DomainError, isFinal } from '@hyperplane/domain';
import { Job } from 'bullmq';
import { Logger } from 'pino';
import { LOGGER } from '../common/tokens';
import { Config, CONFIG, runsOperations } from '../config';
import { EventBus } from '../events/event-bus';
import { OperationJobData, OperationQueueRepository } from './operation-queue.repository';
import { OperationError, OperationLease, OperationMetadata, OperationRepository, OperationRow } from './operation.repository';
import { OperationsService } from './operations.service';

/** What a handler gets besides its operation. */
export interface OperationContext {
  /** Aborted when a cancel is requested (on any replica). */
  signal: AbortSignal;
  /** Records phase and percentage, visible on the operation and in the event stream. */
  progress(phase: string, percent: number): Promise<void>;
  /**
   * Metadata recorded with the operation's success, in the statement that ends it (one write less
   * than recording it before returning). Merged as `OperationRepository.mergeMetadata` does.
   */
  succeedWith(metadata: OperationMetadata): void;
}

/**
 * Does the work of one kind of operation. Must be idempotent: after a control-plane crash it runs
 * again from the start on the same operation and must carry it to the end from wherever it got.
 * Returns on success; throws a DomainError to fail; on cancel, undoes what it must and throws
 * {@link CancelledError}.
 */
export type OperationHandler<P = unknown> = (op: OperationRow, ctx: OperationContext, prefetched?: P) => Promise<void>;

/**
 * Reads a handler wants, made by the operation's id alongside the statement that starts it (one
 * wait for both instead of one after the other). Undefined (or a failed read) leaves the reading to the handler.
 */
export type OperationPrefetch<P> = (operationId: string) => Promise<P>;

/** How often the sweep re-checks that every live operation has a job. */
const SWEEP_MS = 15_000;

/**
 * How long the lease of an operation run here without a job lasts; renewed at a third of it. A
 * replica that dies holding one leaves its operations to the sweep of another once it ran out
 * (BullMQ's job lock, `OperationQueueRepository.lockDurationMs`, is as long).
 */
export const LEASE_MS = 10_000;

/**
 * Kinds that wait for operations they start (a drain, for its migrations and stops): they hold no
 * slot of HYPERPLANE_OPERATION_CONCURRENCY, else drains could hold every slot while the operations
 * they wait for queue for one.
 */
const ORCHESTRATING_KINDS = new Set(['node.drain']);

/**
 * Runs operations from the BullMQ queue through their handlers, drives each to a final status,
 * and after a restart makes sure every operation that was live gets a job again (Incus
 * operations.go: a status machine, a cancel hook, an event on every transition).
 */
@Injectable()
export class OperationRunner implements OnApplicationBootstrap, OnModuleDestroy {
  private readonly handlers = new Map<string, { handler: OperationHandler; prefetch?: OperationPrefetch<unknown> }>();
  private readonly running = new Map<string, AbortController>();
  /** This replica, as the owner of the leases it holds. */
  readonly owner = randomUUID();
  /** Operations this replica runs under a lease (renewed by `leaseTimer`). */
  private readonly leased = new Set<string>();
  /** Operations run here whose lease another replica took over (their end is not recorded here). */
  private readonly lost = new Set<string>();
  /** Leases handed out by {@link leaseHere} whose operation has not started yet. */
  private reserved = 0;
  /**
   * Operations running here that hold a slot, however they started (orchestrating kinds aside):
   * with {@link reserved}, at most HYPERPLANE_OPERATION_CONCURRENCY (see {@link fitQueue}).
   */
  private busy = 0;
  /** Of {@link busy}, those run under a lease ({@link runHere}); the others came from jobs. */
  private busyLeased = 0;
  /** Orchestrating operations run here from jobs: each takes one of the queue worker's places, not a slot. */
  private orchestratingJobs = 0;
  /** Set at shutdown: a job fetched from then on starts nothing. */
  private stopping = false;
  private leaseTimer: NodeJS.Timeout | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;
  private started = false;

  constructor(
    private readonly ops: OperationRepository,
    private readonly queue: OperationQueueRepository,
    private readonly service: OperationsService,
    private readonly events: EventBus,
    @Inject(LOGGER) private readonly log: Logger,
    @Inject(CONFIG) private readonly config: Config,
  ) {}

  /** Registers the handler for a kind (and what to read for it as it starts); each kind has exactly one. */
  register<P>(kind: string, handler: OperationHandler<P>, prefetch?: OperationPrefetch<P>): void {
    if (this.handlers.has(kind)) throw new Error(`operation kind ${kind} registered twice`);
    this.handlers.set(kind, { handler: handler as OperationHandler, prefetch });
  }

  async onApplicationBootstrap(): Promise<void> {
    if (process.env.HYPERPLANE_NO_OPERATION_WORKER === '1' || !runsOperations(this.config.role)) return;
    this.started = true;
    this.unsubscribe = this.events.subscribe((e) => {
      if (e.type === 'operation.cancel-requested') this.running.get(e.resourceId)?.abort();
    });
    this.queue.startWorker((job) => this.onJob(job), this.config.operationConcurrency);
    await this.sweep();
    this.sweepTimer = setInterval(() => void this.sweep(), SWEEP_MS);
    this.sweepTimer.unref();
    this.leaseTimer = setInterval(() => void this.renewLeases(), LEASE_MS / 3);
    this.leaseTimer.unref();
  }

  async onModuleDestroy(): Promise<void> {
    this.started = false; // no more leases: requests still answered meanwhile queue their operations
    this.stopping = true;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    if (this.leaseTimer) clearInterval(this.leaseTimer);
    this.unsubscribe?.();
    for (const ac of this.running.values()) ac.abort(new Error('shutting down'));
  }

  /** Gives every live operation a job (recovery after a crash or a lost enqueue). */
  async sweep(): Promise<void> {
    if (!this.started) return;
    try {
      for (const op of await this.ops.live()) {
        if (this.running.has(op.id) || op.leased) continue; // a replica runs it: a job would not start it
        const r = await this.queue.ensure(op.id, op.kind);
        if (r !== 'present') this.log.info({ operationId: op.id, kind: op.kind, action: r }, 'recovered operation');
      }
    } catch (err) {
      this.log.warn({ err }, 'operation sweep failed');
    }
  }

  /**
   * A lease for an operation about to be recorded, when this replica runs operations and has room
   * for one more (and HYPERPLANE_RUN_ACCEPTED is on): the request's transaction records it running under the lease
   * (`OperationRepository.insert`), and after the commit {@link runHere} starts it, with no trip
   * through the queue. Undefined: record it pending and queue its job. Give back what was not used
   * with {@link unlease}.
   */
  leaseHere(kind: string): OperationLease | undefined {
    if (!this.started || !this.config.runAccepted || !this.handlers.has(kind)) return undefined;
    if (!ORCHESTRATING_KINDS.has(kind) && this.busy + this.reserved >= this.config.operationConcurrency) return undefined;
    this.reserved++;
    this.fitQueue();
    return { owner: this.owner, ms: LEASE_MS };
  }

  /**
   * Up to `n` leases of {@link leaseHere} at once, for operations recorded together (a batch of
   * creates): the lease and how many it covers (0 when this replica has no room).
   */
  leaseUpTo(kind: string, n: number): { lease?: OperationLease; count: number } {
    let lease: OperationLease | undefined;
    let count = 0;
    while (count < n) {
      const l = this.leaseHere(kind);
      if (!l) break;
      lease = l;
      count++;
    }
    return { lease, count };
  }

  /** Gives back `n` leases from {@link leaseHere} whose operations were not recorded (the request failed). */
  unlease(n = 1): void {
    this.reserved = Math.max(0, this.reserved - n);
    this.fitQueue();
  }

  /**
   * One count for HYPERPLANE_OPERATION_CONCURRENCY, whichever way operations start: the queue's
   * worker takes as many jobs at once as the slots that leases (reserved, or running under them)
   * leave, and at least one, so the queue never stalls (one over the count then, and for a moment one
   * more per job fetch under way as a slot frees: BullMQ fetches as a job ends); a lease
   * is given only while running operations, from jobs too, and leases leave a slot. A replica full
   * of leased work so fetches no jobs that would wait: another replica with room takes them.
   */
  private fitQueue(): void {
    if (!this.started) return;
    this.queue.setConcurrency(Math.max(1, this.config.operationConcurrency - this.reserved - this.busyLeased) + this.orchestratingJobs);
  }

  /**
   * Runs `op`, recorded running under a lease from {@link leaseHere}, to its final status (not
   * waited for). The caller tells the event streams that it started. `read`: what the kind's
   * prefetch would read, as the request's transaction committed it (then not read again).
   */
  runHere(op: OperationRow, read?: unknown): void {
    // Its lease's reservation becomes the slot it holds while it runs.
    this.reserved = Math.max(0, this.reserved - 1);
    const counted = !ORCHESTRATING_KINDS.has(op.kind);
    if (counted) {
      this.busy++;
      this.busyLeased++;
    }
    this.fitQueue();
    const registered = this.handlers.get(op.kind)!;
    this.leased.add(op.id);
    const prefetched = read !== undefined ? Promise.resolve(read) : registered.prefetch?.(op.id).catch(() => undefined);
    this.execute(op, registered.handler, prefetched, true)
      // Its end could not be recorded (the database gone): the lease runs out and the sweep takes it up.
      .catch((err: unknown) => this.log.error({ err, operationId: op.id }, 'recording the end of an operation failed'))
      .finally(() => {
        this.leased.delete(op.id);
        this.lost.delete(op.id);
        if (counted) {
          this.busy--;
          this.busyLeased--;
          this.fitQueue();
        }
      });
  }

  /** Keeps this replica's leases; one it lost (taken over after it ran out) is logged. */
  private async renewLeases(): Promise<void> {
    if (!this.leased.size) return;
    const ids = [...this.leased];
    try {
      const kept = new Set(await this.ops.renewLeases(this.owner, ids, LEASE_MS));
      for (const id of ids) {
        if (kept.has(id) || !this.leased.has(id) || !this.running.has(id)) continue;
        // Not renewed in time (the database slow or out of reach): another replica may run it now,
        // and records its end; this run's end is not recorded.
        this.lost.add(id);
        this.log.warn({ operationId: id }, 'lost the lease of an operation running here; another replica may have taken it up');
      }
    } catch (err) {
      this.log.warn({ err }, 'renewing operation leases failed');
    }
  }

  /** A job: its operation started and run here (it holds a slot meanwhile; orchestrating kinds a place of the queue's worker). */
  private async onJob(job: Job<OperationJobData>): Promise<void> {
    if (this.stopping) return; // fetched while shutting down: the operation stays pending, and a sweep queues it again
    const counted = !ORCHESTRATING_KINDS.has(job.name);
    if (counted) this.busy++;
    else this.orchestratingJobs++;
    this.fitQueue();
    try {
      await this.startJob(job);
    } finally {
      if (counted) this.busy--;
      else this.orchestratingJobs--;
      this.fitQueue();
    }
  }

  private async startJob(job: Job<OperationJobData>): Promise<void> {
    const id = job.data.operationId;
    // The common case in one statement: a live operation of a known kind starts. Anything else
    // (final already, cancelled while pending, no handler, run under a replica's lease) is read and settled below.
    const registered = this.handlers.get(job.name);
    const handler = registered?.handler;
    const prefetched = registered?.prefetch?.(id).catch(() => undefined);
    const op = handler && !this.running.has(id) ? await this.ops.markRunning(id) : undefined;
    if (!op || !handler) {
      const existing = await this.ops.get(id);
      if (!existing || isFinal(existing.status)) return;
      if (existing.cancel_requested && existing.status === 'pending') {
        const cancelled = await this.service.cancelBeforeStart(existing);
        if (cancelled) await this.service.publish(cancelled);
      } else if (!handler) {
        await this.finish(id, 'failed', { code: 'INTERNAL', message: `no handler for operation kind ${existing.kind}` });
      }
      return;
    }
    await this.execute(op, handler, prefetched);
  }

  /** Runs a started operation's handler and records how it ended; `published`: its start was told already. */
  private async execute(op: OperationRow, handler: OperationHandler, prefetched: Promise<unknown> | undefined, published = false): Promise<void> {
    const id = op.id;
    if (!published) void this.service.publish(op); // delivered here at once; the handler does not wait for Redis
    const ac = new AbortController();
    this.running.set(id, ac);
    if (op.cancel_requested) ac.abort();
    let result: OperationMetadata | undefined;
    const ctx: OperationContext = {
      signal: ac.signal,
      progress: async (phase, percent) => {
        const r = await this.ops.progress(id, phase, percent);
        if (r) void this.service.publish(r);
      },
      succeedWith: (metadata) => {
        result = metadata;
      },
    };
    const started = Date.now();
    try {
      await handler(op, ctx, await prefetched);
      await this.finish(id, 'succeeded', null, result);
      this.log.info({ operationId: id, requestId: op.request_id, kind: op.kind, ms: Date.now() - started }, 'operation succeeded');
    } catch (e) {
      if (e instanceof CancelledError || (ac.signal.aborted && !(e instanceof DomainError))) {
        await this.finish(id, 'cancelled', { code: 'CANCELLED', message: e instanceof Error ? e.message : 'cancelled' });
      } else {
        const error = toOperationError(e);
        if (error.code === 'INTERNAL') this.log.error({ err: e, operationId: id, requestId: op.request_id }, 'operation failed unexpectedly');
        await this.finish(id, 'failed', error);
        this.log.info({ operationId: id, requestId: op.request_id, kind: op.kind, error }, 'operation failed');
      }
    } finally {
      this.running.delete(id);
    }
  }

  private async finish(id: string, status: 'succeeded' | 'failed' | 'cancelled', error: OperationError | null, metadata?: OperationMetadata): Promise<void> {
    if (this.lost.has(id)) {
      this.log.warn({ operationId: id, status }, 'an operation whose lease was lost ended here; its end is left to the replica that took it up');
      return;
    }
    const r = await this.ops.finish(id, status, error, undefined, metadata);
    if (r) await this.service.publish(r);
  }
}

/** The error an operation records for a thrown value. */
export function toOperationError(e: unknown): OperationError {
  if (e instanceof DomainError) {
    const details = [
      ...e.fieldErrors.map((f) => ({ field: f.field, message: f.message })),
      ...e.reasons.map((r) => ({ reason: r.reason, message: r.message, count: r.count })),
    ];
    return details.length ? { code: e.code, message: e.message, details } : { code: e.code, message: e.message };
  }
  return { code: 'INTERNAL', message: e instanceof Error ? e.message : String(e) };
}
