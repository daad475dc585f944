import { Inject, Injectable } from '@nestjs/common';
import { OperationStatus } from '@hyperplane/domain';
import { DataSource } from 'typeorm';
import { Db, inOrder, outsideTransaction, rows, rowsByIdBatcher } from '../database/database';
import { PageRequest } from '../common/pagination';
import { Where } from '../database/where';
import { DATA_SOURCE } from '../common/tokens';
import { Batcher } from '../common/batcher';

/** The error a failed operation carries. */
export interface OperationError {
  code: string;
  message: string;
  details?: Array<{ field?: string; reason?: string; message: string; count?: number }>;
}

/** An operations row. */
export interface OperationRow {
  id: string;
  project_id: string | null;
  kind: string;
  target_type: string;
  target_id: string;
  status: OperationStatus;
  phase: string;
  progress: number;
  params: Record<string, unknown>;
  error: OperationError | null;
  cancel_requested: boolean;
  /** Kind-specific state shown on the operation (`migration`: progress and result). */
  metadata: OperationMetadata;
  request_id: string;
  attempts: number;
  version: number;
  created_at: Date;
  started_at: Date | null;
  finished_at: Date | null;
  updated_at: Date;
  /** The replica running it without a job (see {@link OperationLease}), until `lease_until`. */
  lease_owner: string | null;
  lease_until: Date | null;
}

/** A replica's claim to run an operation itself, without a queued job, for `ms` unless renewed. */
export interface OperationLease {
  owner: string;
  ms: number;
}

/** A migration's progress and outcome, as the operation shows it (`migration`). */
export interface MigrationMetadata {
  sourceNode?: string;
  targetNode?: string;
  mode?: 'live' | 'cold';
  storage?: 'copy' | 'shared';
  phase?: string;
  bytesRemaining?: number;
  bytesTransferred?: number;
  bytesTotal?: number;
  dirtyRateBytesPerSec?: number;
  expectedDowntimeMs?: number;
  cpuThrottlePercent?: number;
  totalTimeMs?: number;
  downtimeMs?: number;
  postcopy?: boolean;
  /** Where the time went: getting the destination ready, the source's part (disk and memory), resuming on the destination. */
  prepareMs?: number;
  sourceMs?: number;
  finishMs?: number;
}

/** The `metadata` column: what the handler and the nodes record while the operation runs. */
export interface OperationMetadata {
  migration?: MigrationMetadata;
  /** Internal: how far a handler got, for its re-run after a crash (not shown). */
  stage?: string;
  /** Internal: what a handler must remember across a crash (not shown). */
  saved?: Record<string, unknown>;
}

/** What a new operation is. */
export interface NewOperation {
  id: string;
  projectId: string | null;
  kind: string;
  targetType: string;
  targetId: string;
  params?: Record<string, unknown>;
  /** Id of the API request that asked for it (for logs). */
  requestId?: string;
  /** Phase and progress it starts with (one recorded with the operation rather than just after it). */
  phase?: string;
  progress?: number;
}

/** One status change of a live operation, as the runner makes them. */
type StatusChange =
  | { id: string; to: 'running' }
  | { id: string; to: 'progress'; phase: string; progress: number }
  | { id: string; to: 'succeeded' | 'failed' | 'cancelled'; error: OperationError | null; metadata?: OperationMetadata };

/**
 * `metadata` with `$n` (jsonb) merged in: top-level keys replaced, except `migration`, which is
 * merged key by key.
 */
const mergedMetadata = (metadata: string, patch: string) =>
  `(${metadata} || (${patch} - 'migration')) || CASE WHEN ${patch} ? 'migration'
     THEN jsonb_build_object('migration', COALESCE(${metadata} -> 'migration', '{}'::jsonb) || (${patch} -> 'migration')) ELSE '{}'::jsonb END`;

/**
 * SQL for operations. Status changes are conditional on the current status, so a final operation
 * never changes. The runner's reads by id and status changes are coalesced with those made at the
 * same moment into one statement each.
 */
@Injectable()
export class OperationRepository {
  private readonly byId = rowsByIdBatcher<OperationRow>(() => this.ds, 'operations');

  private readonly changes = new Batcher<StatusChange, OperationRow | undefined>(
    async (cs) => {
      // One statement for every kind of change: the new status (or the current one, for
      // progress), and phase/progress/error/times per the kind, each guarded by the current status.
      const found = await rows<OperationRow>(this.ds,
        `UPDATE operations o SET
           status = CASE WHEN u.kind = 'progress' THEN o.status ELSE u.kind END,
           started_at = CASE WHEN u.kind = 'running' THEN COALESCE(o.started_at, now()) ELSE o.started_at END,
           attempts = CASE WHEN u.kind = 'running' THEN o.attempts + 1 ELSE o.attempts END,
           finished_at = CASE WHEN u.kind IN ('succeeded', 'failed', 'cancelled') THEN now() ELSE o.finished_at END,
           error = CASE WHEN u.kind IN ('succeeded', 'failed', 'cancelled') THEN u.error ELSE o.error END,
           phase = CASE WHEN u.kind = 'progress' THEN u.phase WHEN u.kind = 'succeeded' THEN 'done' ELSE o.phase END,
           progress = CASE WHEN u.kind = 'progress' THEN u.progress WHEN u.kind = 'succeeded' THEN 100 ELSE o.progress END,
           metadata = CASE WHEN u.meta IS NULL THEN o.metadata ELSE ${mergedMetadata('o.metadata', 'u.meta')} END,
           -- a start by a job takes over from a replica whose lease ran out
           lease_owner = CASE WHEN u.kind = 'running' THEN NULL ELSE o.lease_owner END,
           lease_until = CASE WHEN u.kind = 'running' THEN NULL ELSE o.lease_until END,
           version = o.version + 1, updated_at = now()
         FROM (SELECT id FROM operations WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE) l,
              unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::jsonb[], $6::jsonb[]) AS u(id, kind, phase, progress, error, meta)
         WHERE o.id = l.id AND o.id = u.id
           AND (CASE WHEN u.kind = 'progress' THEN o.status = 'running'
                     -- a pending operation whose cancel was asked for does not start (the runner cancels it)
                     -- nor does one that a live replica runs under its lease
                     WHEN u.kind = 'running' THEN (o.status = 'running' AND (o.lease_until IS NULL OR o.lease_until < now()))
                                                 OR (o.status = 'pending' AND NOT o.cancel_requested)
                     ELSE o.status IN ('pending', 'running') END)
         RETURNING o.*`,
        [
          cs.map((c) => c.id),
          cs.map((c) => c.to),
          cs.map((c) => (c.to === 'progress' ? c.phase : null)),
          cs.map((c) => (c.to === 'progress' ? c.progress : null)),
          cs.map((c) => (c.to !== 'running' && c.to !== 'progress' && c.error ? JSON.stringify(c.error) : null)),
          cs.map((c) => (c.to !== 'running' && c.to !== 'progress' && c.metadata ? JSON.stringify(c.metadata) : null)),
        ],
        'operations.changes',
      );
      return inOrder(found, cs.map((c) => c.id));
    },
    { key: (c) => c.id },
  );

  constructor(@Inject(DATA_SOURCE) private readonly ds: DataSource) {}

  /**
   * Records a new operation (in the transaction that creates its work): pending, for a job to
   * start; or, with a `lease`, running already, started by the lease's owner (its first attempt),
   * the lease counted from this statement (not from the transaction's start, as now() would).
   */
  async insert(tx: Db, op: NewOperation, lease?: OperationLease): Promise<OperationRow> {
    const found = await rows<OperationRow>(tx, 
      `INSERT INTO operations (id, project_id, kind, target_type, target_id, status, params, request_id, started_at, attempts, lease_owner, lease_until, phase, progress)
       VALUES ($1, $2, $3, $4, $5, CASE WHEN $8::text IS NULL THEN 'pending' ELSE 'running' END, $6, $7,
               CASE WHEN $8::text IS NULL THEN NULL ELSE now() END, CASE WHEN $8::text IS NULL THEN 0 ELSE 1 END,
               $8, CASE WHEN $8::text IS NULL THEN NULL ELSE clock_timestamp() + make_interval(secs => $9::int / 1000.0) END, $10, $11) RETURNING *`,
      [op.id, op.projectId, op.kind, op.targetType, op.targetId, JSON.stringify(op.params ?? {}), op.requestId ?? '', lease?.owner ?? null, lease?.ms ?? 0, op.phase ?? '', op.progress ?? 0],
    );
    return found[0]!;
  }

  /**
   * Extends `owner`'s leases on the running operations `ids` by `ms` from now; returns the ids
   * whose lease it still held.
   */
  async renewLeases(owner: string, ids: string[], ms: number): Promise<string[]> {
    const found = await rows<{ id: string }>(this.ds,
      `UPDATE operations SET lease_until = now() + make_interval(secs => $3::int / 1000.0)
       WHERE id = ANY($1::uuid[]) AND lease_owner = $2 AND status = 'running' RETURNING id`,
      [ids, owner, ms],
      'operations.renewLeases',
    );
    return found.map((r) => r.id);
  }

  /**
   * Records any operations in one statement, in order: pending, or the first `leased` of them
   * running already under `lease`, as {@link insert} records one.
   */
  async insertRows(tx: Db, ops: NewOperation[], lease?: OperationLease, leased = 0): Promise<OperationRow[]> {
    return rows<OperationRow>(tx,
      `INSERT INTO operations (id, project_id, kind, target_type, target_id, status, params, request_id, started_at, attempts, lease_owner, lease_until)
       SELECT u.id, u.project_id, u.kind, u.target_type, u.target_id, CASE WHEN u.ord <= $9 THEN 'running' ELSE 'pending' END, u.params, u.request_id,
              CASE WHEN u.ord <= $9 THEN now() END, CASE WHEN u.ord <= $9 THEN 1 ELSE 0 END, CASE WHEN u.ord <= $9 THEN $8::text END,
              CASE WHEN u.ord <= $9 THEN clock_timestamp() + make_interval(secs => $10::int / 1000.0) END
       FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::jsonb[], $7::text[])
         WITH ORDINALITY AS u(id, project_id, kind, target_type, target_id, params, request_id, ord)
       ORDER BY u.ord RETURNING *`,
      [ops.map((o) => o.id), ops.map((o) => o.projectId), ops.map((o) => o.kind), ops.map((o) => o.targetType), ops.map((o) => o.targetId), ops.map((o) => JSON.stringify(o.params ?? {})), ops.map((o) => o.requestId ?? ''), lease?.owner ?? null, lease ? leased : 0, lease?.ms ?? 0],
    );
  }

  /** An operation by id, optionally only within a project. */
  async get(id: string, projectId?: string | null): Promise<OperationRow | undefined> {
    if (projectId === undefined) return this.byId.call(id);
    const found = await rows<OperationRow>(this.ds, 
      `SELECT * FROM operations WHERE id = $1 AND ($2::uuid IS NULL OR project_id = $2)`,
      [id, projectId ?? null],
    );
    return found[0];
  }

  /** A keyset page of a project's operations, newest last. */
  list(projectId: string | null, page: PageRequest, f: { status?: string; targetId?: string }): Promise<OperationRow[]> {
    const w = new Where().add('project_id = ?', projectId).add('id > ?', page.afterId).add('status = ?', f.status).add('target_id = ?', f.targetId);
    return rows(this.ds, `SELECT * FROM operations ${w} ORDER BY id LIMIT ${w.bind(page.pageSize + 1)}`, w.params);
  }

  /**
   * pending|running → running; returns the row, or undefined if it is already final or is pending
   * with a cancel requested (it must not start).
   */
  async markRunning(id: string): Promise<OperationRow | undefined> {
    return this.changes.call({ id, to: 'running' });
  }

  /** Records progress of a running operation. */
  async progress(id: string, phase: string, progress: number): Promise<OperationRow | undefined> {
    return this.changes.call({ id, to: 'progress', phase, progress: Math.max(0, Math.min(100, Math.round(progress))) });
  }

  /**
   * Merges `patch` into a running operation's metadata (the `migration` object is merged key by
   * key), and sets phase and progress when given. Returns the row when it is still running.
   */
  async mergeMetadata(id: string, patch: OperationMetadata, phase?: string, progress?: number): Promise<OperationRow | undefined> {
    const found = await rows<OperationRow>(this.ds,
      `UPDATE operations SET
         metadata = ${mergedMetadata('metadata', '$2::jsonb')},
         phase = COALESCE($3, phase), progress = COALESCE($4, progress), version = version + 1, updated_at = now()
       WHERE id = $1 AND status = 'running' RETURNING *`,
      [id, JSON.stringify(patch), phase ?? null, progress === undefined ? null : Math.max(0, Math.min(100, Math.round(progress)))],
      'operations.mergeMetadata',
    );
    return found[0];
  }

  /**
   * Moves a live operation to a final status, with `metadata` merged in (as {@link mergeMetadata}
   * does); no-op (undefined) if it is final already.
   */
  async finish(id: string, status: 'succeeded' | 'failed' | 'cancelled', error: OperationError | null, db: Db = this.ds, metadata?: OperationMetadata): Promise<OperationRow | undefined> {
    if (outsideTransaction(db, this.ds)) return this.changes.call({ id, to: status, error, metadata });
    if (metadata) throw new Error('finish: metadata is merged only outside a transaction');
    const found = await rows<OperationRow>(db, 
      `UPDATE operations SET status = $2, error = $3, finished_at = now(), version = version + 1, updated_at = now(),
         progress = CASE WHEN $2 = 'succeeded' THEN 100 ELSE progress END,
         phase = CASE WHEN $2 = 'succeeded' THEN 'done' ELSE phase END
       WHERE id = $1 AND status IN ('pending', 'running') RETURNING *`,
      [id, status, error ? JSON.stringify(error) : null],
    );
    return found[0];
  }

  /**
   * Flags a live operation for cancellation (with `status`, only while it still has that status);
   * returns the row, or undefined when nothing was flagged (final ones are unchanged).
   */
  async requestCancel(id: string, status?: 'pending' | 'running'): Promise<OperationRow | undefined> {
    const found = await rows<OperationRow>(this.ds, 
      `UPDATE operations SET cancel_requested = true, version = version + 1, updated_at = now()
       WHERE id = $1 AND status IN ('pending', 'running') AND ($2::text IS NULL OR status = $2) RETURNING *`,
      [id, status ?? null],
    );
    return found[0];
  }

  /**
   * Claims the undo of a pending operation whose cancel was asked for, for `leaseMs`, under
   * `token`: returns the row, or undefined when it is not such an operation or another claim is
   * younger than that (an undo under way elsewhere; one whose replica died is taken over once
   * its claim is old).
   */
  async claimUndo(id: string, token: string, leaseMs: number): Promise<OperationRow | undefined> {
    const found = await rows<OperationRow>(this.ds,
      `UPDATE operations SET metadata = metadata || jsonb_build_object('undoClaim', jsonb_build_object('token', $2::text, 'at', floor(extract(epoch FROM now()) * 1000)::bigint))
       WHERE id = $1 AND status = 'pending' AND cancel_requested
         AND (NOT metadata ? 'undoClaim' OR (metadata #>> '{undoClaim,at}')::bigint < floor(extract(epoch FROM now()) * 1000)::bigint - $3)
       RETURNING *`,
      [id, token, leaseMs],
    );
    return found[0];
  }

  /** Gives up the claim `token` of {@link claimUndo} after the undo failed, saying so in the operation's phase. */
  async releaseUndo(id: string, token: string, phase: string): Promise<OperationRow | undefined> {
    const found = await rows<OperationRow>(this.ds,
      `UPDATE operations SET metadata = metadata - 'undoClaim', phase = $3, version = version + 1, updated_at = now()
       WHERE id = $1 AND status = 'pending' AND metadata #>> '{undoClaim,token}' = $2 RETURNING *`,
      [id, token, phase],
    );
    return found[0];
  }

  /**
   * Cancels a pending operation undone under the claim `token` (undefined when the claim is not
   * its any more: the undo that took it over ends it). A phase an earlier failed undo left goes.
   */
  async cancelUndone(id: string, token: string, error: OperationError): Promise<OperationRow | undefined> {
    const found = await rows<OperationRow>(this.ds,
      `UPDATE operations SET status = 'cancelled', error = $3, finished_at = now(), metadata = metadata - 'undoClaim',
         phase = CASE WHEN phase LIKE 'cancelling:%' THEN '' ELSE phase END, version = version + 1, updated_at = now()
       WHERE id = $1 AND status = 'pending' AND metadata #>> '{undoClaim,token}' = $2 RETURNING *`,
      [id, token, JSON.stringify(error)],
    );
    return found[0];
  }

  /** Every operation not yet final (for recovery after a restart). */
  live(): Promise<Array<OperationRow & { leased: boolean }>> {
    return rows(this.ds, `SELECT *, lease_until IS NOT NULL AND lease_until >= now() AS leased FROM operations WHERE status IN ('pending', 'running') ORDER BY id`);
  }

  /** The live operation on a target, if any (one at a time per partition). */
  async liveForTarget(tx: Db, targetId: string): Promise<OperationRow | undefined> {
    const found = await rows<OperationRow>(tx, 
      `SELECT * FROM operations WHERE target_id = $1 AND status IN ('pending', 'running') ORDER BY id LIMIT 1`,
      [targetId],
    );
    return found[0];
  }
}
