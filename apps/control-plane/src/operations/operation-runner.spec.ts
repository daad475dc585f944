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

describe('OperationRunner runs operations accepted here under a lease', () => {
  /** A started runner (its queue worker and timers faked) with `concurrency` slots. */
  function started(concurrency: number, ops: Partial<OperationRepository> = {}, runAccepted = true) {
    const calls: string[] = [];
    const repo = {
      live: async () => [],
      finish: async (id: string, status: string) => {
        calls.push(`finish ${id} ${status}`);
        return { id, status };
      },
      ...ops,
    } as unknown as OperationRepository;
    const published: string[] = [];
    const service = { publish: async (r: OperationRow) => void published.push(`${r.id} ${r.status}`) } as unknown as OperationsService;
    const jobsAtOnce: number[] = [];
    const queue = { startWorker: () => undefined, setConcurrency: (n: number) => void jobsAtOnce.push(n) } as unknown as OperationQueueRepository;
    const events = { subscribe: () => () => undefined } as unknown as EventBus;
    const runner = new OperationRunner(repo, queue, service, events, pino({ level: 'silent' }), { role: 'all', operationConcurrency: concurrency, runAccepted } as Config);
    return { runner, calls, published, jobsAtOnce };
  }

  afterEach(() => jest.useRealTimers());

  it('leases only kinds it has a handler for, and only while it has room; a lease given back frees its slot', async () => {
    const { runner } = started(2);
    runner.register('thing.do', async () => undefined);
    await runner.onApplicationBootstrap();
    expect(runner.leaseHere('other.kind')).toBeUndefined();
    const a = runner.leaseHere('thing.do');
    expect(a).toEqual({ owner: runner.owner, ms: 10_000 });
    expect(runner.leaseHere('thing.do')).toBeDefined();
    expect(runner.leaseHere('thing.do')).toBeUndefined(); // both slots taken
    runner.unlease();
    expect(runner.leaseHere('thing.do')).toBeDefined();
    await runner.onModuleDestroy();
  });

  it('leases up to n at once for a batch, as many as it has room for; those given back free their slots', async () => {
    const { runner } = started(3);
    runner.register('thing.do', async () => undefined);
    await runner.onApplicationBootstrap();
    expect(runner.leaseUpTo('other.kind', 2)).toEqual({ count: 0 });
    expect(runner.leaseUpTo('thing.do', 2)).toEqual({ lease: { owner: runner.owner, ms: 10_000 }, count: 2 });
    expect(runner.leaseUpTo('thing.do', 5)).toEqual({ lease: { owner: runner.owner, ms: 10_000 }, count: 1 }); // one slot was left
    expect(runner.leaseUpTo('thing.do', 1)).toEqual({ count: 0 });
    runner.unlease(2);
    expect(runner.leaseUpTo('thing.do', 5).count).toBe(2);
    await runner.onModuleDestroy();
  });

  it('does not lease when it runs no operations (the queue then carries them to a replica that does)', () => {
    const { runner } = started(8);
    runner.register('thing.do', async () => undefined);
    expect(runner.leaseHere('thing.do')).toBeUndefined(); // never bootstrapped as an operations runner
  });

  it('runs a leased operation without a start statement, to its end, and keeps its lease while it runs', async () => {
    const renewed: string[][] = [];
    const { runner, calls, published } = started(4, {
      renewLeases: async (_owner: string, ids: string[]) => {
        renewed.push(ids);
        return ids;
      },
    } as Partial<OperationRepository>);
    let release!: () => void;
    const seen: string[] = [];
    runner.register('thing.do', async (op) => {
      seen.push(`${op.id} attempt ${op.attempts}`);
      await new Promise<void>((r) => (release = r));
    });
    jest.useFakeTimers({ doNotFake: ['setImmediate', 'nextTick', 'queueMicrotask'] });
    await runner.onApplicationBootstrap();
    expect(runner.leaseHere('thing.do')).toBeDefined();
    runner.runHere(running('op-9', 'thing.do'));
    await new Promise((r) => setImmediate(r));
    expect(seen).toEqual(['op-9 attempt 1']);
    expect(published).toEqual([]); // its start was told by the request that recorded it
    await jest.advanceTimersByTimeAsync(10_000 / 3 + 1);
    expect(renewed).toEqual([['op-9']]);
    release();
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    expect(calls).toEqual(['finish op-9 succeeded']);
    await jest.advanceTimersByTimeAsync(10_000);
    expect(renewed).toEqual([['op-9']]); // nothing left to renew
    await runner.onModuleDestroy();
  });

  it('hands a run here what its request committed instead of the prefetch, and prefetches when it got nothing', async () => {
    const { runner } = started(4);
    const seen: unknown[] = [];
    const prefetched: string[] = [];
    runner.register<string>('thing.do', async (_op, _ctx, read) => void seen.push(read), async (id) => {
      prefetched.push(id);
      return `read for ${id}`;
    });
    await runner.onApplicationBootstrap();
    runner.leaseHere('thing.do');
    runner.runHere(running('op-12', 'thing.do'), 'as committed');
    runner.leaseHere('thing.do');
    runner.runHere(running('op-13', 'thing.do'));
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    expect(seen).toEqual(['as committed', 'read for op-13']);
    expect(prefetched).toEqual(['op-13']); // not read for the one that came with its rows
    await runner.onModuleDestroy();
  });

  it('a run gives its slot back when it ends, also when its end cannot be recorded (nothing thrown out of it)', async () => {
    const { runner } = started(1, {
      finish: async () => {
        throw new Error('database gone');
      },
    } as Partial<OperationRepository>);
    runner.register('thing.do', async () => undefined);
    await runner.onApplicationBootstrap();
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    try {
      expect(runner.leaseHere('thing.do')).toBeDefined();
      expect(runner.leaseHere('thing.do')).toBeUndefined();
      runner.runHere(running('op-10', 'thing.do'));
      for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
      expect(runner.leaseHere('thing.do')).toBeDefined(); // the one slot is free again
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
      await runner.onModuleDestroy();
    }
  });

  it('a run whose lease another replica took over does not record its end', async () => {
    const { runner, calls } = started(4, { renewLeases: async () => [] } as Partial<OperationRepository>);
    let release!: () => void;
    runner.register('thing.do', () => new Promise<void>((r) => (release = r)));
    jest.useFakeTimers({ doNotFake: ['setImmediate', 'nextTick', 'queueMicrotask'] });
    await runner.onApplicationBootstrap();
    runner.leaseHere('thing.do');
    runner.runHere(running('op-11', 'thing.do'));
    await new Promise((r) => setImmediate(r));
    await jest.advanceTimersByTimeAsync(10_000 / 3 + 1); // the renewal finds the lease gone
    release();
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    expect(calls).toEqual([]); // no finish
    await runner.onModuleDestroy();
  });

  it('one count for HYPERPLANE_OPERATION_CONCURRENCY: leases leave the queue\'s worker the slots left (at least one), and operations run from jobs leave fewer leases', async () => {
    const { runner, jobsAtOnce } = started(3, {
      markRunning: async (id: string) => running(id, 'thing.do'),
    } as Partial<OperationRepository>);
    const release = new Map<string, () => void>();
    runner.register('thing.do', (op) => new Promise<void>((r) => release.set(op.id, r)));
    await runner.onApplicationBootstrap();
    const tick = async () => {
      for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    };
    runner.leaseHere('thing.do');
    runner.runHere(running('leased-1', 'thing.do'));
    expect(jobsAtOnce.at(-1)).toBe(2);
    runner.leaseHere('thing.do');
    expect(jobsAtOnce.at(-1)).toBe(1); // reserved counts as soon as it is given
    runner.runHere(running('leased-2', 'thing.do'));
    expect(jobsAtOnce.at(-1)).toBe(1);
    // A job runs here: the last slot; no lease is left for a request.
    const job = (runner as unknown as { onJob(j: Job): Promise<void> }).onJob({ name: 'thing.do', data: { operationId: 'queued-1' } } as Job);
    await tick();
    expect(runner.leaseHere('thing.do')).toBeUndefined();
    release.get('queued-1')!();
    await job;
    expect(runner.leaseHere('thing.do')).toBeDefined();
    // Every slot taken by leases: the worker still takes one job at once (the queue never stalls).
    expect(jobsAtOnce.at(-1)).toBe(1); // max(1, 3 - 1 reserved - 2 leased)
    runner.unlease();
    release.get('leased-1')!();
    release.get('leased-2')!();
    await tick();
    expect(jobsAtOnce.at(-1)).toBe(3); // all slots free again
    await runner.onModuleDestroy();
  });

  it('a drain holds no slot (it waits for operations that need one): with every slot held it is still leased, and a drain job takes a place of the worker, not a slot', async () => {
    const { runner, jobsAtOnce } = started(1, {
      markRunning: async (id: string) => running(id, 'node.drain'),
    } as Partial<OperationRepository>);
    const release: Array<() => void> = [];
    runner.register('thing.do', () => new Promise<void>((r) => release.push(r)));
    runner.register('node.drain', () => new Promise<void>((r) => release.push(r)));
    await runner.onApplicationBootstrap();
    runner.leaseHere('thing.do');
    runner.runHere(running('leased-1', 'thing.do'));
    expect(runner.leaseHere('thing.do')).toBeUndefined();
    const job = (runner as unknown as { onJob(j: Job): Promise<void> }).onJob({ name: 'node.drain', data: { operationId: 'drain-1' } } as Job);
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    expect(jobsAtOnce.at(-1)).toBe(2); // max(1, 1 - 1) + the drain
    expect(runner.leaseHere('node.drain')).toBeDefined();
    runner.unlease();
    for (const r of release) r();
    await job;
    await runner.onModuleDestroy();
  });

  it('a job that starts nothing (its operation final already, or the start statement failing) gives its slot back', async () => {
    let fail = false;
    const { runner, jobsAtOnce } = started(2, {
      markRunning: async () => {
        if (fail) throw new Error('database gone');
        return undefined; // not live any more
      },
      get: async (id: string) => ({ ...running(id, 'thing.do'), status: 'succeeded' }),
    } as unknown as Partial<OperationRepository>);
    runner.register('thing.do', async () => undefined);
    await runner.onApplicationBootstrap();
    const onJob = (id: string) => (runner as unknown as { onJob(j: Job): Promise<void> }).onJob({ name: 'thing.do', data: { operationId: id } } as Job);
    await onJob('done-1');
    fail = true;
    await expect(onJob('down-1')).rejects.toThrow('database gone');
    expect(runner.leaseUpTo('thing.do', 5).count).toBe(2); // both slots free
    runner.unlease(2);
    expect(jobsAtOnce.at(-1)).toBe(2);
    await runner.onModuleDestroy();
  });

  it('a job fetched while it shuts down starts nothing (the operation stays pending for the sweep)', async () => {
    const marked: string[] = [];
    const { runner } = started(4, {
      markRunning: async (id: string) => (marked.push(id), running(id, 'thing.do')),
    } as Partial<OperationRepository>);
    runner.register('thing.do', async () => undefined);
    await runner.onApplicationBootstrap();
    await runner.onModuleDestroy();
    await (runner as unknown as { onJob(j: Job): Promise<void> }).onJob({ name: 'thing.do', data: { operationId: 'late-1' } } as Job);
    expect(marked).toEqual([]);
  });

  it('does not lease with HYPERPLANE_RUN_ACCEPTED off (replicas older than the leases still run)', async () => {
    const { runner } = started(4, {}, false);
    runner.register('thing.do', async () => undefined);
    await runner.onApplicationBootstrap();
    expect(runner.leaseHere('thing.do')).toBeUndefined();
    await runner.onModuleDestroy();
  });

  it('stops leasing once it shuts down', async () => {
    const { runner } = started(4);
    runner.register('thing.do', async () => undefined);
    await runner.onApplicationBootstrap();
    await runner.onModuleDestroy();
    expect(runner.leaseHere('thing.do')).toBeUndefined();
  });

  it('the sweep gives no job to an operation a replica holds under a live lease', async () => {
    const ensured: string[] = [];
    const { runner } = started(4, {
      live: async () => [
        { ...running('leased-op', 'thing.do'), leased: true },
        { ...running('orphan-op', 'thing.do'), leased: false },
      ],
    } as unknown as Partial<OperationRepository>);
    (runner as unknown as { queue: unknown }).queue = {
      startWorker: () => undefined,
      ensure: async (id: string) => {
        ensured.push(id);
        return 'queued';
      },
    };
    runner.register('thing.do', async () => undefined);
    await runner.onApplicationBootstrap();
    expect(ensured).toEqual(['orphan-op']);
    await runner.onModuleDestroy();
  });
});
