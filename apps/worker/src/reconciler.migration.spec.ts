/** The reconciler's snapshot and migration commands, over a strict fake driver. */
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { agentV1 } from '@hyperplane/proto';
import pino from 'pino';
import { MIGRATION_QUIET_MS, type MigrationProgress } from './drivers/driver';
import { PartitionStore } from './partition-store';
import { INCOMING_RECHECK_MS, INCOMING_REASON, Reconciler } from './reconciler';
import { StrictFakeDriver } from './testing/strict-fake-driver';

const A = '01900000-0000-7000-8000-00000000000a';
const silent = pino({ level: 'silent' });

function spec(id: string, desired: string, generation: number): agentV1.PartitionSpec__Output {
  return { id, name: `p-${id.slice(-1)}`, projectId: 'proj', vcpus: 1, memoryMib: 128, diskGib: 1, image: 'sample', desired, generation };
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

const progressOf = (phase: MigrationProgress['phase']): MigrationProgress => ({
  phase,
  bytesRemaining: 10,
  bytesTransferred: 5,
  bytesTotal: 15,
  dirtyRateBytesPerSec: 4096,
  expectedDowntimeMs: 30,
  cpuThrottlePercent: 0,
  status: 'active',
});

describe('Reconciler snapshot and migration commands', () => {
  let dir: string;
  let driver: StrictFakeDriver;
  let reports: agentV1.PartitionStatus[];
  let progress: agentV1.MigrationProgress[];
  let reconciler: Reconciler;

  const statesOf = (id: string) => reports.filter((r) => r.id === id).map((r) => `${r.state}@${r.generation}${r.reason ? ` (${r.reason})` : ''}`);

  async function make(): Promise<Reconciler> {
    driver.when('recover', async () => []);
    const r = new Reconciler({ driver, store: new PartitionStore(dir), report: (s) => reports.push(s), migrationProgress: (p) => progress.push(p), address: '127.0.0.9', log: silent });
    await r.init();
    return r;
  }

  /** A partition A running on this node (generation 2). */
  async function running(): Promise<void> {
    driver.when('start', async (s) => {
      driver.running.set(s.id, 77);
      return { pid: 77 };
    });
    reconciler.upsert(spec(A, 'running', 2));
    await reconciler.idle();
  }

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hp-reconciler-mig-'));
    driver = new StrictFakeDriver();
    reports = [];
    progress = [];
    reconciler = await make();
  });

  afterEach(async () => {
    await reconciler.idle();
    expect(driver.unexpected).toEqual([]);
    await rm(dir, { recursive: true, force: true });
  });

  describe('snapshots', () => {
    it('snapshot commands run after what is queued for the partition and answer JSON payloads', async () => {
      const gate = deferred<{ pid: number }>();
      driver.when('start', () => gate.promise.then((g) => (driver.running.set(A, g.pid), g)));
      const entry = { tag: 's1', vmStateBytes: 100, createdAt: '2026-11-23T20:00:00.000Z', vmClockMs: 5000 };
      driver.when('snapshotCreate', async () => entry).when('snapshotList', async () => [entry]).when('snapshotRevert', async () => undefined).when('snapshotDelete', async () => undefined);
      reconciler.upsert(spec(A, 'running', 1));

      const created = reconciler.command({ id: 'c1', body: 'snapshotCreate', snapshotCreate: { partitionId: A, tag: 's1', withMemory: true } });
      await new Promise((r) => setTimeout(r, 10));
      expect(driver.callsOf('snapshotCreate')).toEqual([]); // waits for the start
      gate.resolve({ pid: 5 });

      await expect(created).resolves.toEqual({ commandId: 'c1', ok: true, errorCode: '', errorMessage: '', payload: JSON.stringify(entry) });
      expect(driver.callsOf('snapshotCreate')).toEqual([[A, { tag: 's1', withMemory: true }]]);
      await expect(reconciler.command({ id: 'c2', body: 'snapshotList', snapshotList: { partitionId: A } })).resolves.toMatchObject({ ok: true, payload: JSON.stringify({ snapshots: [entry] }) });
      await expect(reconciler.command({ id: 'c3', body: 'snapshotRevert', snapshotRevert: { partitionId: A, tag: 's1' } })).resolves.toMatchObject({ ok: true });
      await expect(reconciler.command({ id: 'c4', body: 'snapshotDelete', snapshotDelete: { partitionId: A, tag: 's1' } })).resolves.toMatchObject({ ok: true });
      expect(driver.callsOf('snapshotRevert')).toEqual([[A, 's1']]);
      expect(driver.callsOf('snapshotDelete')).toEqual([[A, 's1']]);
    });

    it('a driver error becomes the result: its domain code and message', async () => {
      await running();
      driver.when('snapshotRevert', async () => {
        throw Object.assign(new Error("snapshot 'x' not found"), { code: 'NOT_FOUND' });
      });

      await expect(reconciler.command({ id: 'c', body: 'snapshotRevert', snapshotRevert: { partitionId: A, tag: 'x' } })).resolves.toEqual({
        commandId: 'c',
        ok: false,
        errorCode: 'NOT_FOUND',
        errorMessage: "snapshot 'x' not found",
        payload: '',
      });
      await expect(reconciler.command({ id: 'd', body: 'snapshotList', snapshotList: { partitionId: 'nope' } })).resolves.toMatchObject({ ok: false, errorCode: 'NOT_FOUND' });
    });
  });

  describe('source side', () => {
    it('a completed migration forwards progress, then forgets the partition and reports it absent', async () => {
      await running();
      driver.when('migrationStart', async (id, _target, _options, onProgress) => {
        onProgress?.(progressOf('storage'));
        onProgress?.(progressOf('memory'));
        driver.running.delete(id);
        return { totalTimeMs: 500, downtimeMs: 60, storageMs: 100, ramTransferredBytes: 1, postcopy: false };
      });

      const result = await reconciler.command({
        id: 'm1',
        body: 'migrationStart',
        migrationStart: { partitionId: A, targetHost: '127.0.0.2', targetPort: 4000, targetNbdPort: 4001, storage: 'copy', exportName: 'disk0', migrationId: 'op-1', options: { maxDowntimeMs: 200, bandwidthBytesPerSec: 0, autoConverge: true, postcopy: false, postcopyAfterMs: 0, stallTimeoutMs: 0, discardSnapshots: false } },
      });

      expect(result).toMatchObject({ ok: true, payload: JSON.stringify({ totalTimeMs: 500, downtimeMs: 60, storageMs: 100, ramTransferredBytes: 1, postcopy: false }) });
      expect(driver.callsOf('migrationStart')).toEqual([
        [A, { host: '127.0.0.2', port: 4000, storage: 'copy', nbdPort: 4001, exportName: 'disk0' }, { maxDowntimeMs: 200, bandwidthBytesPerSec: undefined, autoConverge: true, postcopy: false, postcopyAfterMs: undefined, stallTimeoutMs: undefined, discardSnapshots: false }],
      ]);
      expect(progress.map((p) => [p.partitionId, p.migrationId, p.phase, p.dirtyRateBytesPerSec])).toEqual([
        [A, 'op-1', 'storage', 4096],
        [A, 'op-1', 'memory', 4096],
      ]);
      await new Promise((r) => setImmediate(r)); // reported after the answer
      // Over within MIGRATION_QUIET_MS: its migrating state was never reported, only its end.
      expect(statesOf(A).slice(-2)).toEqual(['running@2', 'absent@2 (migrated away)']);
      expect(reconciler.stateOf(A)).toBeUndefined();
      expect(existsSync(join(dir, 'partitions', A, 'state.json'))).toBe(false); // the record; the driver removes its files when the paused QEMU quits
    });

    it('a completed migration is answered as one even when its record cannot be removed (the guest is elsewhere now)', async () => {
      await running();
      driver.when('migrationStart', async (id) => {
        driver.running.delete(id);
        return { totalTimeMs: 500, downtimeMs: 60, storageMs: 0, ramTransferredBytes: 1, postcopy: false };
      });
      const store = (reconciler as unknown as { deps: { store: PartitionStore } }).deps.store;
      store.forgetRecord = async () => {
        throw new Error('EIO');
      };
      await expect(reconciler.command({ id: 'm1', body: 'migrationStart', migrationStart: { partitionId: A, targetHost: '127.0.0.2', targetPort: 4000, storage: 'shared', migrationId: 'op-1' } })).resolves.toMatchObject({ ok: true });
      expect(reconciler.stateOf(A)).toBeUndefined();
    });

    it('a migration that outlasts MIGRATION_QUIET_MS reports its migrating state and writes it to the record, then its end', async () => {
      await running();
      const finish = deferred();
      driver.when('migrationStart', async (id) => {
        await finish.promise;
        driver.running.delete(id);
        return { totalTimeMs: 500, downtimeMs: 60, storageMs: 0, ramTransferredBytes: 1, postcopy: false };
      });
      const started = reconciler.command({ id: 'm1', body: 'migrationStart', migrationStart: { partitionId: A, targetHost: '127.0.0.2', targetPort: 4000, storage: 'shared', migrationId: 'op-1' } });
      await new Promise((r) => setTimeout(r, MIGRATION_QUIET_MS / 2));
      expect(statesOf(A).at(-1)).toBe('running@2'); // not yet
      await new Promise((r) => setTimeout(r, MIGRATION_QUIET_MS));
      expect(statesOf(A).at(-1)).toBe('running@2 (migrating to 127.0.0.2:4000)');
      expect(JSON.parse(readFileSync(join(dir, 'partitions', A, 'state.json'), 'utf8'))).toMatchObject({ state: 'running', reason: 'migrating to 127.0.0.2:4000' });
      finish.resolve();
      await expect(started).resolves.toMatchObject({ ok: true });
      await new Promise((r) => setImmediate(r));
      expect(statesOf(A).at(-1)).toBe('absent@2 (migrated away)');
      expect(existsSync(join(dir, 'partitions', A, 'state.json'))).toBe(false);
    });

    it('migration_cancel reaches the migration that holds the queue; the partition stays running', async () => {
      await running();
      const cancelled = deferred();
      driver.when('migrationStart', async () => {
        await cancelled.promise;
        throw Object.assign(new Error('the migration was cancelled; it keeps running here'), { code: 'CANCELLED' });
      });
      driver.when('migrationCancel', async () => cancelled.resolve());

      const started = reconciler.command({ id: 'm1', body: 'migrationStart', migrationStart: { partitionId: A, targetHost: '127.0.0.2', targetPort: 4000, storage: 'copy' } });
      await new Promise((r) => setTimeout(r, 10));
      await expect(reconciler.command({ id: 'm2', body: 'migrationCancel', migrationCancel: { partitionId: A } })).resolves.toMatchObject({ ok: true });

      await expect(started).resolves.toMatchObject({ ok: false, errorCode: 'CANCELLED' });
      expect(reconciler.stateOf(A)).toBe('running');
      expect(statesOf(A).at(-1)).toBe('running@2'); // cancelled within MIGRATION_QUIET_MS: never reported migrating
    });
  });

  describe('destination side', () => {
    const prepare = (generation = 5) =>
      reconciler.command({ id: 'p1', body: 'migrationPrepareTarget', migrationPrepareTarget: { spec: spec(A, 'running', generation), host: '', port: 4000, nbdPort: 0, storage: 'copy', sharedDiskPath: '', postcopy: false } });

    beforeEach(() => {
      driver.when('migrationPrepareTarget', async (_spec, options) => {
        driver.running.set(A, 88);
        return { host: options.host, port: options.port, storage: options.storage, nbdPort: options.port + 1, exportName: 'disk0' };
      });
    });

    it('prepare makes it starting (incoming migration) on the node address, listed but not reported at once; a DesiredState without it keeps it; finish makes it running with the spec generation', async () => {
      await expect(prepare()).resolves.toMatchObject({ ok: true, payload: JSON.stringify({ host: '127.0.0.9', port: 4000, storage: 'copy', nbdPort: 4001, exportName: 'disk0' }) });
      expect(driver.callsOf('migrationPrepareTarget')[0]![1]).toEqual({ host: '127.0.0.9', port: 4000, storage: 'copy', postcopy: false });
      // Not reported: the request that asked may not have committed yet (prepared ahead of it).
      expect(statesOf(A)).toEqual([]);
      expect(reconciler.statuses()).toEqual([{ id: A, state: 'starting', reason: INCOMING_REASON, generation: 5, pid: 0 }]);

      reconciler.desired([]);
      await reconciler.idle();
      expect(reconciler.stateOf(A)).toBe('starting');

      driver.when('migrationFinishTarget', async () => ({ pid: 88 }));
      await expect(reconciler.command({ id: 'f1', body: 'migrationFinishTarget', migrationFinishTarget: { partitionId: A } })).resolves.toMatchObject({ ok: true });
      expect(reconciler.statuses()).toEqual([{ id: A, state: 'running', reason: '', generation: 5, pid: 88 }]);
      expect(statesOf(A).at(-1)).not.toBe('running@5'); // the answer goes first,
      await new Promise((r) => setImmediate(r));
      expect(statesOf(A).at(-1)).toBe('running@5'); // the report (and the record) right after
    });

    it('abort drops it and reports absent; so does the death of the incoming QEMU', async () => {
      await prepare();
      driver.when('migrationAbortTarget', async () => void driver.running.delete(A));
      await expect(reconciler.command({ id: 'a1', body: 'migrationAbortTarget', migrationAbortTarget: { partitionId: A } })).resolves.toMatchObject({ ok: true });
      expect(statesOf(A).at(-1)).toBe('absent@5 (migration aborted)');
      expect(reconciler.stateOf(A)).toBeUndefined();

      await prepare(6);
      driver.exit(A, { pid: 88, state: 'failed', reason: 'qemu exited with signal SIGKILL', requested: false });
      await reconciler.idle();
      expect(statesOf(A).at(-1)).toBe('absent@6 (incoming migration ended: qemu exited with signal SIGKILL)');
      expect(existsSync(join(dir, 'partitions', A))).toBe(false);
    });

    it('an incoming partition is reported again once a minute until it ends, and an explicit absent (the migration ended elsewhere) drops it', async () => {
      const t0 = Date.now();
      await prepare();
      expect(statesOf(A)).toEqual([]);
      reconciler.recheckIncoming(t0 + INCOMING_RECHECK_MS - 1_000);
      expect(statesOf(A)).toHaveLength(0); // not yet
      const later = Date.now() + INCOMING_RECHECK_MS;
      reconciler.recheckIncoming(later);
      reconciler.recheckIncoming(later + 1_000); // once per period
      expect(statesOf(A)).toEqual([`starting@5 (${INCOMING_REASON})`]);
      reconciler.recheckIncoming(later + INCOMING_RECHECK_MS);
      expect(statesOf(A)).toEqual([`starting@5 (${INCOMING_REASON})`, `starting@5 (${INCOMING_REASON})`]);

      // The control plane's answer to a report of a migration that is over: absent, a generation on.
      driver.when('migrationAbortTarget', async () => void driver.running.delete(A));
      reconciler.upsert({ ...spec(A, 'absent', 6) });
      await reconciler.idle();
      expect(reconciler.stateOf(A)).toBeUndefined();
      expect(statesOf(A).at(-1)).toBe('absent@6 (dropped: the control plane does not migrate it here)');
      expect(driver.callsOf('migrationAbortTarget')).toEqual([[A]]);
      reconciler.recheckIncoming(later + 2 * INCOMING_RECHECK_MS);
      expect(statesOf(A).at(-1)).toMatch(/^absent@/); // nothing more about it

      // A finished one is not reported as incoming again.
      await prepare(7);
      driver.when('migrationFinishTarget', async () => ({ pid: 88 }));
      await reconciler.command({ id: 'f1', body: 'migrationFinishTarget', migrationFinishTarget: { partitionId: A } });
      const n = statesOf(A).length;
      reconciler.recheckIncoming(Date.now() + 2 * INCOMING_RECHECK_MS);
      expect(statesOf(A)).toHaveLength(n);
    });

    it('a second prepare of the same migration (prepared ahead, then by the operation) joins the first; another migration is refused', async () => {
      const slow = deferred<void>();
      driver.when('migrationPrepareTarget', async (_spec, options) => {
        await slow.promise;
        driver.running.set(A, 88);
        return { host: options.host, port: options.port, storage: options.storage };
      });
      const body = (id: string, migrationId: string) => ({ id, body: 'migrationPrepareTarget', migrationPrepareTarget: { spec: spec(A, 'running', 5), port: 4000, storage: 'shared', sharedDiskPath: '/d/disk.qcow2', migrationId } }) as const;
      const first = reconciler.command(body('p1', 'm-1'));
      await new Promise((r) => setTimeout(r, 0));
      const again = reconciler.command(body('p2', 'm-1'));
      const other = reconciler.command(body('p3', 'm-2'));
      await expect(other).resolves.toMatchObject({ commandId: 'p3', ok: false, errorCode: 'FAILED_PRECONDITION' });
      slow.resolve();
      const answer = { ok: true, payload: JSON.stringify({ host: '127.0.0.9', port: 4000, storage: 'shared' }) };
      await expect(first).resolves.toMatchObject({ commandId: 'p1', ...answer });
      await expect(again).resolves.toMatchObject({ commandId: 'p2', ...answer });
      expect(driver.callsOf('migrationPrepareTarget')).toHaveLength(1);
      // Once finished it runs here: a prepare of the same migration is refused then.
      driver.when('migrationFinishTarget', async () => ({ pid: 88 }));
      await expect(reconciler.command({ id: 'f1', body: 'migrationFinishTarget', migrationFinishTarget: { partitionId: A } })).resolves.toMatchObject({ ok: true });
      await expect(reconciler.command(body('p4', 'm-1'))).resolves.toMatchObject({ ok: false, errorCode: 'FAILED_PRECONDITION' });
    });

    it('a prepare that arrives after its migration was aborted for good is refused; an abort without the id does not refuse it', async () => {
      driver.when('migrationAbortTarget', async () => undefined);
      const body = (id: string, migrationId: string) => ({ id, body: 'migrationPrepareTarget', migrationPrepareTarget: { spec: spec(A, 'running', 5), port: 4000, storage: 'copy', migrationId } }) as const;
      // The abort of a re-run (no id), then its prepare: fine.
      await expect(reconciler.command({ id: 'a0', body: 'migrationAbortTarget', migrationAbortTarget: { partitionId: A } })).resolves.toMatchObject({ ok: true });
      await expect(reconciler.command(body('p0', 'm-7'))).resolves.toMatchObject({ ok: true });
      driver.when('migrationAbortTarget', async () => void driver.running.delete(A));
      await expect(reconciler.command({ id: 'a1', body: 'migrationAbortTarget', migrationAbortTarget: { partitionId: A, migrationId: 'm-7' } })).resolves.toMatchObject({ ok: true });
      // Aborted before the (delayed) prepare of another migration arrived.
      await expect(reconciler.command({ id: 'a2', body: 'migrationAbortTarget', migrationAbortTarget: { partitionId: A, migrationId: 'm-8' } })).resolves.toMatchObject({ ok: true });
      await expect(reconciler.command(body('p1', 'm-8'))).resolves.toMatchObject({ ok: false, errorCode: 'FAILED_PRECONDITION', errorMessage: expect.stringContaining('m-8') });
      await expect(reconciler.command(body('p2', 'm-7'))).resolves.toMatchObject({ ok: false, errorCode: 'FAILED_PRECONDITION' });
      expect(reconciler.stateOf(A)).toBeUndefined();
      expect(driver.callsOf('migrationPrepareTarget')).toHaveLength(1);
    });

    it('an abort naming another migration (the undo of an older one, run late) leaves the incoming migration alone', async () => {
      driver.when('migrationPrepareTarget', async (_spec, options) => {
        driver.running.set(A, 88);
        return { host: options.host, port: options.port, storage: options.storage };
      });
      driver.when('migrationAbortTarget', async () => void driver.running.delete(A));
      await expect(reconciler.command({ id: 'p1', body: 'migrationPrepareTarget', migrationPrepareTarget: { spec: spec(A, 'running', 5), port: 4000, storage: 'shared', sharedDiskPath: '/d/disk.qcow2', migrationId: 'm-new' } })).resolves.toMatchObject({ ok: true });
      await expect(reconciler.command({ id: 'a1', body: 'migrationAbortTarget', migrationAbortTarget: { partitionId: A, migrationId: 'm-old' } })).resolves.toMatchObject({ ok: true });
      expect(driver.callsOf('migrationAbortTarget')).toHaveLength(0);
      expect(reconciler.stateOf(A)).toBe('starting');
      // Its own abort still works.
      await expect(reconciler.command({ id: 'a2', body: 'migrationAbortTarget', migrationAbortTarget: { partitionId: A, migrationId: 'm-new' } })).resolves.toMatchObject({ ok: true });
      expect(driver.callsOf('migrationAbortTarget')).toHaveLength(1);
      expect(reconciler.stateOf(A)).toBeUndefined();
    });

    it('prepare for a partition the node has already is refused; a failed prepare leaves nothing', async () => {
      await running();
      await expect(prepare()).resolves.toMatchObject({ ok: false, errorCode: 'FAILED_PRECONDITION' });
      expect(driver.callsOf('migrationPrepareTarget')).toEqual([]);

      const other = '01900000-0000-7000-8000-00000000000c';
      driver.when('migrationPrepareTarget', async () => {
        throw Object.assign(new Error('port in use'), { code: 'INTERNAL' });
      });
      await expect(reconciler.command({ id: 'p2', body: 'migrationPrepareTarget', migrationPrepareTarget: { spec: spec(other, 'running', 1), port: 4000, storage: 'copy' } })).resolves.toMatchObject({ ok: false, errorMessage: 'port in use' });
      expect(reconciler.stateOf(other)).toBeUndefined();
    });
  });

  describe('cold migration', () => {
    it('destination: starting until the disk arrived, then stopped with the spec generation; source: absent once sent', async () => {
      const arrived = deferred();
      driver.when('coldMigrationPrepareTarget', async (_spec, options) => ({ target: { host: options.host, port: options.port }, received: arrived.promise }));
      const other = '01900000-0000-7000-8000-00000000000c';

      await expect(reconciler.command({ id: 'c1', body: 'coldMigrationPrepareTarget', coldMigrationPrepareTarget: { spec: spec(other, 'stopped', 4), port: 5000 } })).resolves.toMatchObject({
        ok: true,
        payload: JSON.stringify({ host: '127.0.0.9', port: 5000 }),
      });
      expect(statesOf(other)).toEqual(['starting@4 (incoming cold migration)']);
      arrived.resolve();
      await new Promise((r) => setTimeout(r, 0));
      await reconciler.idle();
      expect(statesOf(other).at(-1)).toBe('stopped@4');

      reconciler.upsert(spec(A, 'stopped', 2));
      await reconciler.idle();
      driver.when('coldMigrationSend', async () => ({ bytes: 10, ms: 1 }));
      await expect(reconciler.command({ id: 'c2', body: 'coldMigrationSend', coldMigrationSend: { partitionId: A, targetHost: '127.0.0.2', targetPort: 5000 } })).resolves.toMatchObject({ ok: true });
      expect(driver.callsOf('coldMigrationSend')).toEqual([[A, { host: '127.0.0.2', port: 5000 }]]);
      await new Promise((r) => setImmediate(r)); // reported after the answer
      expect(statesOf(A).at(-1)).toBe('absent@2 (migrated away)');
    });
  });
});
