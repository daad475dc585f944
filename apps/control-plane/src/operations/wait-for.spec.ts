import { CancelledError, DeadlineExceededError } from '@hyperplane/domain';
import type { EventBus, HpEvent } from '../events/event-bus';
import type { OperationContext } from './operation-runner';
import { waitFor, WaitForOptions } from './wait-for';

/** An event bus with one resource's listeners, and a way to publish to them (with or without a record). */
function fakeBus() {
  const listeners = new Set<(e: HpEvent, record?: unknown) => void>();
  const bus = {
    subscribeTo: (_id: string, fn: (e: HpEvent, record?: unknown) => void) => {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
  } as unknown as EventBus;
  const publish = (resourceType: HpEvent['resourceType'], record?: unknown) => {
    const e: HpEvent = { id: 'e', type: `${resourceType}.updated`, resourceType, resourceId: 'p1', projectId: null, at: '', data: null };
    for (const fn of [...listeners]) fn(e, record);
  };
  return { bus, publish, listeners };
}

const ctxOf = (ac = new AbortController()): OperationContext => ({ signal: ac.signal, progress: async () => undefined, succeedWith: () => undefined });
const opts = (o: Partial<WaitForOptions> = {}): WaitForOptions => ({ resourceId: 'p1', resourceType: 'partition', pollMs: 60_000, timeoutMs: 60_000, timeoutMessage: 'too slow', ...o });
const tick = () => new Promise((r) => setImmediate(r));

/** A wait whose first check is slow (a read begun before a change) until `release()`; later checks answer `later(record)`. */
function slowFirstCheck(bus: EventBus, later: (record: unknown) => boolean) {
  let release!: () => void;
  const calls: unknown[] = [];
  const done = waitFor(bus, ctxOf(), async (record) => {
    calls.push(record);
    if (calls.length === 1) {
      await new Promise<void>((r) => (release = r));
      return false;
    }
    return later(record);
  }, opts());
  return { done, calls, release: () => release() };
}

describe('waitFor', () => {
  it('judges the known record first, then the record each local event carries, without reading', async () => {
    const { bus, publish } = fakeBus();
    const seen: unknown[] = [];
    const done = waitFor(bus, ctxOf(), async (record) => {
      seen.push(record);
      return record === 'running';
    }, opts({ known: 'starting' }));
    await tick();
    publish('partition', 'booting');
    await tick();
    publish('partition', 'running');
    await done;
    expect(seen).toEqual(['starting', 'booting', 'running']);
  });

  it('checks without a record (a read) for events of other replicas and ignores other resource types', async () => {
    const { bus, publish } = fakeBus();
    const seen: unknown[] = [];
    let state = 'starting';
    const done = waitFor(bus, ctxOf(), async (record) => {
      seen.push(record);
      return (record ?? state) === 'running';
    }, opts());
    await tick();
    state = 'running';
    publish('operation', 'running'); // not this resource's type: no check
    await tick();
    expect(seen).toEqual([undefined]);
    publish('partition');
    await done;
    expect(seen).toEqual([undefined, undefined]);
  });

  it('runs once more after a check when an event came while it ran (the change is not left to the poll)', async () => {
    const { bus, publish } = fakeBus();
    const { done, calls, release } = slowFirstCheck(bus, (record) => record === 'running');
    await tick();
    publish('partition', 'running'); // comes while the first check still reads
    release();
    await done;
    expect(calls).toEqual([undefined, 'running']);
  });

  it('rejects with what check throws, on cancel, and after the timeout; and stops listening', async () => {
    const { bus, listeners } = fakeBus();
    await expect(waitFor(bus, ctxOf(), async () => { throw new Error('failed to start'); }, opts())).rejects.toThrow('failed to start');
    const ac = new AbortController();
    const cancelled = waitFor(bus, ctxOf(ac), async () => false, opts());
    ac.abort();
    await expect(cancelled).rejects.toBeInstanceOf(CancelledError);
    await expect(waitFor(bus, ctxOf(), async () => false, opts({ timeoutMs: 20 }))).rejects.toBeInstanceOf(DeadlineExceededError);
    expect(listeners.size).toBe(0);
  });

  it('polls by reading when no event comes', async () => {
    const { bus } = fakeBus();
    let n = 0;
    await waitFor(bus, ctxOf(), async (record) => {
      expect(record).toBeUndefined();
      return ++n === 3;
    }, opts({ pollMs: 5 }));
    expect(n).toBe(3);
  });

  it('reads on the rerun when any event during a check carried no record (a local record does not stand for that read)', async () => {
    const { bus, publish } = fakeBus();
    const { done, calls, release } = slowFirstCheck(bus, () => true);
    await tick();
    publish('partition'); // another replica's event: a read is due
    publish('partition', 'starting'); // then a local one
    release();
    await done;
    expect(calls).toEqual([undefined, undefined]);
  });
});

