import pino from 'pino';
import { Job } from 'bullmq';
import { EventBus } from '../events/event-bus';
import { Config } from '../config';
import { OperationRunner } from './operation-runner';
import { OperationQueueRepository } from './operation-queue.repository';
import { OperationRepository, OperationRow } from './operation.repository';
import { OperationsService } from './operations.service';

/** A pending operation of `kind`, as markRunning returns it once started. */
function running(id: string, kind: string): OperationRow {
  return { id, kind, status: 'running', params: {}, attempts: 1, cancel_requested: false, request_id: '', target_id: 't', metadata: {} } as unknown as OperationRow;
}

/**
 * The runner with strict fakes: the start statement, the end statement and the publishes it makes,
 * each recording the order of calls (a call nothing was set up for fails the test).
 */
function setup(op: OperationRow) {
  const calls: string[] = [];
  let startDone!: () => void;
  const started = new Promise<void>((r) => (startDone = r));
  const ops = {
    markRunning: async (id: string) => {
      calls.push(`markRunning ${id}`);
      await started;
      return op;
    },
    finish: async (id: string, status: string) => {
      calls.push(`finish ${id} ${status}`);
      return { ...op, status };
    },
  } as unknown as OperationRepository;
  const service = { publish: async () => undefined } as unknown as OperationsService;
  const runner = new OperationRunner(ops, {} as OperationQueueRepository, service, {} as EventBus, pino({ level: 'silent' }), {} as Config);
  const run = (job: { name: string; operationId: string }) => (runner as unknown as { onJob(j: Job): Promise<void> }).onJob({ name: job.name, data: { operationId: job.operationId } } as Job);
  return { runner, run, calls, startDone };
}

describe('OperationRunner prefetch', () => {
  it('reads alongside the start statement and hands the handler what it read', async () => {
    const { runner, run, calls, startDone } = setup(running('op-1', 'thing.do'));
    const seen: unknown[] = [];
    runner.register<string>('thing.do', async (_op, _ctx, read) => void seen.push(read), async (id) => {
      calls.push(`prefetch ${id}`);
      return `read for ${id}`;
    });
    const done = run({ name: 'thing.do', operationId: 'op-1' });
    await new Promise((r) => setImmediate(r));
    // Both went out before the start statement answered.
    expect(calls).toEqual(['prefetch op-1', 'markRunning op-1']);
    startDone();
    await done;
    expect(seen).toEqual(['read for op-1']);
    expect(calls.at(-1)).toBe('finish op-1 succeeded');
  });

  it('a read that fails leaves the reading to the handler (it gets undefined) and fails nothing', async () => {
    const { runner, run, calls, startDone } = setup(running('op-2', 'thing.do'));
    const seen: unknown[] = [];
    runner.register<string>('thing.do', async (_op, _ctx, read) => void seen.push(read), async () => {
      throw new Error('database gone for a moment');
    });
    startDone();
    await run({ name: 'thing.do', operationId: 'op-2' });
    expect(seen).toEqual([undefined]);
    expect(calls.at(-1)).toBe('finish op-2 succeeded');
  });

  it('a handler registered without a prefetch gets nothing extra', async () => {
    const { runner, run, startDone } = setup(running('op-3', 'plain.do'));
    const seen: unknown[] = [];
    runner.register('plain.do', async (...args) => void seen.push(args.length === 3 ? args[2] : 'two arguments'));
    startDone();
    await run({ name: 'plain.do', operationId: 'op-3' });
    expect(seen).toEqual([undefined]);
  });
});
