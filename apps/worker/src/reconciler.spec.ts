import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { agentV1 } from '@hyperplane/proto';
import pino from 'pino';
import { PartitionStore } from './partition-store';
import { Reconciler } from './reconciler';
import { StrictFakeDriver } from './testing/strict-fake-driver';

const A = '01900000-0000-7000-8000-00000000000a';
const B = '01900000-0000-7000-8000-00000000000b';
const silent = pino({ level: 'silent' });

function spec(id: string, desired: string, generation: number, extra: Partial<agentV1.PartitionSpec__Output> = {}): agentV1.PartitionSpec__Output {
  return { id, name: `p-${id.slice(-1)}`, projectId: 'proj', vcpus: 1, memoryMib: 128, diskGib: 1, image: 'sample', desired, generation, ...extra };
}

function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: Error) => void } {
  let resolve!: (v: T) => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Driver set-ups that behave like a driver whose actions succeed at once. */
function happy(driver: StrictFakeDriver, pid = 4242): StrictFakeDriver {
  return driver
    .when('start', async (s) => {
      driver.running.set(s.id, pid);
      return { pid };
    })
    .when('stop', async (id) => void driver.running.delete(id))
    .when('destroy', async (id) => void driver.running.delete(id));
}

describe('Reconciler', () => {
  let dir: string;
  let driver: StrictFakeDriver;
  let store: PartitionStore;
  let reports: agentV1.PartitionStatus[];
  let events: agentV1.GuestEvent[];
  let reconciler: Reconciler;

  const statesOf = (id: string) => reports.filter((r) => r.id === id).map((r) => `${r.state}@${r.generation}`);
  const record = async (id: string) => JSON.parse(await readFile(join(dir, 'partitions', id, 'state.json'), 'utf8')) as Record<string, unknown>;

  async function make(recovered: Awaited<ReturnType<StrictFakeDriver['recover']>> = []): Promise<Reconciler> {
    driver.when('recover', async () => recovered);
    const r = new Reconciler({ driver, store, report: (s) => reports.push(s), event: (e) => events.push(e), log: silent, defaultGraceMs: 30_000 });
    await r.init();
    return r;
  }

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hp-reconciler-'));
    driver = new StrictFakeDriver();
    store = new PartitionStore(dir);
    reports = [];
    events = [];
  });

  afterEach(async () => {
    await reconciler?.idle();
    expect(driver.unexpected).toEqual([]);
    await rm(dir, { recursive: true, force: true });
  });

  describe('generations', () => {
    it('starts a partition desired running, reporting starting then running with the generation, and persists it', async () => {
      reconciler = await make();
      happy(driver);

      reconciler.upsert(spec(A, 'running', 3));
      await reconciler.idle();

      expect(driver.callsOf('start')).toEqual([[{ id: A, name: 'p-a', vcpus: 1, memoryMiB: 128, diskGiB: 1, image: 'sample' }]]);
      expect(statesOf(A)).toEqual(['starting@3', 'running@3']);
      expect(reports.at(-1)).toEqual({ id: A, state: 'running', reason: '', generation: 3, pid: 4242 });
      await expect(record(A)).resolves.toMatchObject({ id: A, appliedGeneration: 3, state: 'running', spec: { desired: 'running', generation: 3 } });
    });

    it('a spec whose generation is not newer causes no action, only a status report', async () => {
      reconciler = await make();
      happy(driver);
      reconciler.upsert(spec(A, 'running', 3));
      await reconciler.idle();
      reports = [];

      reconciler.upsert(spec(A, 'running', 3));
      reconciler.upsert(spec(A, 'stopped', 2));
      await reconciler.idle();

      expect(driver.callsOf('start')).toHaveLength(1);
      expect(driver.callsOf('stop')).toHaveLength(0);
      expect(statesOf(A)).toEqual(['running@3', 'running@3']);
    });

    it('a newer generation that changes nothing for a running guest still reports the new generation', async () => {
      reconciler = await make();
      happy(driver);
      reconciler.upsert(spec(A, 'running', 3));
      await reconciler.idle();

      reconciler.upsert(spec(A, 'running', 4, { name: 'renamed' }));
      await reconciler.idle();

      expect(driver.callsOf('start')).toHaveLength(1);
      expect(reports.at(-1)).toMatchObject({ id: A, state: 'running', generation: 4 });
    });

    it('desired stopped stops a running guest gracefully with the default grace', async () => {
      reconciler = await make();
      happy(driver);
      reconciler.upsert(spec(A, 'running', 1));
      await reconciler.idle();

      reconciler.upsert(spec(A, 'stopped', 2));
      await reconciler.idle();

      expect(driver.callsOf('stop')).toEqual([[A, { force: false, graceMs: 30_000 }]]);
      expect(statesOf(A).slice(-2)).toEqual(['stopping@2', 'stopped@2']);
      expect(reports.at(-1)).toMatchObject({ reason: 'stopped on request', pid: 0 });
    });

    it('a partition created stopped is reported stopped without touching the driver', async () => {
      reconciler = await make();

      reconciler.upsert(spec(A, 'stopped', 1));
      await reconciler.idle();

      expect(driver.calls).toEqual([{ method: 'recover', args: [] }]);
      expect(statesOf(A)).toEqual(['stopped@1']);
    });

    it('desired absent force-removes the guest and its files, forgets it and reports absent with the generation', async () => {
      reconciler = await make();
      happy(driver);
      reconciler.upsert(spec(A, 'running', 1));
      await reconciler.idle();

      reconciler.upsert(spec(A, 'absent', 2));
      await reconciler.idle();

      expect(driver.callsOf('destroy')).toEqual([[A]]);
      expect(reports.at(-1)).toEqual({ id: A, state: 'absent', reason: '', generation: 2, pid: 0 });
      await expect(stat(join(dir, 'partitions', A))).rejects.toMatchObject({ code: 'ENOENT' });
      expect(reconciler.statuses()).toEqual([]);
    });

    it('an absent spec for a partition the agent does not have is answered absent without action', async () => {
      reconciler = await make();

      reconciler.upsert({ id: A, desired: 'absent', generation: 9 });
      await reconciler.idle();

      expect(reports).toEqual([{ id: A, state: 'absent', reason: '', generation: 9, pid: 0 }]);
    });

    it('a failed start is reported failed with the reason; only a newer generation tries again', async () => {
      reconciler = await make();
      driver.when('start', async () => {
        throw new Error('image "nope" is not in this node\'s store');
      });

      reconciler.upsert(spec(A, 'running', 1, { image: 'nope' }));
      reconciler.upsert(spec(A, 'running', 1, { image: 'nope' }));
      await reconciler.idle();
      expect(driver.callsOf('start')).toHaveLength(1);
      expect(reports.at(-1)).toMatchObject({ state: 'failed', reason: 'image "nope" is not in this node\'s store', generation: 1 });

      happy(driver);
      reconciler.upsert(spec(A, 'running', 2));
      await reconciler.idle();
      expect(reports.at(-1)).toMatchObject({ state: 'running', generation: 2 });
    });
  });

  describe('DesiredState', () => {
    it('is the full set: a partition not listed is removed and reported absent', async () => {
      reconciler = await make();
      happy(driver);
      reconciler.desired([spec(A, 'running', 1), spec(B, 'running', 1)]);
      await reconciler.idle();

      reconciler.desired([spec(A, 'running', 1)]);
      await reconciler.idle();

      expect(driver.callsOf('destroy')).toEqual([[B]]);
      expect(reports.at(-1)).toMatchObject({ id: B, state: 'absent', generation: 1 });
      expect(reconciler.statuses().map((s) => s.id)).toEqual([A]);
      expect(driver.callsOf('start')).toHaveLength(2);
    });
  });

  describe('per-partition serialisation', () => {
    it('never interleaves actions of one partition, while other partitions proceed', async () => {
      reconciler = await make();
      const startA = deferred<{ pid: number }>();
      driver
        .when('start', (s) => {
          if (s.id === A) return startA.promise.then((r) => (driver.running.set(A, r.pid), r));
          driver.running.set(s.id, 2);
          return Promise.resolve({ pid: 2 });
        })
        .when('stop', async (id) => void driver.running.delete(id));

      reconciler.upsert(spec(A, 'running', 1));
      reconciler.upsert(spec(B, 'running', 1));
      await new Promise((r) => setImmediate(r));
      reconciler.upsert(spec(A, 'stopped', 2));
      await new Promise((r) => setTimeout(r, 20));

      // B started while A's start is still pending; A's stop waits for A's start.
      expect(reconciler.stateOf(B)).toBe('running');
      expect(driver.callsOf('stop')).toHaveLength(0);
      startA.resolve({ pid: 1 });
      await reconciler.idle();

      expect(driver.calls.filter((c) => c.args[0] === A || (c.args[0] as { id?: string })?.id === A).map((c) => c.method)).toEqual(['start', 'stop']);
      expect(statesOf(A)).toEqual(['starting@1', 'running@1', 'stopping@2', 'stopped@2']);
    });

    it('coalesces specs that arrive during an action: only the newest is acted on', async () => {
      reconciler = await make();
      const startA = deferred();
      driver.when('start', async (s) => {
        await startA.promise;
        driver.running.set(s.id, 7);
        return { pid: 7 };
      });

      reconciler.upsert(spec(A, 'running', 1));
      await new Promise((r) => setImmediate(r));
      reconciler.upsert(spec(A, 'stopped', 2));
      reconciler.upsert(spec(A, 'running', 3));
      startA.resolve();
      await reconciler.idle();

      expect(driver.callsOf('start')).toHaveLength(1);
      expect(reports.at(-1)).toMatchObject({ state: 'running', generation: 3 });
    });
  });

  describe('guests that end on their own', () => {
    beforeEach(async () => {
      reconciler = await make();
      happy(driver, 99);
      reconciler.upsert(spec(A, 'running', 1));
      await reconciler.idle();
    });

    it('a killed QEMU is reported failed with its reason and is not restarted', async () => {
      driver.exit(A, { pid: 99, state: 'failed', reason: 'qemu exited with signal SIGKILL', requested: false });
      await reconciler.idle();

      expect(reports.at(-1)).toEqual({ id: A, state: 'failed', reason: 'qemu exited with signal SIGKILL', generation: 1, pid: 0 });
      expect(driver.callsOf('start')).toHaveLength(1);
      await expect(record(A)).resolves.toMatchObject({ state: 'failed', reason: 'qemu exited with signal SIGKILL' });
    });

    it('a guest that powered itself off is reported stopped', async () => {
      driver.exit(A, { pid: 99, state: 'stopped', reason: 'guest powered off', requested: false });
      await reconciler.idle();

      expect(reports.at(-1)).toMatchObject({ state: 'stopped', reason: 'guest powered off' });
    });

    it('an exit of an older process (a different pid) is ignored', async () => {
      reports = [];
      driver.exit(A, { pid: 12, state: 'failed', reason: 'old', requested: false });
      driver.running.set(A, 99);
      await reconciler.idle();

      expect(reports).toEqual([]);
    });

    it('forwards hypervisor events', () => {
      driver.event(A, 'RESET', { guest: true, reason: 'guest-reset' });

      expect(events).toEqual([{ partitionId: A, event: 'RESET', dataJson: '{"guest":true,"reason":"guest-reset"}', at: expect.any(String) }]);
    });
  });

  describe('commands', () => {
    beforeEach(async () => {
      reconciler = await make();
    });

    it('stop echoes the command id; a stop command during a graceful stop makes it forceful', async () => {
      const graceful = deferred();
      driver
        .when('start', async (s) => (driver.running.set(s.id, 5), { pid: 5 }))
        .when('stop', async (id, options) => {
          if (!options.force) await graceful.promise;
          driver.running.delete(id);
          graceful.resolve();
        });
      reconciler.upsert(spec(A, 'running', 1));
      await reconciler.idle();

      reconciler.upsert(spec(A, 'stopped', 2));
      await new Promise((r) => setImmediate(r));
      const result = await reconciler.command({ id: 'cmd-1@replica', body: 'stop', stop: { partitionId: A, force: true, graceMs: 0 } });

      expect(result).toEqual({ commandId: 'cmd-1@replica', ok: true, errorCode: '', errorMessage: '', payload: '' });
      expect(driver.callsOf('stop')).toEqual([
        [A, { force: false, graceMs: 30_000 }],
        [A, { force: true, graceMs: 30_000 }],
      ]);
      expect(reconciler.stateOf(A)).toBe('stopped');
    });

    it('a stop command that arrives before the desired-state stop ran sets how forceful it is', async () => {
      const startA = deferred();
      driver
        .when('start', async (s) => (await startA.promise, driver.running.set(s.id, 5), { pid: 5 }))
        .when('stop', async (id) => void driver.running.delete(id));
      reconciler.upsert(spec(A, 'running', 1));
      await new Promise((r) => setImmediate(r));
      reconciler.upsert(spec(A, 'stopped', 2));
      const result = reconciler.command({ id: 'c', body: 'stop', stop: { partitionId: A, force: false, graceMs: 5_000 } });
      startA.resolve();

      await expect(result).resolves.toMatchObject({ ok: true });
      expect(driver.callsOf('stop')).toEqual([[A, { force: false, graceMs: 5_000 }]]);
    });

    it('commands for an unknown partition answer NOT_FOUND', async () => {
      await expect(reconciler.command({ id: 'x', body: 'stop', stop: { partitionId: B } })).resolves.toMatchObject({ commandId: 'x', ok: false, errorCode: 'NOT_FOUND' });
      await expect(reconciler.command({ id: 'y', body: 'reboot', reboot: { partitionId: B } })).resolves.toMatchObject({ ok: false, errorCode: 'NOT_FOUND' });
      await expect(reconciler.command({ id: 'z', body: 'consoleTail', consoleTail: { partitionId: B, bytes: 10 } })).resolves.toMatchObject({ ok: false, errorCode: 'NOT_FOUND' });
    });

    it('reboot resets a running guest and refuses a stopped one', async () => {
      happy(driver).when('reboot', async () => undefined);
      reconciler.upsert(spec(A, 'running', 1));
      await reconciler.idle();

      await expect(reconciler.command({ id: 'r1', body: 'reboot', reboot: { partitionId: A } })).resolves.toMatchObject({ commandId: 'r1', ok: true });
      reconciler.upsert(spec(A, 'stopped', 2));
      await expect(reconciler.command({ id: 'r2', body: 'reboot', reboot: { partitionId: A } })).resolves.toMatchObject({
        ok: false,
        errorCode: 'FAILED_PRECONDITION',
        errorMessage: 'cannot reboot partition p-a: it is stopped',
      });
      expect(driver.callsOf('reboot')).toEqual([[A]]);
    });

    it('consoleTail answers {data, truncated} as JSON, with a default size when 0 is asked', async () => {
      reconciler.upsert(spec(A, 'stopped', 1));
      driver.when('consoleTail', async () => ({ data: 'hb 1\r\n', truncated: true }));

      const result = await reconciler.command({ id: 't', body: 'consoleTail', consoleTail: { partitionId: A, bytes: 0 } });

      expect(result).toEqual({ commandId: 't', ok: true, errorCode: '', errorMessage: '', payload: '{"data":"hb 1\\r\\n","truncated":true}' });
      expect(driver.callsOf('consoleTail')).toEqual([[A, 65536]]);
    });

    it('an unknown command is answered INVALID_ARGUMENT', async () => {
      await expect(reconciler.command({ id: 'u' })).resolves.toMatchObject({ commandId: 'u', ok: false, errorCode: 'INVALID_ARGUMENT' });
    });
  });

  describe('after an agent restart (init)', () => {
    it('carries on a stop that the previous agent process had begun', async () => {
      await store.save({
        id: A,
        spec: { id: A, name: 'a', projectId: 'p', vcpus: 1, memoryMiB: 128, diskGiB: 1, image: 'sample', desired: 'stopped', generation: 7 },
        appliedGeneration: 7,
        state: 'stopping',
        reason: 'stop requested',
        updatedAt: new Date().toISOString(),
      });
      driver.running.set(A, 55);
      driver.when('stop', async (id) => void driver.running.delete(id));
      reconciler = await make([{ id: A, alive: true, pid: 55, status: 'running' }]);
      await reconciler.idle();

      expect(driver.callsOf('stop')).toEqual([[A, { force: false, graceMs: 30_000 }]]);
      expect(reconciler.statuses()).toEqual([{ id: A, state: 'stopped', reason: 'stopped on request', generation: 7, pid: 0 }]);
    });

    it('a delete that failed is retried when the same absent spec comes again', async () => {
      reconciler = await make();
      happy(driver);
      reconciler.upsert(spec(A, 'running', 1));
      await reconciler.idle();
      let attempts = 0;
      driver.when('destroy', async (id) => {
        if (++attempts === 1) throw new Error('EBUSY: resource busy');
        driver.running.delete(id);
      });

      reconciler.upsert(spec(A, 'absent', 2));
      await reconciler.idle();
      expect(reports.at(-1)).toMatchObject({ state: 'failed', reason: 'delete failed: EBUSY: resource busy', generation: 2 });
      reconciler.desired([spec(A, 'absent', 2)]);
      await reconciler.idle();

      expect(reports.at(-1)).toEqual({ id: A, state: 'absent', reason: '', generation: 2, pid: 0 });
      expect(attempts).toBe(2);
    });


    it('drops partitions whose outgoing migration completed before the restart: with a record or without', async () => {
      const now = new Date().toISOString();
      const base = { projectId: 'p', vcpus: 1, memoryMiB: 128, diskGiB: 1, image: 'sample' };
      await store.save({ id: A, spec: { ...base, id: A, name: 'a', desired: 'running', generation: 3 }, appliedGeneration: 3, state: 'running', reason: 'migrating to 127.0.0.2:4000', updatedAt: now });
      await mkdir(join(dir, 'partitions', B), { recursive: true }); // its record already gone
      reconciler = await make([
        { id: A, alive: false, movedAway: true, reason: 'migrated away' },
        { id: B, alive: false, movedAway: true, reason: 'migrated away' },
      ]);
      expect(reconciler.statuses()).toEqual([]);
      expect(reconciler.stateOf(A)).toBeUndefined();
      expect(existsSync(join(dir, 'partitions', A))).toBe(false);
      await expect(reconciler.command({ id: 'o1', body: 'migrationOutcome', migrationOutcome: { partitionId: A } })).resolves.toMatchObject({ ok: true, payload: JSON.stringify({ present: false, state: 'absent', reason: '' }) });
      await expect(reconciler.command({ id: 'o2', body: 'migrationOutcome', migrationOutcome: { partitionId: B } })).resolves.toMatchObject({ ok: true, payload: JSON.stringify({ present: false, state: 'absent', reason: '' }) });
    });

    it('adopts surviving guests, reports gone ones per their last desired state, and acts on nothing it already did', async () => {
      const C = '01900000-0000-7000-8000-00000000000c';
      const now = new Date().toISOString();
      const base = { projectId: 'p', vcpus: 1, memoryMiB: 128, diskGiB: 1, image: 'sample' };
      await store.save({ id: A, spec: { ...base, id: A, name: 'a', desired: 'running', generation: 4 }, appliedGeneration: 4, state: 'running', reason: '', updatedAt: now });
      await store.save({ id: B, spec: { ...base, id: B, name: 'b', desired: 'running', generation: 2 }, appliedGeneration: 2, state: 'running', reason: '', updatedAt: now });
      await store.save({ id: C, spec: { ...base, id: C, name: 'c', desired: 'stopped', generation: 5 }, appliedGeneration: 5, state: 'stopped', reason: 'stopped on request', updatedAt: now });
      reconciler = await make([
        { id: A, alive: true, pid: 321, status: 'running' },
        { id: B, alive: false, reason: 'qemu is gone: it ended while the agent was not running' },
      ]);
      driver.running.set(A, 321);

      expect(reconciler.statuses()).toEqual([
        { id: A, state: 'running', reason: '', generation: 4, pid: 321 },
        { id: B, state: 'failed', reason: 'qemu is gone: it ended while the agent was not running', generation: 2, pid: 0 },
        { id: C, state: 'stopped', reason: 'stopped on request', generation: 5, pid: 0 },
      ]);

      reconciler.desired([spec(A, 'running', 4), spec(B, 'running', 2), spec(C, 'stopped', 5)]);
      await reconciler.idle();
      expect(driver.calls.map((c) => c.method)).toEqual(['recover']);
    });
  });
});
