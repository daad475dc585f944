import { Inject, Injectable } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { Db } from '../database/database';
import { IdempotencyRepository } from './idempotency.repository';
import { DATA_SOURCE } from './tokens';

/** Options every mutating service call accepts from either transport. */
export interface MutationOptions {
  /** `Idempotency-Key` header (REST) or `request_id` (gRPC). */
  idempotencyKey?: string;
  /** Parsed `If-Match` (REST) or `etag` (gRPC); -1 when it could not be parsed. */
  ifMatch?: number;
  /** The request's id (`X-Request-Id`), recorded on the operations it creates. */
  requestId?: string;
}

/**
 * Runs a unit of work in one transaction, with the idempotency key claimed in it. `after` runs
 * once the transaction has committed and only for fresh (non-replayed) results: that is where
 * jobs are enqueued and events published.
 */
@Injectable()
export class TransactionRunner {
  constructor(
    @Inject(DATA_SOURCE) private readonly ds: DataSource,
    private readonly idempotency: IdempotencyRepository,
  ) {}

  /** Runs `work` once per idempotency key; replays return the first result. */
  async run<T>(
    action: { scope: string; name: string; input: unknown; key?: string },
    work: (tx: Db) => Promise<T>,
    after?: (result: T) => Promise<void>,
  ): Promise<T> {
    const key = action.key;
    let replayed = false;
    const result = await this.ds.transaction(async (em) => {
      if (key) {
        const hash = IdempotencyRepository.fingerprint(action.name, action.input);
        const previous = await this.idempotency.claim<T>(em, action.scope, key, hash);
        if (previous !== undefined) {
          replayed = true;
          return previous;
        }
      }
      const out = await work(em);
      if (key) await this.idempotency.complete(em, action.scope, key, out);
      return out;
    });
    if (!replayed && after) await after(result);
    return result;
  }
}
