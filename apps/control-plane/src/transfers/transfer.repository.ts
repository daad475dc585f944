import { Inject, Injectable } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { rows } from '../database/database';
import { DATA_SOURCE } from '../common/tokens';

/** Which way the bytes go: `to-node` (FetchFile: the control plane serves `path`), `from-node` (SendFile: it writes `path`). */
export type TransferDirection = 'to-node' | 'from-node';

/** issued → streaming → done | failed; cancelled by the operation that asked for it. */
export type TransferState = 'issued' | 'streaming' | 'done' | 'failed' | 'cancelled';

/** A transfers row. */
export interface TransferRow {
  id: string;
  token_hash: string;
  direction: TransferDirection;
  node_id: string;
  path: string;
  max_bytes: string | number | null;
  state: TransferState;
  bytes_done: string | number;
  size_bytes: string | number | null;
  digest: string | null;
  error: string | null;
  expires_at: Date;
  created_at: Date;
  updated_at: Date;
}

/** SQL for transfers. State changes are conditional on the current state, so a final transfer never changes. */
@Injectable()
export class TransferRepository {
  constructor(@Inject(DATA_SOURCE) private readonly ds: DataSource) {}

  /** Records an issued transfer. */
  async insert(t: { id: string; tokenHash: string; direction: TransferDirection; nodeId: string; path: string; maxBytes: number | null; sizeBytes: number | null; ttlMs: number }): Promise<TransferRow> {
    return (await rows<TransferRow>(this.ds,
      `INSERT INTO transfers (id, token_hash, direction, node_id, path, max_bytes, size_bytes, expires_at)
       VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8::float / 1000)) RETURNING *`,
      [t.id, t.tokenHash, t.direction, t.nodeId, t.path, t.maxBytes, t.sizeBytes, t.ttlMs],
    ))[0]!;
  }

  /** Sets the path of a transfer recorded without one, and lets it be claimed from now for `ttlMs`. */
  async setPath(id: string, path: string, ttlMs: number): Promise<void> {
    await this.ds.query(`UPDATE transfers SET path = $2, expires_at = now() + make_interval(secs => $3::float / 1000), updated_at = now() WHERE id = $1 AND state = 'issued'`, [id, path, ttlMs]);
  }

  /** Records the size the sender announced. */
  async setSize(id: string, bytes: number): Promise<void> {
    await this.ds.query(`UPDATE transfers SET size_bytes = $2 WHERE id = $1`, [id, bytes]);
  }

  /** A transfer by id. */
  async get(id: string): Promise<TransferRow | undefined> {
    return (await rows<TransferRow>(this.ds, `SELECT * FROM transfers WHERE id = $1`, [id]))[0];
  }

  /** issued → streaming, once, before it expires; undefined when someone else claimed it (or it expired, or ended). */
  async claim(id: string): Promise<TransferRow | undefined> {
    return (await rows<TransferRow>(this.ds,
      `UPDATE transfers SET state = 'streaming', updated_at = now() WHERE id = $1 AND state = 'issued' AND expires_at > now() RETURNING *`,
      [id],
    ))[0];
  }

  /** Records bytes moved so far; returns the state (a cancelled transfer says so). */
  async progress(id: string, bytes: number): Promise<TransferState | undefined> {
    return (await rows<{ state: TransferState }>(this.ds,
      `UPDATE transfers SET bytes_done = CASE WHEN state = 'streaming' THEN $2 ELSE bytes_done END, updated_at = CASE WHEN state = 'streaming' THEN now() ELSE updated_at END
       WHERE id = $1 RETURNING state`,
      [id, bytes],
    ))[0]?.state;
  }

  /** Ends a live transfer (issued or streaming) in `state`; undefined when it had ended already. */
  async finish(id: string, state: 'done' | 'failed' | 'cancelled', f: { bytes?: number; sizeBytes?: number; digest?: string; error?: string } = {}): Promise<TransferRow | undefined> {
    return (await rows<TransferRow>(this.ds,
      `UPDATE transfers SET state = $2, bytes_done = COALESCE($3, bytes_done), size_bytes = COALESCE($4, size_bytes), digest = COALESCE($5, digest),
         error = $6, updated_at = now()
       WHERE id = $1 AND state IN ('issued', 'streaming') RETURNING *`,
      [id, state, f.bytes ?? null, f.sizeBytes ?? null, f.digest ?? null, f.error ?? null],
    ))[0];
  }

  /** Ids of transfers still live (issued and not expired, or streaming) among `ids`. */
  async live(ids: string[]): Promise<Set<string>> {
    if (ids.length === 0) return new Set();
    const found = await rows<{ id: string }>(this.ds,
      `SELECT id FROM transfers WHERE id = ANY($1::uuid[]) AND (state = 'streaming' OR (state = 'issued' AND expires_at > now()))`,
      [ids],
    );
    return new Set(found.map((r) => r.id));
  }

  /**
   * Fails transfers nobody has moved a byte of for `abandonedMs` (their replica died mid-stream),
   * and forgets final ones older than `olderThanMs`.
   */
  async prune(olderThanMs: number, abandonedMs: number): Promise<void> {
    await this.ds.query(
      `UPDATE transfers SET state = 'failed', error = 'abandoned: no progress recorded', updated_at = now()
       WHERE state IN ('issued', 'streaming') AND updated_at < now() - make_interval(secs => $1::float / 1000) AND expires_at < now()`,
      [abandonedMs],
    );
    await this.ds.query(`DELETE FROM transfers WHERE state IN ('done', 'failed', 'cancelled') AND updated_at < now() - make_interval(secs => $1::float / 1000)`, [olderThanMs]);
  }
}
