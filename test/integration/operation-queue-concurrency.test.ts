/**
 * The operation queue's worker against the real Redis: a lower concurrency stops further fetches
 * while its jobs run on; a higher one is taken up at once, not when a running job ends (BullMQ's
 * main loop waits on its jobs, and OperationQueueRepository.setConcurrency wakes it).
 */
import { randomUUID } from 'node:crypto';
import pino from 'pino';
import type { Job } from 'bullmq';
import type { Config } from '../../apps/control-plane/src/config';
import { OperationJobData, OperationQueueRepository } from '../../apps/control-plane/src/operations/operation-queue.repository';
import { waitUntil } from '../helpers/control-plane';

const config = { redisUrl: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', redisPrefix: `hp-q-${randomUUID().slice(0, 8)}` } as Config;
jest.setTimeout(30_000);

let repo: OperationQueueRepository;
/** Ends each job still running (the worker's close waits for them). */
const release = new Map<string, () => void>();

afterAll(async () => {
  for (const r of release.values()) r();
  await repo?.onModuleDestroy();
});

it('takes up a raised concurrency while its only job still runs', async () => {
  repo = new OperationQueueRepository(config, pino({ level: 'silent' }));
  const started: string[] = [];
  repo.startWorker(async (job: Job<OperationJobData>) => {
    started.push(job.data.operationId);
    await new Promise<void>((r) => release.set(job.data.operationId, r));
  }, 1);
  await repo.enqueue('long', 'thing.do');
  await waitUntil(async () => started.includes('long'), 10_000, 'the first job started');
  await repo.enqueue('next', 'thing.do');
  await new Promise((r) => setTimeout(r, 500));
  expect(started).toEqual(['long']); // one at a time
  const t0 = Date.now();
  repo.setConcurrency(2);
  await waitUntil(async () => started.includes('next'), 10_000, 'the second job started');
  expect(Date.now() - t0).toBeLessThan(2_000); // at once, while the first still runs
  expect(release.has('long')).toBe(true); // still running
});
