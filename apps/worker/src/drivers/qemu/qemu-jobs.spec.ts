import { FakeQmpPeer, QmpClient } from '@hyperplane/qmp';
import { waitJob, watchEvent } from './qemu-jobs';

/** A client talking to a fake QEMU. */
async function connected(): Promise<{ peer: FakeQmpPeer; client: QmpClient }> {
  const { peer, clientStream } = FakeQmpPeer.pair();
  const client = await QmpClient.fromStream(clientStream);
  return { peer, client };
}

const event = (name: string, data: Record<string, unknown>) => JSON.stringify({ event: name, data, timestamp: { seconds: 0, microseconds: 0 } });

describe('waitJob', () => {
  let client: QmpClient | undefined;
  afterEach(() => client?.close());

  it('sees a status change that arrives in the same chunk as the answer it polled (no wait for the next poll)', async () => {
    const c = await connected();
    client = c.client;
    const started = Date.now();
    const waiting = waitJob(c.client, 'j1', 60_000, 10_000);
    const first = await c.peer.nextCommand();
    expect(first.execute).toBe('query-jobs');
    // The answer says "pending" and the job concludes right behind it, in one write.
    c.peer.sendRaw(`${JSON.stringify({ return: [{ id: 'j1', type: 'snapshot-load', status: 'pending', 'current-progress': 1, 'total-progress': 1 }], id: first.id })}\r\n${event('JOB_STATUS_CHANGE', { id: 'j1', status: 'concluded' })}\r\n`);
    const second = await c.peer.nextCommand();
    expect(second.execute).toBe('query-jobs');
    c.peer.reply(second, [{ id: 'j1', type: 'snapshot-load', status: 'concluded', 'current-progress': 1, 'total-progress': 1 }]);
    const dismiss = await c.peer.nextCommand();
    expect(dismiss).toMatchObject({ execute: 'job-dismiss', arguments: { id: 'j1' } });
    c.peer.reply(dismiss, {});
    await waiting;
    expect(Date.now() - started).toBeLessThan(2_000); // not the 10 s poll
  });

  it('throws the error of a job that concluded with one', async () => {
    const c = await connected();
    client = c.client;
    const waiting = waitJob(c.client, 'j2', 60_000, 10);
    c.peer.reply(await c.peer.nextCommand(), [{ id: 'j2', type: 'snapshot-save', status: 'concluded', error: 'No space left on device', 'current-progress': 0, 'total-progress': 1 }]);
    c.peer.reply(await c.peer.nextCommand(), {});
    await expect(waiting).rejects.toThrow('No space left on device');
  });
});

describe('watchEvent', () => {
  let client: QmpClient | undefined;
  afterEach(() => client?.close());

  it('resolves at once for an event that came before next() was called, then waits for the following one', async () => {
    const c = await connected();
    client = c.client;
    const w = watchEvent(c.client, 'MIGRATION');
    c.peer.sendEvent('MIGRATION', { status: 'active' });
    await new Promise((r) => setTimeout(r, 20));
    const t0 = Date.now();
    await w.next(10_000);
    expect(Date.now() - t0).toBeLessThan(100);
    // Nothing new: the next wait lasts until its timeout.
    const t1 = Date.now();
    await w.next(150);
    expect(Date.now() - t1).toBeGreaterThanOrEqual(140);
    // An event during a wait ends it.
    const t2 = Date.now();
    setTimeout(() => c.peer.sendEvent('MIGRATION', { status: 'completed' }), 30);
    await w.next(10_000);
    expect(Date.now() - t2).toBeLessThan(1_000);
    w.close();
  });

  it('ignores other events and stops listening once closed', async () => {
    const c = await connected();
    client = c.client;
    const w = watchEvent(c.client, 'MIGRATION');
    c.peer.sendEvent('STOP', {});
    await new Promise((r) => setTimeout(r, 20));
    w.close();
    c.peer.sendEvent('MIGRATION', { status: 'active' });
    await new Promise((r) => setTimeout(r, 20));
    const t0 = Date.now();
    await w.next(120);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(110);
  });
});
