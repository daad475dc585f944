import { Inject, Injectable } from '@nestjs/common';
import { OperationStatus } from '@hyperplane/domain';
import { DataSource } from 'typeorm';
import { Db, rows } from '../database/database';
import { PageRequest } from '../common/pagination';
import { Where } from '../database/where';
import { DATA_SOURCE } from '../common/tokens';

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
}

/** SQL for operations. Status changes are conditional on the current status, so a final operation never changes. */
@Injectable()
export class OperationRepository {
  constructor(@Inject(DATA_SOURCE) private readonly ds: DataSource) {}

  /** Records a new pending operation (in the transaction that creates its work). */
  async insert(tx: Db, op: NewOperation): Promise<OperationRow> {
    const found = await rows<OperationRow>(tx, 
      `INSERT INTO operations (id, project_id, kind, target_type, target_id, status, params, request_id)
       VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7) RETURNING *`,
      [op.id, op.projectId, op.kind, op.targetType, op.targetId, JSON.stringify(op.params ?? {}), op.requestId ?? ''],
    );
    return found[0]!;
  }

  /** Records many pending operations of one kind, one per target, in one statement. */
  async insertMany(tx: Db, base: Omit<NewOperation, 'id' | 'targetId'>, each: Array<{ id: string; targetId: string }>): Promise<OperationRow[]> {
    return rows<OperationRow>(tx,
      `INSERT INTO operations (id, project_id, kind, target_type, target_id, status, params, request_id)
       SELECT u.id, $3, $4, $5, u.target_id, 'pending', $6, $7
       FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS u(id, target_id, ord) ORDER BY u.ord RETURNING *`,
      [each.map((e) => e.id), each.map((e) => e.targetId), base.projectId, base.kind, base.targetType, JSON.stringify(base.params ?? {}), base.requestId ?? ''],
    );
  }

  /** An operation by id, optionally only within a project. */
  async get(id: string, projectId?: string | null): Promise<OperationRow | undefined> {
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

  /** pending|running → running; returns the row, or undefined if it is already final. */
  async markRunning(id: string): Promise<OperationRow | undefined> {
    const found = await rows<OperationRow>(this.ds, 
      `UPDATE operations SET status = 'running', started_at = COALESCE(started_at, now()), attempts = attempts + 1,
         version = version + 1, updated_at = now()
       WHERE id = $1 AND status IN ('pending', 'running') RETURNING *`,
      [id],
    );
    return found[0];
  }

  /** Records progress of a running operation. */
  async progress(id: string, phase: string, progress: number): Promise<OperationRow | undefined> {
    const found = await rows<OperationRow>(this.ds, 
      `UPDATE operations SET phase = $2, progress = $3, version = version + 1, updated_at = now()
       WHERE id = $1 AND status = 'running' RETURNING *`,
      [id, phase, Math.max(0, Math.min(100, Math.round(progress)))],
    );
    return found[0];
  }

  /**
   * Merges `patch` into a running operation's metadata (the `migration` object is merged key by
   * key), and sets phase and progress when given. Returns the row when it is still running.
   */
  async mergeMetadata(id: string, patch: OperationMetadata, phase?: string, progress?: number): Promise<OperationRow | undefined> {
    const found = await rows<OperationRow>(this.ds,
      `UPDATE operations SET
         metadata = (metadata || ($2::jsonb - 'migration')) || CASE WHEN $2::jsonb ? 'migration'
           THEN jsonb_build_object('migration', COALESCE(metadata -> 'migration', '{}'::jsonb) || ($2::jsonb -> 'migration')) ELSE '{}'::jsonb END,
         phase = COALESCE($3, phase), progress = COALESCE($4, progress), version = version + 1, updated_at = now()
       WHERE id = $1 AND status = 'running' RETURNING *`,
      [id, JSON.stringify(patch), phase ?? null, progress === undefined ? null : Math.max(0, Math.min(100, Math.round(progress)))],
    );
    return found[0];
  }

  /** Moves a live operation to a final status; no-op (undefined) if it is final already. */
  async finish(id: string, status: 'succeeded' | 'failed' | 'cancelled', error: OperationError | null, db: Db = this.ds): Promise<OperationRow | undefined> {
    const found = await rows<OperationRow>(db, 
      `UPDATE operations SET status = $2, error = $3, finished_at = now(), version = version + 1, updated_at = now(),
         progress = CASE WHEN $2 = 'succeeded' THEN 100 ELSE progress END,
         phase = CASE WHEN $2 = 'succeeded' THEN 'done' ELSE phase END
       WHERE id = $1 AND status IN ('pending', 'running') RETURNING *`,
      [id, status, error ? JSON.stringify(error) : null],
    );
    return found[0];
  }

  /** Flags a live operation for cancellation; returns the row (final ones unchanged). */
  async requestCancel(id: string): Promise<OperationRow | undefined> {
    const found = await rows<OperationRow>(this.ds, 
      `UPDATE operations SET cancel_requested = true, version = version + 1, updated_at = now()
       WHERE id = $1 AND status IN ('pending', 'running') RETURNING *`,
      [id],
    );
    return found[0];
  }

  /** Every operation not yet final (for recovery after a restart). */
  live(): Promise<OperationRow[]> {
    return rows(this.ds, `SELECT * FROM operations WHERE status IN ('pending', 'running') ORDER BY id`);
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
