import { randomUUID } from 'node:crypto';
import { Inject, Injectable } from '@nestjs/common';
import { Logger } from 'pino';
import { LOGGER } from '../common/tokens';
import { CancelSubject, DomainError, FailedPreconditionError, NotFoundError, OperationStatus, Principal, UUID_RE, ValidationError, cancelRefusal, isFinal, requireRole, OPERATION_STATUSES } from '@hyperplane/domain';
import { Page, parsePage, toPage } from '../common/pagination';
import { EventBus } from '../events/event-bus';
import { OperationQueueRepository } from './operation-queue.repository';
import { MigrationMetadata, OperationError, OperationRepository, OperationRow } from './operation.repository';

/** An operation as both APIs show it (API.md, Operations). */
export interface OperationView {
  id: string;
  kind: string;
  target: { type: string; id: string };
  status: string;
  phase: string;
  progress: number;
  error: OperationError | null;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  projectId: string | null;
  /** Whether a cancel request would take effect now (Incus's `may_cancel`; see cancelRefusal). */
  mayCancel: boolean;
  /** partition.migrate: where it goes, how far it got, how it ended. */
  migration?: MigrationMetadata;
}

/** What decides whether the operation in `r` can be cancelled now. */
export const cancelSubjectOf = (r: Pick<OperationRow, 'kind' | 'status' | 'params' | 'metadata'>): CancelSubject => ({ kind: r.kind, status: r.status, params: r.params, migration: r.metadata?.migration });

/** Why the operation in `r` cannot be cancelled now, or undefined. */
const refusalOf = (r: OperationRow) => cancelRefusal(cancelSubjectOf(r));

/** What a request refused for the operation in flight on its target can do about it. */
export function inProgressHint(live: CancelSubject): string {
  return cancelRefusal(live) ? 'wait for it (it cannot be cancelled now)' : 'wait for it or cancel it';
}

/** Maps an operation row to its view. */
export function operationView(r: OperationRow): OperationView {
  return {
    id: r.id,
    kind: r.kind,
    target: { type: r.target_type, id: r.target_id },
    status: r.status,
    phase: r.phase,
    progress: r.progress,
    error: r.error,
    createdAt: r.created_at.toISOString(),
    startedAt: r.started_at ? r.started_at.toISOString() : null,
    finishedAt: r.finished_at ? r.finished_at.toISOString() : null,
    projectId: r.project_id,
    mayCancel: refusalOf(r) === undefined,
    ...(r.metadata?.migration ? { migration: r.metadata.migration } : {}),
  };
}

/**
 * How long a claim on the undo of a cancelled pending operation holds off other undos of it: more
 * than an undo takes (a migration's asks the destination, with a 30 s timeout).
 */
export const UNDO_LEASE_MS = 120_000;

/** Longest wait a client may ask for. */
export const MAX_WAIT_SECONDS = 300;

/** Reading, waiting on and cancelling operations. */
@Injectable()
export class OperationsService {
  /** Per kind: what undoes the records of a request whose operation was cancelled before it started. */
  private readonly undoers = new Map<string, (op: OperationRow) => Promise<void>>();

  constructor(
    private readonly ops: OperationRepository,
    private readonly queue: OperationQueueRepository,
    private readonly events: EventBus,
    @Inject(LOGGER) private readonly log: Logger,
  ) {}

  /**
   * Registers what undoes the records a request of `kind` made (a partition marked migrating, a
   * snapshot being created) when its operation is cancelled before any handler ran.
   */
  onCancelledBeforeStart(kind: string, undo: (op: OperationRow) => Promise<void>): void {
    this.undoers.set(kind, undo);
  }

  /**
   * Cancels a pending operation whose cancel was asked for: its kind's undo first, then the
   * cancel. A crash or a failed undo in between leaves it pending with its cancel asked for: such
   * an operation never starts (see OperationRepository.markRunning), and its job (the sweep
   * re-queues it) or the next cancel request brings it back here. One undo at a time per
   * operation, cluster-wide ({@link UNDO_LEASE_MS}): an undo that ran late must not act on what
   * came after the cancel (a new migration of the partition). Returns the cancelled row, or
   * undefined when it was not cancelled here (not pending with its cancel asked for, an undo under
   * way elsewhere, or the undo failed: logged, and said in the operation's phase).
   */
  async cancelBeforeStart(op: OperationRow): Promise<OperationRow | undefined> {
    if (op.status !== 'pending' || !op.cancel_requested) return undefined;
    const token = randomUUID();
    const claimed = await this.ops.claimUndo(op.id, token, UNDO_LEASE_MS);
    if (!claimed) return undefined;
    try {
      await this.undoers.get(op.kind)?.(claimed);
    } catch (err) {
      this.log.error({ err, operationId: op.id, kind: op.kind }, 'undoing an operation cancelled before it started failed; it stays pending with its cancel asked for, and is undone again');
      const why = err instanceof DomainError ? err.message : 'an internal error: see the control plane log';
      const released = await this.ops.releaseUndo(op.id, token, `cancelling: the undo failed (${why}); it is tried again`.slice(0, 500)).catch(() => undefined);
      if (released) await this.publish(released);
      return undefined;
    }
    return this.ops.cancelUndone(op.id, token, { code: 'CANCELLED', message: 'cancelled before it started' });
  }

  /** Publishes an operation change to every event stream. */
  async publish(r: OperationRow): Promise<void> {
    await this.publishView(operationView(r));
  }

  /** Publishes an operation view to every event stream. */
  async publishView(v: OperationView): Promise<void> {
    await this.events.publish({ type: 'operation.updated', resourceType: 'operation', resourceId: v.id, projectId: v.projectId, data: v });
  }

  /** Gets an operation in the caller's project. */
  async get(principal: Principal, projectId: string | null, id: string): Promise<OperationView> {
    return operationView(await this.find(principal, projectId, id));
  }

  /** Lists operations in the caller's project. */
  async list(principal: Principal, projectId: string | null, q: { pageSize?: unknown; pageToken?: unknown; status?: string; targetId?: string }): Promise<Page<OperationView>> {
    requireRole(principal, 'viewer', 'list operations');
    const page = parsePage(q.pageSize, q.pageToken);
    if (q.status && !(OPERATION_STATUSES as readonly string[]).includes(q.status)) {
      throw ValidationError.field('status', `must be one of ${OPERATION_STATUSES.join(', ')}`);
    }
    if (q.targetId && !UUID_RE.test(q.targetId)) throw ValidationError.field('targetId', 'must be a UUID');
    const rows = await this.ops.list(projectId, page, { status: q.status || undefined, targetId: q.targetId || undefined });
    return toPage(rows, page, operationView);
  }

  /** Waits until the operation is final or `timeoutSeconds` pass; returns it either way. */
  async wait(principal: Principal, projectId: string | null, id: string, timeoutSeconds: unknown, signal?: AbortSignal): Promise<OperationView> {
    let seconds = 30;
    if (timeoutSeconds !== undefined && timeoutSeconds !== '' && timeoutSeconds !== 0) {
      const n = Number(timeoutSeconds);
      if (!Number.isFinite(n) || n < 0 || n > MAX_WAIT_SECONDS) throw ValidationError.field('timeoutSeconds', `must be a number between 0 and ${MAX_WAIT_SECONDS}`);
      seconds = n;
    }
    // Subscribed before the read: an end that comes after it is heard, one before it is read (one
    // read, not a second look once subscribed). Events are notifications only: looked at again now and then.
    /** The final view, when an event brought it (no read needed then). */
    let final: OperationView | undefined;
    let wake: () => void = () => undefined;
    const unsubscribe = this.events.subscribeTo(id, (e) => {
      if (e.resourceType !== 'operation' || !isFinal((e.data as OperationView).status as OperationStatus)) return;
      final = e.data as OperationView;
      wake();
    });
    let timer: NodeJS.Timeout | undefined;
    let poll: NodeJS.Timeout | undefined;
    let row: OperationRow;
    try {
      row = await this.find(principal, projectId, id);
      if (final || isFinal(row.status) || seconds === 0) return final ?? operationView(row);
      await new Promise<void>((done) => {
        wake = () => done();
        poll = setInterval(() => void this.ops.get(id).then((r) => {
          if (r && !isFinal(r.status)) return;
          if (r) final = operationView(r);
          wake();
        }, () => undefined), 2000);
        timer = setTimeout(wake, seconds * 1000);
        signal?.addEventListener('abort', wake);
        if (signal?.aborted) wake();
      });
    } finally {
      signal?.removeEventListener('abort', wake);
      unsubscribe();
      clearTimeout(timer);
      clearInterval(poll);
    }
    return final ?? operationView((await this.ops.get(id)) ?? row);
  }

  /**
   * Requests cancellation: a pending operation is cancelled at once (its request's records
   * undone), a running one at its next step if its kind can stop halfway (see cancelRefusal);
   * any other is refused with the reason, and nothing changes.
   */
  async cancel(principal: Principal, projectId: string | null, id: string): Promise<OperationView> {
    requireRole(principal, 'operator', 'cancel operations');
    let row = await this.find(principal, projectId, id);
    let updated: OperationRow | undefined;
    // Judged on the row read, recorded only if its status is still the one judged (it may start or
    // end meanwhile: then judged again on the new row).
    for (let attempt = 0; !updated; attempt++) {
      const refusal = refusalOf(row);
      if (refusal) throw new FailedPreconditionError(`cannot cancel operation ${id}: ${refusal}`);
      updated = await this.ops.requestCancel(id, row.status as 'pending' | 'running'); // live: a final one was refused above
      if (!updated) {
        const now = await this.ops.get(id);
        if (!now) throw new NotFoundError('operation', id);
        if (attempt >= 2) throw new FailedPreconditionError(`cannot cancel operation ${id}: its status keeps changing (now ${now.status}); try again`);
        row = now;
      }
    }
    if (updated.status === 'pending') {
      await this.queue.removeIfWaiting(id);
      updated = (await this.cancelBeforeStart(updated)) ?? updated;
    }
    await this.publish(updated);
    await this.events.publish({ type: 'operation.cancel-requested', resourceType: 'operation', resourceId: id, projectId: row.project_id, data: operationView(updated) });
    return operationView(updated);
  }

  private async find(principal: Principal, projectId: string | null, id: string): Promise<OperationRow> {
    requireRole(principal, 'viewer', 'read operations');
    if (!UUID_RE.test(id)) throw new NotFoundError('operation', id);
    const row = await this.ops.get(id, projectId);
    if (!row) throw new NotFoundError('operation', id);
    return row;
  }
}
