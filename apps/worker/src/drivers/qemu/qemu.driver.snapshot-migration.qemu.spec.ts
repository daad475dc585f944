/**
 * Snapshots and live migration of the QEMU driver against real QEMU and the sample guest (TCG,
 * 128 MiB guests, one after the other). The guest prints `hb <n>` once a second: a revert must
 * make the count go back to the snapshot's value, a migration must let it go on (no reset).
 * Two drivers with their own data dirs stand for two nodes on 127.0.0.1. afterAll kills every
 * QEMU that names either data dir, even after a failure.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import pino from 'pino';
import type { GuestSpec, MigrationProgress } from '../driver';
import { findOnPath } from './host-tools';
import { QemuDriver } from './qemu.driver';
import { pidAlive, readPidFile, waitForPidExit } from './qemu-process';

const REPO_ROOT = join(__dirname, '../../../../..');
const GUEST_DIR = process.env.HYPERPLANE_GUEST_DIR ?? join(REPO_ROOT, '.hyperplane', 'guest');
const BOOT_TIMEOUT_MS = 60_000;

const missing = !findOnPath('qemu-system-x86_64')
  ? 'qemu-system-x86_64 is not on PATH'
  : !findOnPath('qemu-img')
    ? 'qemu-img is not on PATH'
    : !existsSync(join(GUEST_DIR, 'sample.qcow2'))
      ? `no sample guest at ${join(GUEST_DIR, 'sample.qcow2')} (run npm run guest:build)`
      : '';
if (missing) console.warn(`Skipping the real-QEMU snapshot and migration spec: ${missing}.`);
const describeWithQemu = missing ? describe.skip : describe;

const silent = pino({ level: 'silent' });
const IDS = {
  snap: '01900000-0000-7000-8000-0000000000b1',
  migrate: '01900000-0000-7000-8000-0000000000b2',
  cancel: '01900000-0000-7000-8000-0000000000b3',
  kill: '01900000-0000-7000-8000-0000000000b4',
  shared: '01900000-0000-7000-8000-0000000000b5',
  cold: '01900000-0000-7000-8000-0000000000b6',
  restart: '01900000-0000-7000-8000-0000000000b7',
  cut: '01900000-0000-7000-8000-0000000000b8',
  stopped: '01900000-0000-7000-8000-0000000000b9',
};

/** Pids of every QEMU whose command line mentions `needle`. */
function qemusMentioning(needle: string): number[] {
  const qemu = findOnPath('qemu-system-x86_64') ?? 'qemu-system';
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (cmdline.startsWith(qemu) && cmdline.includes(needle) && pidAlive(Number(entry))) pids.push(Number(entry));
    } catch {
      continue;
    }
  }
  return pids;
}

/** SIGKILLs every QEMU that names `dir` (one that exits meanwhile is fine) and waits for each to go. */
async function killQemusOf(dir: string): Promise<void> {
  for (const pid of qemusMentioning(dir)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      continue; // gone meanwhile
    }
    await waitForPidExit(pid, 5_000);
  }
}

/** Every heartbeat number in a console log, in order. */
function beats(text: string): number[] {
  return [...text.replaceAll('\r', '').matchAll(/hb (\d+)$/gm)].map((m) => Number(m[1]));
}

/**
 * Waits (up to 10 s) until a node has nothing left of a partition that migrated away: no files,
 * no QEMU, and its driver no longer runs it. The source's pid is watched as well as the command
 * lines: a QEMU that is tearing its memory down already shows an empty command line.
 */
async function sourceGone(driver: QemuDriver, dir: string, id: string, pid: number): Promise<void> {
  const pdir = join(dir, 'partitions', id);
  const left = () => existsSync(pdir) || qemusMentioning(pdir).length > 0 || pidAlive(pid) || driver.isRunning(id);
  for (let i = 0; i < 100 && left(); i++) await new Promise((r) => setTimeout(r, 100));
  expect(existsSync(pdir)).toBe(false);
  expect(qemusMentioning(pdir)).toEqual([]);
  expect(pidAlive(pid)).toBe(false);
  expect(driver.isRunning(id)).toBe(false);
}

/** A TCP port that is free, with the next one free too (migration stream + NBD). */
async function freePortPair(): Promise<number> {
  const probe = (port: number) =>
    new Promise<boolean>((resolve) => {
      const server = createServer();
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
    });
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 40_000);
    if ((await probe(port)) && (await probe(port + 1))) return port;
  }
}

describeWithQemu(`QemuDriver snapshots and migration against real QEMU${missing ? ` (skipped: ${missing})` : ''}`, () => {
  let dirA: string;
  let dirB: string;
  let a: QemuDriver;
  let b: QemuDriver;

  const spec = (id: string): GuestSpec => ({ id, name: `spec-${id.slice(-2)}`, vcpus: 1, memoryMiB: 128, diskGiB: 0, image: 'sample' });
  const consoleOf = (dataDir: string, id: string) => join(dataDir, 'partitions', id, 'console.log');

  async function readBeats(dataDir: string, id: string, fromByte = 0): Promise<number[]> {
    const buf = await readFile(consoleOf(dataDir, id)).catch(() => Buffer.alloc(0));
    return beats(buf.subarray(fromByte).toString('utf8'));
  }

  async function consoleSize(dataDir: string, id: string): Promise<number> {
    return (await stat(consoleOf(dataDir, id)).catch(() => ({ size: 0 }))).size;
  }

  /** Waits for `count` heartbeats after byte `fromByte` of the console log and returns them. */
  async function nextBeats(dataDir: string, id: string, fromByte: number, count: number, timeoutMs = 20_000): Promise<number[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const seen = await readBeats(dataDir, id, fromByte);
      if (seen.length >= count) return seen;
      if (Date.now() > deadline) throw new Error(`fewer than ${count} heartbeats within ${timeoutMs} ms after byte ${fromByte} (saw ${JSON.stringify(seen)})`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** The last heartbeat printed so far (waits for the first one). */
  async function lastBeat(dataDir: string, id: string): Promise<number> {
    const seen = await nextBeats(dataDir, id, 0, 1, BOOT_TIMEOUT_MS);
    return seen.at(-1)!;
  }

  async function waitBeatAtLeast(dataDir: string, id: string, n: number): Promise<number> {
    const deadline = Date.now() + BOOT_TIMEOUT_MS;
    for (;;) {
      const seen = await readBeats(dataDir, id);
      if ((seen.at(-1) ?? 0) >= n) return seen.at(-1)!;
      if (Date.now() > deadline) throw new Error(`no hb ${n} within ${BOOT_TIMEOUT_MS} ms (saw ${JSON.stringify(seen.slice(-5))})`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  beforeAll(async () => {
    // Short paths: unix socket paths are limited to 107 bytes.
    dirA = await mkdtemp('/tmp/hpa-');
    dirB = await mkdtemp('/tmp/hpb-');
    a = new QemuDriver({ dataDir: dirA, accel: 'tcg', log: silent });
    b = new QemuDriver({ dataDir: dirB, accel: 'tcg', log: silent });
    for (const d of [a, b]) {
      d.setListener({ onExit: () => undefined, onEvent: () => undefined });
      expect(['linked', 'copied']).toContain(await d.images.seed(GUEST_DIR));
    }
  });

  // One test's failure leaves nothing for the next to trip over: whatever it left running goes,
  // and a driver it closed (the agent-restart tests) is replaced.
  afterEach(async () => {
    const fresh = (d: QemuDriver, dataDir: string) => {
      if (!(d as unknown as { closed: boolean }).closed) return d;
      const n = new QemuDriver({ dataDir, accel: 'tcg', log: silent });
      n.setListener({ onExit: () => undefined, onEvent: () => undefined });
      return n;
    };
    a = fresh(a, dirA);
    b = fresh(b, dirB);
    for (const d of [a, b]) for (const id of Object.values(IDS)) await d.destroy(id).catch(() => undefined);
    for (const dir of [dirA, dirB]) await killQemusOf(dir);
  }, 60_000);

  afterAll(async () => {
    await a?.close();
    await b?.close();
    for (const dir of [dirA, dirB]) {
      await killQemusOf(dir);
      expect(qemusMentioning(dir)).toEqual([]);
      await rm(dir, { recursive: true, force: true });
    }
  }, 30_000);

  it('revert to an older snapshot while a newer one exists resumes the heartbeat from that snapshot; the newer one still reverts after the older is deleted', async () => {
    const id = IDS.snap;
    await a.start(spec(id));
    await waitBeatAtLeast(dirA, id, 3);

    let t0 = Date.now();
    const s1 = await a.snapshotCreate(id, { tag: 's1', withMemory: true });
    const save1Ms = Date.now() - t0;
    const n1 = await lastBeat(dirA, id);
    await waitBeatAtLeast(dirA, id, n1 + 4);
    t0 = Date.now();
    await a.snapshotCreate(id, { tag: 's2', withMemory: true });
    const save2Ms = Date.now() - t0;
    const n2 = await lastBeat(dirA, id);
    expect(n2).toBeGreaterThanOrEqual(n1 + 4);
    expect(s1.vmStateBytes).toBeGreaterThan(0);
    expect((await a.snapshotList(id)).map((s) => s.tag)).toEqual(['s1', 's2']);
    await waitBeatAtLeast(dirA, id, n2 + 3);

    let from = await consoleSize(dirA, id);
    t0 = Date.now();
    await a.snapshotRevert(id, 's1');
    const revert1Ms = Date.now() - t0;
    const after1 = await nextBeats(dirA, id, from, 2);
    // The count goes on from s1's value: not from where it was, not from 1.
    expect(after1[0]).toBeGreaterThanOrEqual(n1);
    expect(after1[0]).toBeLessThanOrEqual(n1 + 2);
    expect(after1[1]).toBe(after1[0]! + 1);
    expect(a.isRunning(id)).toBe(true);

    from = await consoleSize(dirA, id);
    t0 = Date.now();
    await a.snapshotRevert(id, 's2');
    const revert2Ms = Date.now() - t0;
    const after2 = await nextBeats(dirA, id, from, 2);
    expect(after2[0]).toBeGreaterThanOrEqual(n2);
    expect(after2[0]).toBeLessThanOrEqual(n2 + 2);

    await a.snapshotDelete(id, 's1');
    expect((await a.snapshotList(id)).map((s) => s.tag)).toEqual(['s2']);
    await waitBeatAtLeast(dirA, id, n2 + 4);
    from = await consoleSize(dirA, id);
    await a.snapshotRevert(id, 's2');
    const after3 = await nextBeats(dirA, id, from, 1);
    expect(after3[0]).toBeGreaterThanOrEqual(n2);
    expect(after3[0]).toBeLessThanOrEqual(n2 + 2);

    // A tag that exists is refused and the existing snapshot stays; an unknown tag is NOT_FOUND.
    await expect(a.snapshotCreate(id, { tag: 's2', withMemory: true })).rejects.toThrow(/already has a snapshot tagged s2/);
    await expect(a.snapshotRevert(id, 'nope')).rejects.toThrow(/not found/);
    expect((await a.snapshotList(id)).map((s) => s.tag)).toEqual(['s2']);

    // A disk-only snapshot of the running guest: no memory state, so it cannot be loaded live.
    const diskOnly = await a.snapshotCreate(id, { tag: 'disk-only', withMemory: false });
    expect(diskOnly.vmStateBytes).toBe(0);
    await expect(a.snapshotRevert(id, 'disk-only')).rejects.toThrow(/holds no memory state/);
    await a.snapshotDelete(id, 'disk-only');
    expect(a.isRunning(id)).toBe(true);
    // The refused reverts (QEMU is asked and says no) left the guest running on from where it was.
    expect((await (a as unknown as { instances: Map<string, { qmp: { queryStatus(): Promise<{ running: boolean }> } }> }).instances.get(id)!.qmp.queryStatus()).running).toBe(true);
    const last = await lastBeat(dirA, id);
    from = await consoleSize(dirA, id);
    expect((await nextBeats(dirA, id, from, 1))[0]).toBeGreaterThan(last);

    // Disk-only snapshots of the stopped partition, through qemu-img (no QEMU runs).
    await a.stop(id, { force: true, graceMs: 0 });
    const cold = await a.snapshotCreate(id, { tag: 'cold', withMemory: false });
    expect(cold.vmStateBytes).toBe(0);
    expect((await a.snapshotList(id)).map((s) => s.tag)).toEqual(['s2', 'cold']);
    await a.snapshotRevert(id, 'cold');
    await a.snapshotDelete(id, 'cold');
    expect((await a.snapshotList(id)).map((s) => s.tag)).toEqual(['s2']);
    await a.destroy(id);
    console.log(`snapshot save (128 MiB guest, TCG): ${save1Ms} ms, ${save2Ms} ms (vmstate ${Math.round(s1.vmStateBytes / 2 ** 20)} MiB); revert ${revert1Ms} ms, ${revert2Ms} ms; beats s1=${n1} s2=${n2} after revert s1: ${after1.join(',')}, s2: ${after2.join(',')}`);
  }, 180_000);

  it('live migration with copy-storage: the heartbeat goes on at the destination, nothing is left at the source', async () => {
    const id = IDS.migrate;
    const { pid: sourcePid } = await a.start(spec(id));
    await waitBeatAtLeast(dirA, id, 3);

    const port = await freePortPair();
    const target = await b.migrationPrepareTarget(spec(id), { host: '127.0.0.1', port, storage: 'copy' });
    expect(target).toEqual({ host: '127.0.0.1', port, storage: 'copy', nbdPort: port + 1, exportName: 'disk0' });
    const progress: MigrationProgress[] = [];
    let lastOnSource = 0;
    const t0 = Date.now();
    // At 32 MiB/s the memory copy outlasts MIGRATION_QUIET_MS, so its progress is reported too.
    const result = await a.migrationStart(id, target, { maxDowntimeMs: 300, bandwidthBytesPerSec: 32 * 2 ** 20 }, (p) => {
      progress.push(p);
      const seen = beats(readFileSync(consoleOf(dirA, id), 'utf8'));
      lastOnSource = Math.max(lastOnSource, seen.at(-1) ?? 0);
    });
    const sourceDoneMs = Date.now() - t0;
    // Completed: the guest is paused on the source; its last beat there (no progress report says so now).
    lastOnSource = Math.max(lastOnSource, beats(readFileSync(consoleOf(dirA, id), 'utf8')).at(-1) ?? 0);
    await b.migrationFinishTarget(id);
    const switchMs = Date.now() - t0;

    // The paused source quits while the destination takes over: gone within moments.
    await sourceGone(a, dirA, id, sourcePid);
    expect(b.isRunning(id)).toBe(true);
    expect(progress.map((p) => p.phase)).toEqual(expect.arrayContaining(['storage', 'memory']));
    expect(progress.map((p) => p.phase)).not.toContain('completed'); // told by the result, not by a progress report
    const onDest = await nextBeats(dirB, id, 0, 2);
    expect(onDest[0]).toBeGreaterThan(1);
    expect(onDest[0]).toBeGreaterThanOrEqual(lastOnSource);
    expect(onDest[0]).toBeLessThanOrEqual(lastOnSource + 3);
    expect(onDest[1]).toBe(onDest[0]! + 1);
    console.log(
      `live migration with copy-storage (128 MiB guest, TCG, 127.0.0.1): total ${result.totalTimeMs} ms (disk ${result.storageMs} ms), ` +
        `QEMU downtime ${result.downtimeMs} ms, source done after ${sourceDoneMs} ms, guest running on the destination after ${switchMs} ms; ` +
        `RAM sent ${Math.round(result.ramTransferredBytes / 2 ** 20)} MiB; last beat on source ${lastOnSource}, first on destination ${onDest[0]}`,
    );
    await b.destroy(id);
  }, 180_000);

  it('live migration with shared storage (the same disk file under both nodes): the heartbeat goes on, snapshots stay', async () => {
    const id = IDS.shared;
    const { pid: sourcePid } = await a.start(spec(id));
    await waitBeatAtLeast(dirA, id, 3);
    await a.snapshotCreate(id, { tag: 'keep', withMemory: true });

    const port = await freePortPair();
    const target = await b.migrationPrepareTarget(spec(id), { host: '127.0.0.1', port, storage: 'shared', sharedDiskPath: join(dirA, 'partitions', id, 'disk.qcow2') });
    let lastOnSource = 0;
    const lastBeatOnSource = () => (lastOnSource = Math.max(lastOnSource, beats(readFileSync(consoleOf(dirA, id), 'utf8')).at(-1) ?? 0));
    const result = await a.migrationStart(id, target, {}, lastBeatOnSource);
    // Completed: the guest is paused on the source (its files stay until it quits, moments later).
    // A migration shorter than MIGRATION_QUIET_MS reports no progress, so this is its only look.
    lastBeatOnSource();
    await b.migrationFinishTarget(id);

    await sourceGone(a, dirA, id, sourcePid);
    const onDest = await nextBeats(dirB, id, 0, 2);
    expect(onDest[0]).toBeGreaterThan(1);
    expect(onDest[0]).toBeLessThanOrEqual(lastOnSource + 3);
    expect((await b.snapshotList(id)).map((s) => s.tag)).toEqual(['keep']);
    console.log(`live migration with shared storage: total ${result.totalTimeMs} ms, QEMU downtime ${result.downtimeMs} ms`);
    await b.destroy(id);
  }, 180_000);

  it('source agent stopped after the migration completed, before its paused QEMU quit: the next agent retires it and says the partition moved away', async () => {
    const id = IDS.stopped;
    await a.start(spec(id));
    await waitBeatAtLeast(dirA, id, 2);
    // The agent that migrates "dies" before retiring its source: it waits a minute to.
    const dying = new QemuDriver({ dataDir: dirA, accel: 'tcg', log: silent, retireAfterMs: 60_000 });
    dying.setListener({ onExit: () => undefined, onEvent: () => undefined });
    await a.close();
    expect((await dying.recover()).find((f) => f.id === id)).toMatchObject({ alive: true, status: 'running' });
    const sourcePid = (await readPidFile(join(dirA, 'partitions', id, 'qemu.pid')))!;

    const port = await freePortPair();
    const target = await b.migrationPrepareTarget(spec(id), { host: '127.0.0.1', port, storage: 'shared', sharedDiskPath: join(dirA, 'partitions', id, 'disk.qcow2') });
    await dying.migrationStart(id, target, {});
    expect(pidAlive(sourcePid)).toBe(true); // paused (postmigrate), waiting to quit
    // Its QMP connection goes as with the agent's process (QEMU takes one client at a time).
    await (dying as unknown as { instances: Map<string, { qmp?: { close(): Promise<void> } }> }).instances.get(id)?.qmp?.close();

    a = new QemuDriver({ dataDir: dirA, accel: 'tcg', log: silent });
    a.setListener({ onExit: () => undefined, onEvent: () => undefined });
    expect((await a.recover()).find((f) => f.id === id)).toEqual({ id, alive: false, movedAway: true, reason: 'migrated away' });
    expect(pidAlive(sourcePid)).toBe(false);
    expect(existsSync(join(dirA, 'partitions', id))).toBe(false);
    await b.migrationFinishTarget(id);
    await nextBeats(dirB, id, 0, 2);
    await b.destroy(id);
    await dying.close();
  }, 180_000);

  it('cold migration of a stopped partition: the disk file moves with its snapshots, boots at the destination, and is gone from the source', async () => {
    const id = IDS.cold;
    const { pid } = await a.start(spec(id));
    await waitBeatAtLeast(dirA, id, 2);
    await a.stop(id, { force: true, graceMs: 0 });
    await a.snapshotCreate(id, { tag: 'before-move', withMemory: false });
    expect(pidAlive(pid)).toBe(false);

    const port = await freePortPair();
    const { target, received } = await b.coldMigrationPrepareTarget(spec(id), { host: '127.0.0.1', port });
    const sent = await a.coldMigrationSend(id, target);
    await received;

    expect(existsSync(join(dirA, 'partitions', id))).toBe(false);
    expect((await b.snapshotList(id)).map((s) => s.tag)).toEqual(['before-move']);
    const { pid: destPid } = await b.start(spec(id));
    await waitBeatAtLeast(dirB, id, 1);
    expect(readFileSync(`/proc/${destPid}/cmdline`, 'utf8')).toContain(dirB);

    // A receiver that is aborted before anything arrived leaves nothing.
    const other = '01900000-0000-7000-8000-0000000000b9';
    const waiting = await b.coldMigrationPrepareTarget(spec(other), { host: '127.0.0.1', port: await freePortPair() });
    await b.migrationAbortTarget(other);
    await expect(waiting.received).rejects.toThrow(/aborted/);
    expect(existsSync(join(dirB, 'partitions', other))).toBe(false);
    console.log(`cold migration: ${sent.bytes} bytes in ${sent.ms} ms`);
    await b.destroy(id);
  }, 180_000);

  /** Starts a guest on A and a destination on B, and begins a slow migration (1 MiB/s). */
  async function slowMigration(id: string, extra: { stallTimeoutMs?: number } = {}): Promise<{ migration: Promise<unknown>; sourcePid: number; inMemoryPhase: Promise<void> }> {
    const { pid: sourcePid } = await a.start(spec(id));
    await waitBeatAtLeast(dirA, id, 2);
    const port = await freePortPair();
    const target = await b.migrationPrepareTarget(spec(id), { host: '127.0.0.1', port, storage: 'copy' });
    let reached!: () => void;
    const inMemoryPhase = new Promise<void>((r) => (reached = r));
    const migration = a.migrationStart(id, target, { bandwidthBytesPerSec: 2 ** 20, ...extra }, (p) => {
      if (p.phase === 'memory' && p.bytesTransferred > 2 ** 20) reached();
    });
    migration.catch(() => undefined);
    return { migration, sourcePid, inMemoryPhase };
  }

  it('cancel during pre-copy: the guest keeps running on the source, the destination QEMU and files are gone', async () => {
    const id = IDS.cancel;
    const { migration, sourcePid, inMemoryPhase } = await slowMigration(id);
    await inMemoryPhase;
    const destPid = await readPidFile(join(dirB, 'partitions', id, 'qemu.pid'));

    await a.migrationCancel(id);
    await expect(migration).rejects.toThrow(/cancelled/);
    await b.migrationAbortTarget(id);

    expect(a.isRunning(id)).toBe(true);
    expect(pidAlive(sourcePid)).toBe(true);
    const from = await consoleSize(dirA, id);
    await nextBeats(dirA, id, from, 2);
    expect(destPid && pidAlive(destPid)).toBeFalsy();
    expect(qemusMentioning(dirB)).toEqual([]);
    expect(existsSync(join(dirB, 'partitions', id))).toBe(false);
    await a.destroy(id);
  }, 180_000);

  it('destination SIGKILLed mid-migration: the migration fails, the guest keeps running on the source only', async () => {
    const id = IDS.kill;
    const { migration, sourcePid, inMemoryPhase } = await slowMigration(id);
    await inMemoryPhase;
    const destPid = (await readPidFile(join(dirB, 'partitions', id, 'qemu.pid')))!;

    process.kill(destPid, 'SIGKILL');
    await expect(migration).rejects.toThrow(/failed|stalled/);
    await waitForPidExit(destPid, 5_000);

    expect(a.isRunning(id)).toBe(true);
    expect(pidAlive(sourcePid)).toBe(true);
    const from = await consoleSize(dirA, id);
    await nextBeats(dirA, id, from, 2);
    expect(qemusMentioning(dirB)).toEqual([]);
    // The destination driver saw its incoming QEMU die and removed what it had created.
    for (let i = 0; i < 50 && existsSync(join(dirB, 'partitions', id)); i++) await new Promise((r) => setTimeout(r, 100));
    expect(existsSync(join(dirB, 'partitions', id))).toBe(false);
    expect(b.isRunning(id)).toBe(false);
    // A second migration attempt of the same guest works after the failed one.
    await a.destroy(id);
  }, 180_000);

  // A frozen destination (SIGSTOP) keeps its TCP connections up with a zero window, as a cut
  // network does until TCP gives up (~15 min): the worker aborts its connections (`ss -K`).
  it('network to the destination cut (its QEMU frozen): the stalled migration is given up, the guest keeps running on the source', async () => {
    const id = IDS.cut;
    const { migration, sourcePid, inMemoryPhase } = await slowMigration(id, { stallTimeoutMs: 3_000 });
    await inMemoryPhase;
    const destPid = (await readPidFile(join(dirB, 'partitions', id, 'qemu.pid')))!;

    process.kill(destPid, 'SIGSTOP');
    try {
      await expect(migration).rejects.toThrow(/stalled|failed/);
      expect(a.isRunning(id)).toBe(true);
      const from = await consoleSize(dirA, id);
      await nextBeats(dirA, id, from, 2);
    } finally {
      process.kill(destPid, 'SIGCONT');
    }
    await b.migrationAbortTarget(id);
    expect(qemusMentioning(dirB)).toEqual([]);
    expect(pidAlive(sourcePid)).toBe(true);
    await a.destroy(id);
  }, 180_000);

  it('source agent restarted mid-migration: the new agent cancels the migration nobody drives; the guest stays on the source', async () => {
    const id = IDS.restart;
    const { migration, sourcePid, inMemoryPhase } = await slowMigration(id);
    await inMemoryPhase;

    await a.close(); // the agent process goes away; QEMU keeps migrating on its own
    await expect(migration).rejects.toThrow();
    a = new QemuDriver({ dataDir: dirA, accel: 'tcg', log: silent });
    a.setListener({ onExit: () => undefined, onEvent: () => undefined });
    const found = await a.recover();

    expect(found.find((f) => f.id === id)).toEqual({ id, alive: true, pid: sourcePid, status: 'running' });
    const from = await consoleSize(dirA, id);
    await nextBeats(dirA, id, from, 2);
    await b.migrationAbortTarget(id);
    expect(qemusMentioning(dirB)).toEqual([]);
    expect(pidAlive(sourcePid)).toBe(true);
    await a.destroy(id);
  }, 180_000);
});
