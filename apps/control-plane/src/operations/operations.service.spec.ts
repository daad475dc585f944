import pino from 'pino';
import { Principal } from '@hyperplane/domain';
import { HpEvent } from '../events/event-bus';
import { OperationRow } from './operation.repository';
import { OperationsService } from './operations.service';

const ID = '01900000-0000-7000-8000-0000000000d1';
const principal: Principal = { tokenId: 't', role: 'viewer', projectId: 'proj' };
const row = (status: string) => ({ id: ID, project_id: 'proj', kind: 'partition.migrate', target_type: 'partition', target_id: ID, status, params: {}, metadata: {}, phase: '', progress: 0, attempts: 1, created_at: new Date(), started_at: null, finished_at: null, error: null, version: 1, updated_at: new Date(), cancel_requested: false }) as unknown as OperationRow;

/** An event bus that delivers by resource id, as EventBus does for events published here. */
function bus() {
  const listeners = new Map<string, Set<(e: HpEvent) => void>>();
  return {
    subscribeTo: (id: string, fn: (e: HpEvent) => void) => {
      const set = listeners.get(id) ?? new Set();
      listeners.set(id, set.add(fn));
      return () => set.delete(fn);
    },
    emit: (e: HpEvent) => listeners.get(e.resourceId)?.forEach((fn) => fn(e)),
    listening: (id: string) => listeners.get(id)?.size ?? 0,
  };
}

describe('OperationsService.wait', () => {
  it('hears an end that comes while it reads the operation (subscribed first), without waiting for its poll', async () => {
    const events = bus();
    let reads = 0;
    const ops = {
      get: async () => {
        // The operation ends while the first read is on its way: that read still says running.
        if (reads++ === 0) events.emit({ type: 'operation.updated', resourceType: 'operation', resourceId: ID, projectId: 'proj', data: { id: ID, status: 'succeeded' } } as HpEvent);
        return row('running');
      },
    };
    const service = new OperationsService(ops as never, {} as never, events as never, pino({ level: 'silent' }));
    const t0 = Date.now();
    const view = await service.wait(principal, null, ID, 3);
    expect(view).toMatchObject({ id: ID, status: 'succeeded' });
    expect(Date.now() - t0).toBeLessThan(1_000); // not the 2 s poll
    expect(reads).toBe(1);
    expect(events.listening(ID)).toBe(0); // unsubscribed
  });

  it('answers at once, with one read, for an operation that is final already; waits for the event otherwise', async () => {
    const events = bus();
    let status = 'failed';
    let reads = 0;
    const ops = { get: async () => (reads++, row(status)) };
    const service = new OperationsService(ops as never, {} as never, events as never, pino({ level: 'silent' }));
    await expect(service.wait(principal, null, ID, 30)).resolves.toMatchObject({ status: 'failed' });
    expect(reads).toBe(1);

    status = 'running';
    reads = 0;
    const waiting = service.wait(principal, null, ID, 30);
    await new Promise((r) => setTimeout(r, 20));
    events.emit({ type: 'operation.updated', resourceType: 'operation', resourceId: ID, projectId: 'proj', data: { id: ID, status: 'running' } } as HpEvent);
    events.emit({ type: 'operation.updated', resourceType: 'operation', resourceId: ID, projectId: 'proj', data: { id: ID, status: 'cancelled' } } as HpEvent);
    await expect(waiting).resolves.toMatchObject({ status: 'cancelled' });
    expect(reads).toBe(1);
    expect(events.listening(ID)).toBe(0);
  });

  it('ends at its timeout with the operation as it is then', async () => {
    const events = bus();
    const ops = { get: async () => row('running') };
    const service = new OperationsService(ops as never, {} as never, events as never, pino({ level: 'silent' }));
    await expect(service.wait(principal, null, ID, 0.05)).resolves.toMatchObject({ status: 'running' });
    expect(events.listening(ID)).toBe(0);
  });
});

describe('OperationsService.cancel', () => {
  const operator: Principal = { tokenId: 't', role: 'operator', projectId: 'proj' };
  const of = (kind: string, status: string, extra: Partial<OperationRow> = {}) => ({ ...row(status), kind, ...extra }) as OperationRow;
  /** A repository whose reads return `reads` in turn (the last one from then on); records the cancel requests. */
  function repo(reads: OperationRow[], flagged: (r: OperationRow, status?: string) => boolean = (r, s) => r.status === s) {
    const asked: Array<string | undefined> = [];
    let i = 0;
    const current = () => reads[Math.min(i, reads.length - 1)]!;
    return {
      asked,
      get: async () => current(),
      requestCancel: async (_id: string, status?: string) => {
        asked.push(status);
        const r = current();
        i++;
        return flagged(r, status) ? { ...r, cancel_requested: true } : undefined;
      },
    };
  }
  const events = { publish: async () => undefined };

  it('refuses a running snapshot revert with the reason, and flags nothing', async () => {
    const ops = repo([of('snapshot.revert', 'running')]);
    const service = new OperationsService(ops as never, {} as never, events as never, pino({ level: 'silent' }));
    await expect(service.cancel(operator, 'proj', ID)).rejects.toThrow(`cannot cancel operation ${ID}: a snapshot.revert operation cannot be cancelled once it has started: QEMU's snapshot load is not stopped halfway`);
    expect(ops.asked).toEqual([]);
  });

  it('flags a running create and a live migration in pre-copy; refuses one in post-copy', async () => {
    for (const [op, ok] of [
      [of('partition.create', 'running'), true],
      [of('partition.migrate', 'running', { params: { live: true }, metadata: { migration: { mode: 'live', phase: 'memory' } } }), true],
      [of('partition.migrate', 'running', { params: { live: true }, metadata: { migration: { mode: 'live', phase: 'postcopy' } } }), false],
    ] as const) {
      const ops = repo([op]);
      const service = new OperationsService(ops as never, {} as never, events as never, pino({ level: 'silent' }));
      if (ok) {
        await expect(service.cancel(operator, 'proj', ID)).resolves.toMatchObject({ status: 'running', mayCancel: true });
        expect(ops.asked).toEqual(['running']);
      } else {
        await expect(service.cancel(operator, 'proj', ID)).rejects.toThrow('past pre-copy (phase postcopy)');
        expect(ops.asked).toEqual([]);
      }
    }
  });

  it('judges again when the operation started between the read and the flag: a delete that started is refused', async () => {
    // Read pending; by the time of the flag (asked for status pending) it runs.
    const ops = repo([of('partition.delete', 'pending'), of('partition.delete', 'running')], () => false);
    const service = new OperationsService(ops as never, {} as never, events as never, pino({ level: 'silent' }));
    await expect(service.cancel(operator, 'proj', ID)).rejects.toThrow('a partition.delete operation cannot be cancelled once it has started: the node is removing the guest and its files');
    expect(ops.asked).toEqual(['pending']);
  });

  it('refuses a final operation', async () => {
    const ops = repo([of('partition.create', 'succeeded')]);
    const service = new OperationsService(ops as never, {} as never, events as never, pino({ level: 'silent' }));
    await expect(service.cancel(operator, 'proj', ID)).rejects.toThrow(`cannot cancel operation ${ID}: it is succeeded`);
    expect(ops.asked).toEqual([]);
  });
});
