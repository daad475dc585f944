import { createHash } from 'node:crypto';
import { Inject, Injectable } from '@nestjs/common';
import { ValidationError } from '@hyperplane/domain';
import { DataSource } from 'typeorm';
import { Db, affected, rows } from '../database/database';
import { DATA_SOURCE } from './tokens';

/** How long a key is remembered. */
const RETENTION_HOURS = 24;

/**
 * Idempotency keys (API.md, Safety). A key is claimed inside the same transaction that does the
 * work, so a concurrent replay blocks on the row until the first commits and then reads its
 * response: the work happens once. If the work fails, the transaction rolls back and the key is
 * free again.
 */
@Injectable()
export class IdempotencyRepository {
  constructor(@Inject(DATA_SOURCE) private readonly ds: DataSource) {}

  /** Fingerprint of what the request asked for; a key replayed with another request is refused. */
  static fingerprint(action: string, input: unknown): string {
    return createHash('sha256').update(action).update('\0').update(JSON.stringify(input ?? null)).digest('hex');
  }

  /**
   * Claims `key` in `scope` within the transaction `tx`. Returns the stored response when the key
   * was already used for the same request; throws when it was used for another one.
   */
  async claim<T>(tx: Db, scope: string, key: string, hash: string): Promise<T | undefined> {
    if (key.length > 255) throw ValidationError.field('Idempotency-Key', 'must be at most 255 characters');
    const inserted = await rows<unknown>(tx, 
      `INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING key`,
      [scope, key, hash],
    );
    if (inserted.length > 0) return undefined;
    const found = await rows<{ request_hash: string; response: T | null }>(tx, 
      `SELECT request_hash, response FROM idempotency_keys WHERE scope = $1 AND key = $2`,
      [scope, key],
    );
    const row = found[0];
    if (!row || row.response === null) {
      // Only possible if the first request's transaction is still open in this same transaction.
      throw ValidationError.field('Idempotency-Key', `key '${key}' is in use by a request that has not finished`);
    }
    if (row.request_hash !== hash) {
      throw ValidationError.field('Idempotency-Key', `key '${key}' was already used with a different request`);
    }
    return row.response;
  }

  /** Stores the response for a claimed key, in the same transaction as the work. */
  async complete(tx: Db, scope: string, key: string, response: unknown): Promise<void> {
    await tx.query(`UPDATE idempotency_keys SET response = $3 WHERE scope = $1 AND key = $2`, [scope, key, JSON.stringify(response)]);
  }

  /** Forgets keys older than the retention period. */
  async prune(): Promise<number> {
    return affected(this.ds, `DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)`, [RETENTION_HOURS]);
  }
}
