import { Inject, Injectable } from '@nestjs/common';
import { Redis } from 'ioredis';
import { DataSource } from 'typeorm';
import { DATA_SOURCE, REDIS } from '../common/tokens';

/** Result of a readiness check. */
export interface Readiness {
  status: 'ok' | 'unavailable';
  checks: Record<string, { status: 'ok' | 'down'; error?: string; ms: number }>;
}

async function probe(fn: () => Promise<unknown>, timeoutMs: number): Promise<{ status: 'ok' | 'down'; error?: string; ms: number }> {
  const t0 = Date.now();
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([fn(), new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`no answer in ${timeoutMs} ms`)), timeoutMs); })]);
    return { status: 'ok', ms: Date.now() - t0 };
  } catch (e) {
    return { status: 'down', error: (e as Error).message, ms: Date.now() - t0 };
  } finally {
    clearTimeout(timer);
  }
}

/** Readiness: the dependencies the control plane cannot work without. Shared by /readyz and gRPC health. */
@Injectable()
export class HealthService {
  constructor(
    @Inject(DATA_SOURCE) private readonly ds: DataSource,
    @Inject(REDIS) private readonly redis: Redis,
  ) {}

  /** Probes PostgreSQL and Redis (2 s each). */
  async check(): Promise<Readiness> {
    const [postgres, redis] = await Promise.all([probe(() => this.ds.query('SELECT 1'), 2000), probe(() => this.redis.ping(), 2000)]);
    return { status: postgres.status === 'ok' && redis.status === 'ok' ? 'ok' : 'unavailable', checks: { postgres, redis } };
  }
}
