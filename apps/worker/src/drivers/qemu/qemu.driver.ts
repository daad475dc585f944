/**
 * The QEMU driver: one `qemu-system-x86_64` process per partition, driven over QMP.
 *
 * Start sequence (after Incus' `driver_qemu.go`): validate everything first (image in the store,
 * sizes, paths, no live QEMU for the partition); then every side effect registers its undo on a
 * reverter — runtime dir, qcow2 overlay, QEMU process (started paused with `-S`), its sockets and
 * pid file — and a failure anywhere takes them all back. QEMU is spawned detached with its output
 * in `qemu.log` and unreferenced, so it outlives the agent (SIGKILL of the agent included); the
 * agent re-attaches through `recover` when it starts again. Only after QMP answered and the pid
 * file matches does `cont` let the guest run.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, createReadStream, existsSync, linkSync, mkdirSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { mkdir, open, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import { createConnection, createServer, type AddressInfo } from 'node:net';
import { totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import type { Duplex } from 'node:stream';
import { CancelledError, DeadlineExceededError, FailedPreconditionError, InternalError, NotFoundError, PARTITION_LIMITS, UUID_RE, ValidationError } from '@hyperplane/domain';
import { QmpClient, type MigrationInfo } from '@hyperplane/qmp';
import type { Logger } from 'pino';
import { freePortPair } from '../../ports';
import { Reverter } from '../../reverter';
import type {
  ChainDiskSpec,
  ColdMigrationReceiver,
  ColdMigrationTarget,
  ConsoleTail,
  DriverListener,
  GuestExit,
  GuestSpec,
  HostFacts,
  ImageEntry,
  ImageFormat,
  MigrationOptions,
  MigrationProgress,
  MigrationResult,
  MigrationTarget,
  MigrationTargetOptions,
  NodeImageStore,
  PartitionDriver,
  RecoveredGuest,
  RunningGuest,
  SnapshotCreateOptions,
  SnapshotEntry,
  StopOptions,
} from '../driver';
import { MIGRATION_QUIET_MS } from '../driver';
import { attachDisk, chainDiskArgs, detachDisk, dropBadReplica, readDisks, writeDisks } from './chain-disks';
import { readTail } from './console-log';
import { chooseAccelerator, cpuFlags, createOverlay, findOnPath, killTcpConnections, qemuMachineTypes, qemuVersion, run, type AccelChoice } from './host-tools';
import { ImageStore } from './image-store';
import { DISK_NODE, EPHEMERAL_FILES, MAX_SOCKET_PATH, RUNTIME_FILES, buildQemuArgs, qemuOptValue } from './qemu-args';
import { checkTag, progressOf, runJob, sleep, snapshotsFromImageInfo, waitJob, watchEvent } from './qemu-jobs';
import { cmdlineContains, connectWhileStarting, pidAlive, readPidFile, readPidFileSync, signalPid, waitForPidExit } from './qemu-process';

/** Settings of a QEMU driver; paths are made absolute. */
export interface QemuDriverOptions {
  /** The node's data dir: runtime dirs go to `partitions/<id>/`, images live in `images/`. */
  dataDir: string;
  /** Accelerator choice (`auto` follows PLATFORM-FACTS: KVM only when usable and vmx/svm present). */
  accel: AccelChoice;
  log: Logger;
  /** Defaults to `qemu-system-x86_64` on PATH. */
  qemuBinary?: string;
  /** Defaults to `qemu-img` on PATH. */
  qemuImgBinary?: string;
  /**
   * The node's x509 credentials for encrypted migration (QEMU `tls-creds-x509` layout:
   * ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem). Unset: the
   * node cannot send or receive encrypted migrations.
   */
  tlsDir?: string;
  /** How long QEMU may take from spawn to a QMP answer. Default 20 s. */
  startTimeoutMs?: number;
  /** How long to wait after `quit` (or SIGTERM) before SIGKILL. Default 5 s. */
  quitTimeoutMs?: number;
  /** How long the paused source of a completed migration waits before it quits (RETIRE_AFTER_MS; tests). */
  retireAfterMs?: number;
  /** Extra QEMU arguments, inserted before `-S` (diagnostics and tests). */
  extraArgs?: string[];
}

interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** True for adopted processes: not our child, so no exit status. */
  unknown?: boolean;
  spawnError?: Error;
}

interface StopRun {
  promise: Promise<void>;
  startedAt: number;
  deadline: number;
  force: boolean;
  wake: () => void;
}

/** One QEMU process we manage, spawned by us or adopted. */
interface Instance {
  id: string;
  dir: string;
  pid: number;
  qmp: QmpClient | undefined;
  child: ChildProcess | undefined;
  /** Resolves once the process is gone and its runtime files are cleaned up. */
  gone: Promise<void>;
  resolveGone: () => void;
  /** Set when the end was seen (cleanup under way); `isGone` once it is done. */
  ending: boolean;
  isGone: boolean;
  shutdown: { guest: boolean; reason: string } | undefined;
  stopRequested: boolean;
  stop: StopRun | undefined;
  /** Stops the pid poller of an adopted process. */
  stopPolling: (() => void) | undefined;
  /**
   * Set on the destination of a migration until `migrationFinishTarget` lets the guest run; `status`
   * is the incoming migration's, as its last MIGRATION event gave it.
   */
  incoming: { storage: 'copy' | 'shared'; status?: string } | undefined;
  /** Set on the source while `migrationStart` runs. */
  migration: MigrationRun | undefined;
  /**
   * QMP events kept back while the guest migrates (either side) or a snapshot job runs, passed on
   * in order when it ends: the switch-over or the load then does not share the node's CPU with
   * reporting them. `eventHolds` counts what holds them.
   */
  heldEvents: Array<{ event: string; data: Record<string, unknown>; at: Date }> | undefined;
  eventHolds: number;
  /**
   * The snapshots on the running guest's disk as QEMU last listed them. Only this driver makes or
   * drops them while the guest runs: it is kept up to date by each such job (and forgotten when
   * one fails), so a revert checks its tag without asking QEMU first.
   */
  snapshots: SnapshotEntry[] | undefined;
}

/** The ports an incoming migration listens on: the memory stream, and the NBD server of a disk copy. */
interface IncomingPorts {
  port: number;
  nbdPort: number;
}

/** An outgoing migration in progress. */
interface MigrationRun {
  cancelRequested: boolean;
  /** True once post-copy began: from then on the guest cannot go back to the source. */
  postcopy: boolean;
  done: Promise<unknown>;
}

/** Ids of the QMP objects a migration adds on the source and the destination. */
const MIG = { mirrorJob: 'mig-mirror', nbdNode: 'mig-nbd', exportId: 'mig-export', tlsServer: 'mig-tls-server', tlsClient: 'mig-tls-client' } as const;

/** Default limits of snapshot jobs and migrations. */
const SNAPSHOT_JOB_TIMEOUT_MS = 300_000;
/** Longest a snapshot export (qemu-img convert of the whole disk) may take. */
const EXPORT_TIMEOUT_MS = 30 * 60_000;
const DEFAULT_MAX_DOWNTIME_MS = 300;
const DEFAULT_POSTCOPY_AFTER_MS = 10_000;
const DEFAULT_STALL_TIMEOUT_MS = 30_000;
const MIGRATION_POLL_MS = 200;
/** How long after a migration ended the QMP events kept back during it are passed on. */
const HELD_EVENTS_DELAY_MS = 250;

const DEFAULT_START_TIMEOUT_MS = 20_000;
const DEFAULT_QUIT_TIMEOUT_MS = 5_000;
/**
 * How long the paused source of a completed migration waits before it quits: the answer and the
 * destination's resume go first (a QEMU that quits takes CPU time to tear its memory down).
 */
const RETIRE_AFTER_MS = 100;
const KILL_TIMEOUT_MS = 5_000;

/** What `validate` found: the base image (format pinned), the disk size and the accelerator. */
interface LaunchPlan {
  imagePath: string;
  imageFormat: ImageFormat;
  diskBytes: number;
  accel: 'kvm' | 'tcg';
}

/** Runs partitions as QEMU processes. See the file comment for the start sequence. */
export class QemuDriver implements PartitionDriver {
  readonly kind = 'qemu' as const;
  /** The node's image store. */
  readonly images: ImageStore;
  private readonly dataDir: string;
  private readonly partitionsDir: string;
  private readonly qemu: string;
  private readonly qemuImg: string;
  private readonly log: Logger;
  private readonly instances = new Map<string, Instance>();
  private readonly busy = new Set<string>();
  /** Chain-disk operations per partition, chained (see `diskOp`). */
  private readonly diskQueues = new Map<string, Promise<void>>();
  /** Cold-migration receivers waiting for a disk, by partition id: how to give up on one. */
  private readonly coldReceivers = new Map<string, { abort: (error: Error) => void; received: Promise<void> }>();
  /** Sources of completed migrations whose QEMU is quitting and files going (see retireSource). */
  private readonly retiring = new Map<string, { done: Promise<void>; now: () => void }>();
  private listener: DriverListener = { onExit: () => undefined, onEvent: () => undefined };
  private facts: Promise<HostFacts> | undefined;
  private closed = false;

  constructor(private readonly options: QemuDriverOptions) {
    this.dataDir = resolve(options.dataDir);
    this.partitionsDir = join(this.dataDir, 'partitions');
    this.log = options.log;
    const qemu = findOnPath(options.qemuBinary ?? 'qemu-system-x86_64');
    const qemuImg = findOnPath(options.qemuImgBinary ?? 'qemu-img');
    if (!qemu) throw new FailedPreconditionError('qemu-system-x86_64 is not installed (Debian package qemu-system-x86)');
    if (!qemuImg) throw new FailedPreconditionError('qemu-img is not installed (Debian package qemu-utils)');
    this.qemu = qemu;
    this.qemuImg = qemuImg;
    this.images = new ImageStore(join(this.dataDir, 'images'), qemuImg);
  }

  setListener(listener: DriverListener): void {
    this.listener = listener;
  }

  diskPath(id: string): string {
    return join(this.dirOf(id), RUNTIME_FILES.disk);
  }

  hostFacts(): Promise<HostFacts> {
    this.facts ??= (async () => {
      const flags = await cpuFlags();
      const [version, machines, accel] = await Promise.all([
        qemuVersion(this.qemu).catch(() => ''),
        qemuMachineTypes(this.qemu).catch(() => []),
        chooseAccelerator(this.options.accel, flags),
      ]);
      return { accelerator: accel, qemuVersion: version, cpuFlags: flags, machineTypes: machines, tls: Boolean(this.options.tlsDir) };
    })();
    return this.facts;
  }

  listImages(): Promise<ImageEntry[]> {
    return this.images.list();
  }

  /** The node's image store (the same object as `images`), for image transfers. */
  get imageStore(): NodeImageStore {
    return this.images;
  }

  isRunning(id: string): boolean {
    return this.instances.has(id);
  }

  /** The runtime directory of a partition. Throws ValidationError unless `id` is a UUID. */
  dirOf(id: string): string {
    if (!UUID_RE.test(id)) throw ValidationError.field('id', `partition id ${JSON.stringify(id)} is not a UUID`);
    return join(this.partitionsDir, id);
  }

  async recover(): Promise<RecoveredGuest[]> {
    let names: string[];
    try {
      names = await readdir(this.partitionsDir);
    } catch {
      return [];
    }
    const found: RecoveredGuest[] = [];
    for (const id of names.filter((n) => UUID_RE.test(n)).sort()) {
      const dir = join(this.partitionsDir, id);
      const hasSocket = await exists(join(dir, RUNTIME_FILES.qmp));
      const pid = await readPidFile(join(dir, RUNTIME_FILES.pid));
      if (!hasSocket && pid === undefined) continue;
      found.push(await this.recoverOne(id, dir, pid));
    }
    return found;
  }

  private async recoverOne(id: string, dir: string, pid: number | undefined): Promise<RecoveredGuest> {
    const log = this.log.child({ partition: id });
    let qmp: QmpClient | undefined;
    try {
      qmp = await QmpClient.connect(join(dir, RUNTIME_FILES.qmp), { connectTimeoutMs: 3_000, commandTimeoutMs: 10_000 });
      const status = await qmp.queryStatus();
      const realPid = pid !== undefined && pidAlive(pid) && cmdlineContains(pid, id) ? pid : 0;
      if (status.status === 'postmigrate') {
        // An outgoing migration completed (the destination has the guest: with return-path,
        // `completed` means it loaded the state) and the agent stopped before this QEMU quit.
        await qmp.quit().catch(() => undefined);
        if (realPid && !(await waitForPidExit(realPid, this.options.quitTimeoutMs ?? DEFAULT_QUIT_TIMEOUT_MS))) signalPid(realPid, 'SIGKILL');
        await rm(dir, { recursive: true, force: true });
        log.info({ qemuPid: realPid }, 'a guest that had migrated away was still paused here; its QEMU quit and its files are removed');
        return { id, alive: false, movedAway: true, reason: 'migrated away' };
      }
      if (realPid === 0) log.warn({ pidFile: pid }, 'adopted a QEMU whose pid file does not name it; exit detection relies on QMP alone');
      const inst = this.newInstance(id, dir, realPid, undefined);
      this.attachQmp(inst, qmp);
      this.watchAdopted(inst);
      this.instances.set(id, inst);
      const marker = await readFile(join(dir, RUNTIME_FILES.incoming), 'utf8').catch(() => undefined);
      if (marker !== undefined) {
        inst.incoming = { storage: (JSON.parse(marker) as { storage?: 'copy' | 'shared' }).storage ?? 'copy' };
        log.info({ qemuPid: realPid, status: status.status }, 're-attached to a QEMU receiving a migration');
        return { id, alive: true, pid: realPid, status: 'incoming' };
      }
      const outgoing = await qmp.queryMigrate().catch(() => ({}) as MigrationInfo);
      if (outgoing.status && !['none', 'completed', 'failed', 'cancelled'].includes(outgoing.status) && !outgoing.status.startsWith('postcopy')) {
        // Nobody drives this pre-copy migration any more: cancel it, the guest stays here.
        log.warn({ status: outgoing.status }, 'cancelling a migration the previous agent process left running');
        await this.cleanupSource(inst, log, true);
      }
      if (status.status === 'prelaunch') {
        // The agent died between spawning QEMU and `cont`: finish that start.
        await qmp.resume();
        log.info({ qemuPid: realPid }, 'resumed a guest whose start was interrupted');
      }
      log.info({ qemuPid: realPid, status: status.status }, 're-attached to a running guest');
      return { id, alive: true, pid: realPid, status: status.status };
    } catch (error) {
      if (this.instances.has(id)) {
        // Adopted, then a QMP command failed: it is ours now; report it as it is.
        return { id, alive: true, pid: this.instances.get(id)!.pid, status: 'unknown' };
      }
      await qmp?.close();
      if (pid !== undefined && pidAlive(pid) && cmdlineContains(pid, id)) {
        log.error({ qemuPid: pid, err: error }, 'QEMU runs but does not answer on QMP; left alone');
        return { id, alive: false, reason: `qemu (pid ${pid}) runs but does not answer on QMP: ${(error as Error).message}` };
      }
      removeEphemeral(dir);
      log.info('guest is gone (it ended while the agent was not running); runtime files cleaned up');
      return { id, alive: false, reason: 'qemu is gone: it ended while the agent was not running' };
    }
  }

  async start(spec: GuestSpec): Promise<RunningGuest> {
    if (this.closed) throw new FailedPreconditionError('the QEMU driver is closed');
    const dir = this.dirOf(spec.id);
    const log = this.log.child({ partition: spec.id });
    if (this.instances.has(spec.id) || this.busy.has(spec.id)) {
      throw new FailedPreconditionError(`partition ${spec.name || spec.id} is already running`);
    }
    this.busy.add(spec.id);
    try {
      const plan = await this.validate(spec, dir);
      const started = Date.now();
      const inst = await this.launch(spec, dir, plan, log);
      log.info({ qemuPid: inst.pid, ms: Date.now() - started, accel: plan.accel }, 'guest started');
      return { pid: inst.pid };
    } finally {
      this.busy.delete(spec.id);
    }
  }

  /** Every check that needs no side effect; returns what the launch needs. */
  private async validate(spec: GuestSpec, dir: string): Promise<LaunchPlan> {
    const errors: { field: string; message: string }[] = [];
    if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1 || spec.vcpus > 255) errors.push({ field: 'vcpus', message: `must be 1-255 (got ${spec.vcpus})` });
    const hostMiB = Math.floor(totalmem() / 2 ** 20);
    if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < PARTITION_LIMITS.minMemoryMiB || spec.memoryMiB > hostMiB) {
      errors.push({ field: 'memoryMiB', message: `must be ${PARTITION_LIMITS.minMemoryMiB}-${hostMiB} on this node (got ${spec.memoryMiB})` });
    }
    if (!Number.isInteger(spec.diskGiB) || spec.diskGiB < 0 || spec.diskGiB > PARTITION_LIMITS.maxDiskGiB) {
      errors.push({ field: 'diskGiB', message: `must be 0-${PARTITION_LIMITS.maxDiskGiB} (got ${spec.diskGiB})` });
    }
    for (const file of [RUNTIME_FILES.qmp, RUNTIME_FILES.console]) {
      const path = join(dir, file);
      if (Buffer.byteLength(path) > MAX_SOCKET_PATH) errors.push({ field: 'dataDir', message: `socket path ${path} is longer than ${MAX_SOCKET_PATH} bytes; use a shorter data dir` });
    }
    if (errors.length) throw new ValidationError(errors);
    // Independent reads, one wait (a destination's start is on a migration's critical path).
    const stalePid = readPidFileSync(join(dir, RUNTIME_FILES.pid));
    const [{ image, virtualSize }, facts] = await Promise.all([this.imageOf(spec), this.hostFacts()]);
    if (stalePid !== undefined && pidAlive(stalePid) && cmdlineContains(stalePid, spec.id)) {
      throw new FailedPreconditionError(`a qemu process (pid ${stalePid}) already runs for partition ${spec.name || spec.id}`);
    }
    return { imagePath: image.path, imageFormat: image.format, diskBytes: Math.max(spec.diskGiB * 2 ** 30, virtualSize), accel: facts.accelerator as 'kvm' | 'tcg' };
  }

  /** The spec's image in this node's store, and its virtual size; ValidationError when it cannot be read. */
  private async imageOf(spec: GuestSpec): Promise<{ image: { path: string; format: ImageFormat }; virtualSize: number }> {
    const image = spec.libraryImageId ? await this.images.resolveLibrary(spec.libraryImageId) : await this.images.resolve(spec.image);
    try {
      return { image, virtualSize: await this.images.virtualSize(image.path, image.format) };
    } catch (error) {
      throw ValidationError.field('image', `image ${JSON.stringify(spec.image)} is not a readable ${image.format} file: ${(error as Error).message}`);
    }
  }

  private async launch(
    spec: GuestSpec,
    dir: string,
    plan: LaunchPlan,
    log: Logger,
    incoming?: MigrationTargetOptions & { ports: Promise<IncomingPorts> },
    dirMade = false,
  ): Promise<Instance> {
    const reverter = new Reverter();
    let child: ChildProcess | undefined;
    try {
      // `dirMade`: the caller made the directory for this launch; it goes if the launch fails.
      if (dirMade || !(await exists(dir))) {
        if (!dirMade) await mkdir(dir, { recursive: true, mode: 0o700 });
        reverter.add(() => rm(dir, { recursive: true, force: true }));
      }
      const disk = join(dir, RUNTIME_FILES.disk);
      // The directory's files: metadata calls of microseconds, made at once rather than through the
      // thread pool (an incoming migration waits on them); only a new overlay is a process.
      chmodSync(dir, 0o700);
      removeEphemeral(dir);
      reverter.add(() => removeEphemeral(dir));
      for (const file of [RUNTIME_FILES.qemuLog, RUNTIME_FILES.consoleLog]) {
        const path = join(dir, file);
        if (!existsSync(path)) reverter.add(() => rm(path, { force: true }));
      }
      if (incoming?.storage === 'shared') {
        // Shared storage: the source's disk file, under this partition's name (a hard link: same file).
        linkSync(incoming.sharedDiskPath!, disk);
        reverter.add(() => unlink(disk));
      } else if (!existsSync(disk)) {
        await createOverlay(this.qemuImg, disk, plan.imagePath, plan.diskBytes, plan.imageFormat);
        reverter.add(() => unlink(disk));
      }

      const args = buildQemuArgs({ id: spec.id, name: spec.name || spec.id, dir, vcpus: spec.vcpus, memoryMiB: spec.memoryMiB, accel: plan.accel, incoming: Boolean(incoming) });
      if (this.options.extraArgs?.length) args.splice(args.length - 1, 0, ...this.options.extraArgs);
      const chainDisks = incoming ? [] : (spec.disks ?? []);
      args.splice(args.length - 1, 0, ...chainDiskArgs(chainDisks, this.options.tlsDir));
      if (chainDisks.length) await writeDisks(dir, chainDisks);
      const logFd = openSync(join(dir, RUNTIME_FILES.qemuLog), 'a', 0o600);
      try {
        child = spawn(this.qemu, args, { detached: true, stdio: ['ignore', logFd, logFd], cwd: dir });
      } finally {
        closeSync(logFd);
      }
      const proc = child;
      const exited = new Promise<ExitStatus>((resolveExit) => {
        proc.once('exit', (code, signal) => resolveExit({ code, signal }));
        proc.once('error', (error) => resolveExit({ code: null, signal: null, spawnError: error }));
      });
      proc.unref();
      reverter.add(async () => {
        if (proc.exitCode === null && proc.signalCode === null && proc.pid) proc.kill('SIGKILL');
        await withTimeout(exited, KILL_TIMEOUT_MS);
      });
      log.debug({ qemuPid: proc.pid, args }, 'qemu spawned');

      const qmp = await this.connectWhileStarting(join(dir, RUNTIME_FILES.qmp), exited, dir);
      reverter.add(() => qmp.close());
      for (const f of [RUNTIME_FILES.qmp, RUNTIME_FILES.console]) chmodSync(join(dir, f), 0o600);
      const pid = readPidFileSync(join(dir, RUNTIME_FILES.pid));
      if (pid === undefined || pid !== proc.pid) throw new InternalError(`qemu pid file says ${pid ?? 'nothing'}, but the process is ${proc.pid}`);
      const inst = this.newInstance(spec.id, dir, pid, proc);
      if (incoming) this.holdEvents(inst);
      this.attachQmp(inst, qmp);
      // return-path: the destination tells the source whether it loaded the state, so the source
      // reports `completed` only once the destination has the guest (and resumes it otherwise).
      // Sent with the status query, not after it: QMP runs them in order, one round trip for both.
      const [before] = await Promise.all([qmp.queryStatus(), incoming ? qmp.migrateSetCapabilities({ events: true, 'return-path': true, 'postcopy-ram': Boolean(incoming.postcopy) }) : undefined]);
      if (incoming) {
        if (before.status !== 'inmigrate') throw new InternalError(`qemu is ${before.status}; expected inmigrate`);
        if (incoming.tls) {
          await qmp.objectAdd({ 'qom-type': 'tls-creds-x509', id: MIG.tlsServer, dir: this.requireTlsDir(), endpoint: 'server', 'verify-peer': true });
          await qmp.migrateSetParameters({ 'tls-creds': MIG.tlsServer });
        }
        const { port, nbdPort } = await incoming.ports;
        await qmp.migrateIncoming(`tcp:${incoming.host}:${port}`);
        if (incoming.storage === 'copy') {
          await qmp.nbdServerStart({ type: 'inet', host: incoming.host, port: nbdPort }, incoming.tls ? { 'tls-creds': MIG.tlsServer } : {});
          await qmp.blockExportAdd({ type: 'nbd', id: MIG.exportId, 'node-name': DISK_NODE, name: DISK_NODE, writable: true });
        }
        writeFileSync(join(dir, RUNTIME_FILES.incoming), JSON.stringify({ storage: incoming.storage, host: incoming.host, port }), { mode: 0o600 }); // small, on the critical path: no thread-pool trip
        const state: NonNullable<Instance['incoming']> = { storage: incoming.storage };
        qmp.onEvent('MIGRATION', (e) => (state.status = String(e.data.status ?? '')));
        inst.incoming = state;
      } else {
        if (before.status !== 'prelaunch') throw new InternalError(`qemu is ${before.status} before cont; expected prelaunch`);
        await qmp.resume();
        const after = await qmp.queryStatus();
        if (!after.running) throw new InternalError(`qemu is ${after.status} after cont`);
      }

      this.instances.set(spec.id, inst);
      void exited.then((status) => this.finish(inst, status));
      reverter.success();
      return inst;
    } catch (error) {
      // Kill QEMU first (so its log is complete), read the log, then undo the rest (the log too).
      if (child && child.exitCode === null && child.signalCode === null && child.pid) child.kill('SIGKILL');
      const detail = child ? await this.logTail(dir) : '';
      const undoErrors = await reverter.fail();
      for (const e of undoErrors) log.warn({ err: e }, 'undo after a failed start failed');
      const message = (error as Error).message + (detail && !(error as Error).message.includes(detail) ? ` (qemu.log: ${detail})` : '');
      log.warn({ err: error }, 'guest start failed; everything it created was removed');
      if (error instanceof ValidationError || error instanceof FailedPreconditionError) throw error;
      throw new InternalError(`cannot start partition ${spec.name || spec.id}: ${message}`);
    }
  }

  /** Connects to QMP while QEMU starts (see connectWhileStarting in qemu-process.ts); says how QEMU exited when it did. */
  private async connectWhileStarting(path: string, exited: Promise<ExitStatus>, dir: string): Promise<QmpClient> {
    let exit: ExitStatus | undefined;
    void exited.then((s) => (exit = s));
    try {
      return await connectWhileStarting(path, exited, Date.now() + (this.options.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS), { connectTimeoutMs: 5_000, commandTimeoutMs: 10_000 });
    } catch (error) {
      if (exit) throw new InternalError(`qemu exited during start (${describeStatus(exit)}): ${await this.logTail(dir) || 'no output'}`);
      throw new InternalError(`qemu did not answer on QMP: ${(error as Error).message}`);
    }
  }

  private newInstance(id: string, dir: string, pid: number, child: ChildProcess | undefined): Instance {
    let resolveGone!: () => void;
    const gone = new Promise<void>((r) => (resolveGone = r));
    return { id, dir, pid, qmp: undefined, child, gone, resolveGone, ending: false, isGone: false, shutdown: undefined, stopRequested: false, stop: undefined, stopPolling: undefined, incoming: undefined, migration: undefined, heldEvents: undefined, eventHolds: 0, snapshots: undefined };
  }

  private attachQmp(inst: Instance, qmp: QmpClient): void {
    inst.qmp = qmp;
    qmp.on('event', (event) => {
      if (event.event === 'SHUTDOWN') inst.shutdown = { guest: Boolean(event.data.guest), reason: String(event.data.reason ?? '') };
      if (event.event === 'QUORUM_REPORT_BAD' && String(event.data['node-name'] ?? '').startsWith('chain')) void this.onChainReplicaBad(inst, event.data);
      if (this.closed) return;
      if (inst.heldEvents) inst.heldEvents.push({ event: event.event, data: event.data, at: new Date(event.timestamp.seconds * 1000 + Math.floor(event.timestamp.microseconds / 1000)) });
      else this.listener.onEvent(inst.id, event.event, event.data);
    });
  }

  /** Runs a snapshot-save or snapshot-load job to its end, the guest's QMP events held meanwhile. */
  private async memorySnapshotJob(inst: Instance & { qmp: QmpClient }, job: string, start: () => Promise<void>): Promise<void> {
    this.holdEvents(inst);
    try {
      await runJob(inst.qmp, job, start, SNAPSHOT_JOB_TIMEOUT_MS);
    } finally {
      this.releaseEvents(inst);
    }
  }

  /** Keeps the guest's QMP events back until the matching {@link releaseEvents}. */
  private holdEvents(inst: Instance): void {
    inst.eventHolds++;
    inst.heldEvents ??= [];
  }

  /**
   * Passes on the QMP events kept back (with the time QEMU gave them), shortly after the last hold
   * ended (the steps that end a migration do not share the CPU with them either) or, with `now`,
   * at once; and those that follow as they come.
   */
  private releaseEvents(inst: Instance, now = false): void {
    inst.eventHolds = Math.max(0, inst.eventHolds - 1);
    const flush = () => {
      if (inst.eventHolds > 0) return; // held again meanwhile: that hold's end passes them on
      const held = inst.heldEvents ?? [];
      inst.heldEvents = undefined;
      if (!this.closed) for (const e of held) this.listener.onEvent(inst.id, e.event, e.data, e.at);
    };
    if (now) flush();
    else setTimeout(flush, HELD_EVENTS_DELAY_MS).unref();
  }

  /** Exit detection for a process that is not our child: QMP disconnect, then the pid disappears. */
  private watchAdopted(inst: Instance): void {
    let timer: NodeJS.Timeout | undefined;
    let stopped = false;
    inst.stopPolling = () => {
      stopped = true;
      clearTimeout(timer);
    };
    const poll = (delay: number) => {
      if (stopped) return;
      if (inst.pid === 0 || !pidAlive(inst.pid)) {
        void this.finish(inst, { code: null, signal: null, unknown: true });
        return;
      }
      timer = setTimeout(() => poll(Math.min(delay * 2, 1_000)), delay);
      timer.unref();
    };
    inst.qmp?.on('disconnect', () => poll(20));
  }

  /** The process is gone: clean its runtime files, settle waiters, tell the listener. Once per instance. */
  private async finish(inst: Instance, status: ExitStatus): Promise<void> {
    if (inst.ending || this.closed) return;
    inst.ending = true;
    inst.stopPolling?.();
    if (this.instances.get(inst.id) === inst) this.instances.delete(inst.id);
    await inst.qmp?.close();
    try {
      removeEphemeral(inst.dir);
    } catch {
      /* best effort: the next start of the partition removes them too */
    }
    // A destination that never received the guest leaves nothing behind.
    if (inst.incoming) await rm(inst.dir, { recursive: true, force: true }).catch(() => undefined);
    const exit = await this.describeExit(inst, status);
    inst.isGone = true;
    inst.resolveGone();
    this.log.info({ partition: inst.id, qemuPid: inst.pid, state: exit.state, reason: exit.reason, requested: exit.requested }, 'guest process ended');
    this.listener.onExit(inst.id, exit);
  }

  private async describeExit(inst: Instance, status: ExitStatus): Promise<GuestExit> {
    const requested = inst.stopRequested;
    const base = { pid: inst.pid, requested };
    const sd = inst.shutdown;
    if (requested) return { ...base, state: 'stopped', reason: 'stopped on request' };
    if (sd?.guest && sd.reason === 'guest-shutdown') return { ...base, state: 'stopped', reason: 'guest powered off' };
    if (sd?.guest) return { ...base, state: 'failed', reason: `guest shut down (${sd.reason})` };
    if (status.signal) return { ...base, state: 'failed', reason: `qemu exited with signal ${status.signal}` };
    if (status.code !== null && status.code !== 0) {
      const tail = await this.logTail(inst.dir);
      return { ...base, state: 'failed', reason: `qemu exited with code ${status.code}${tail ? `: ${tail}` : ''}` };
    }
    if (sd) return { ...base, state: 'failed', reason: `qemu shut down (${sd.reason})` };
    if (status.unknown) return { ...base, state: 'failed', reason: `qemu (pid ${inst.pid}) exited; exit status unknown (adopted after an agent restart)` };
    return { ...base, state: 'failed', reason: 'qemu exited with code 0' };
  }

  stop(id: string, options: StopOptions): Promise<void> {
    const inst = this.instances.get(id);
    if (!inst) return Promise.resolve();
    inst.stopRequested = true;
    const run = inst.stop;
    if (run) {
      // A later call wins: force is sticky, the grace counts from when the stop began.
      if (options.force) run.force = true;
      run.deadline = run.startedAt + Math.max(0, options.graceMs);
      run.wake();
      return run.promise;
    }
    const now = Date.now();
    const fresh: StopRun = { promise: Promise.resolve(), startedAt: now, deadline: now + Math.max(0, options.graceMs), force: options.force, wake: () => undefined };
    inst.stop = fresh;
    fresh.promise = this.runStop(inst, fresh).finally(() => {
      if (inst.stop === fresh) inst.stop = undefined;
    });
    return fresh.promise;
  }

  private async runStop(inst: Instance, run: StopRun): Promise<void> {
    const log = this.log.child({ partition: inst.id, qemuPid: inst.pid });
    if (!run.force) {
      try {
        await inst.qmp!.systemPowerdown();
        log.info({ graceMs: run.deadline - Date.now() }, 'ACPI power button pressed');
      } catch (error) {
        log.warn({ err: error }, 'system_powerdown failed; quitting');
        run.force = true;
      }
      while (!inst.isGone && !run.force && Date.now() < run.deadline) {
        const woken = new Promise<void>((r) => (run.wake = r));
        await withTimeout(Promise.race([inst.gone, woken]), run.deadline - Date.now());
      }
    }
    if (inst.isGone) return;
    if (inst.qmp && !inst.qmp.closed) {
      log.info('quitting qemu');
      await inst.qmp.quit().catch((error: unknown) => log.warn({ err: error }, 'quit failed'));
    } else {
      signalPid(inst.pid, 'SIGTERM');
    }
    if (await this.waitGone(inst, this.options.quitTimeoutMs ?? DEFAULT_QUIT_TIMEOUT_MS)) return;
    log.warn('qemu did not exit after quit; SIGKILL');
    if (inst.child) inst.child.kill('SIGKILL');
    else signalPid(inst.pid, 'SIGKILL');
    if (await this.waitGone(inst, KILL_TIMEOUT_MS)) return;
    throw new InternalError(`qemu (pid ${inst.pid}) of partition ${inst.id} did not exit after SIGKILL`);
  }

  private async waitGone(inst: Instance, timeoutMs: number): Promise<boolean> {
    await withTimeout(inst.gone, timeoutMs);
    return inst.isGone;
  }

  async reboot(id: string): Promise<void> {
    const inst = this.instances.get(id);
    if (!inst?.qmp || inst.qmp.closed) throw new FailedPreconditionError(`partition ${id} is not running`);
    await inst.qmp.systemReset();
  }

  async destroy(id: string): Promise<void> {
    const dir = this.dirOf(id);
    await this.stop(id, { force: true, graceMs: 0 });
    await rm(dir, { recursive: true, force: true });
  }

  consoleTail(id: string, bytes: number): Promise<ConsoleTail> {
    return readTail(join(this.dirOf(id), RUNTIME_FILES.consoleLog), bytes);
  }

  openConsole(id: string): Duplex {
    if (!this.instances.has(id)) throw new FailedPreconditionError(`partition ${id} is not running`);
    return createConnection({ path: join(this.dirOf(id), RUNTIME_FILES.console) });
  }

  /** The live instance of `id` with its monitor, or FailedPreconditionError. */
  private live(id: string, action: string): Instance & { qmp: QmpClient } {
    const inst = this.instances.get(id);
    if (!inst?.qmp || inst.qmp.closed || inst.ending) throw new FailedPreconditionError(`cannot ${action} partition ${id}: it is not running`);
    if (inst.incoming) throw new FailedPreconditionError(`cannot ${action} partition ${id}: it is receiving a migration`);
    if (inst.migration) throw new FailedPreconditionError(`cannot ${action} partition ${id}: it is migrating`);
    return inst as Instance & { qmp: QmpClient };
  }

  /** Runs `fn` with `id` marked busy (no start, no second snapshot or migration meanwhile). */
  private async exclusive<T>(id: string, action: string, fn: () => Promise<T>): Promise<T> {
    if (this.busy.has(id)) throw new FailedPreconditionError(`cannot ${action} partition ${id}: another action on it runs`);
    this.busy.add(id);
    try {
      return await fn();
    } finally {
      this.busy.delete(id);
    }
  }

  /** The disk of a partition that has no QEMU running, for `qemu-img`; NotFoundError without one. */
  private async offlineDisk(id: string): Promise<string> {
    const disk = join(this.dirOf(id), RUNTIME_FILES.disk);
    if (!(await exists(disk))) throw new NotFoundError('partition disk', id);
    return disk;
  }

  async snapshotList(id: string): Promise<SnapshotEntry[]> {
    const inst = this.instances.get(id);
    if (inst?.qmp && !inst.qmp.closed && !inst.incoming) {
      const blocks = await inst.qmp.queryBlock();
      const disk = blocks.find((b) => b.inserted?.['node-name'] === DISK_NODE) ?? blocks.find((b) => b.inserted);
      return (inst.snapshots = snapshotsFromImageInfo(disk?.inserted?.image));
    }
    const disk = await this.offlineDisk(id);
    const info = JSON.parse(await run(this.qemuImg, ['info', '-f', 'qcow2', '--output=json', disk])) as unknown;
    return snapshotsFromImageInfo(info);
  }

  async snapshotCreate(id: string, options: SnapshotCreateOptions): Promise<SnapshotEntry> {
    checkTag(options.tag);
    return this.exclusive(id, 'snapshot', async () => {
      const log = this.log.child({ partition: id, tag: options.tag });
      if ((await this.snapshotList(id)).some((s) => s.tag === options.tag)) {
        throw new FailedPreconditionError(`partition ${id} already has a snapshot tagged ${options.tag}`);
      }
      const started = Date.now();
      const inst = this.instances.get(id);
      if (!inst) {
        if (options.withMemory) throw new FailedPreconditionError(`cannot save the memory of partition ${id}: it is not running`);
        await run(this.qemuImg, ['snapshot', '--image-opts', '-c', options.tag, qcow2ImageOpts(await this.offlineDisk(id))]);
      } else {
        const running = this.live(id, 'snapshot');
        const { qmp } = running;
        const wasRunning = (await qmp.queryStatus()).running;
        running.snapshots = undefined; // listed again below (and by whatever comes next if this fails)
        try {
          if (options.withMemory) {
            const job = `snap-save-${Date.now()}`;
            await this.memorySnapshotJob(running, job, () => qmp.snapshotSave(job, options.tag, DISK_NODE, [DISK_NODE]));
          } else {
            await qmp.blockdevSnapshotInternalSync(DISK_NODE, options.tag);
          }
        } catch (error) {
          await this.undoSnapshot(qmp, options.tag, wasRunning, log);
          throw new InternalError(`snapshot ${options.tag} of partition ${id} failed: ${(error as Error).message}`);
        }
        // snapshot-save resumes the guest itself; make sure of it.
        if (wasRunning && !(await qmp.queryStatus()).running) await qmp.resume();
      }
      const entry = (await this.snapshotList(id)).find((s) => s.tag === options.tag);
      if (!entry) throw new InternalError(`snapshot ${options.tag} of partition ${id} is not listed after it was saved`);
      log.info({ ms: Date.now() - started, vmStateBytes: entry.vmStateBytes }, 'snapshot saved');
      return entry;
    });
  }

  async snapshotExport(id: string, tag: string, fileName: string): Promise<{ path: string; sizeBytes: number }> {
    checkTag(tag);
    if (!/^[a-z0-9][a-z0-9._-]{0,120}\.qcow2$/.test(fileName)) throw ValidationError.field('fileName', `must be a plain file name ending in .qcow2 (got ${JSON.stringify(fileName)})`);
    return this.exclusive(id, 'export a snapshot of', async () => {
      if (!(await this.snapshotList(id)).some((s) => s.tag === tag)) throw new NotFoundError('snapshot', tag);
      const disk = this.instances.get(id) ? join(this.dirOf(id), RUNTIME_FILES.disk) : await this.offlineDisk(id);
      // In staging/: not an image of the store (not usable by name, not importable through the public
      // API) until the control plane imports it into the partition's project (allowStaging).
      await mkdir(this.images.stagingDir, { recursive: true, mode: 0o700 });
      const out = join(this.images.stagingDir, fileName);
      if (await exists(out)) throw new FailedPreconditionError(`the image store already has staging/${fileName}`);
      const part = `${out}.part`;
      const started = Date.now();
      try {
        // A snapshot's clusters never change while it exists (and this partition's queue keeps it
        // from being deleted meanwhile), so reading it next to the running QEMU (-U) is safe.
        await run(this.qemuImg, ['convert', '-U', '-f', 'qcow2', '-O', 'qcow2', '-l', `snapshot.name=${tag}`, disk, part], EXPORT_TIMEOUT_MS);
        await rename(part, out);
      } catch (error) {
        await rm(part, { force: true });
        throw new InternalError(`exporting snapshot ${tag} of partition ${id} failed: ${(error as Error).message}`);
      }
      const { size } = await stat(out);
      this.log.info({ partition: id, tag, file: out, bytes: size, ms: Date.now() - started }, 'snapshot exported');
      return { path: `staging/${fileName}`, sizeBytes: size };
    });
  }

  /** After a failed save: the guest runs again as before, and no snapshot `tag` is left. */
  private async undoSnapshot(qmp: QmpClient, tag: string, wasRunning: boolean, log: Logger): Promise<void> {
    try {
      if (wasRunning && !(await qmp.queryStatus()).running) await qmp.resume();
      const blocks = await qmp.queryBlock();
      const disk = blocks.find((b) => b.inserted?.['node-name'] === DISK_NODE);
      if (snapshotsFromImageInfo(disk?.inserted?.image).some((s) => s.tag === tag)) {
        const job = `snap-undo-${Date.now()}`;
        await runJob(qmp, job, () => qmp.snapshotDelete(job, tag, [DISK_NODE]), SNAPSHOT_JOB_TIMEOUT_MS);
        log.warn('removed the half-made snapshot');
      }
    } catch (error) {
      log.error({ err: error }, 'cleanup after a failed snapshot failed');
    }
  }

  async snapshotRevert(id: string, tag: string): Promise<void> {
    checkTag(tag);
    await this.exclusive(id, 'revert', async () => {
      const inst = this.instances.get(id);
      const started = Date.now();
      if (!inst) {
        if (!(await this.snapshotList(id)).some((s) => s.tag === tag)) throw new NotFoundError('snapshot', tag);
        await run(this.qemuImg, ['snapshot', '--image-opts', '-a', tag, qcow2ImageOpts(await this.offlineDisk(id))]);
      } else {
        const running = this.live(id, 'revert');
        const { qmp } = running;
        // The tag is checked before QEMU's load job, which stops the guest before it looks for the
        // tag. Known from the list this driver keeps, the status goes in the load's write (asked
        // first: whether the guest ran, which a failed load must put back); else the list and the
        // status in one round trip, then the load.
        const known = running.snapshots?.find((s) => s.tag === tag);
        const [list, status] = known ? [running.snapshots!, undefined] : await Promise.all([this.snapshotList(id), qmp.queryStatus()]);
        const entry = list.find((s) => s.tag === tag);
        if (!entry) throw new NotFoundError('snapshot', tag);
        if (entry.vmStateBytes === 0) {
          throw new FailedPreconditionError(`snapshot ${tag} of partition ${id} holds no memory state: stop the partition to revert its disk`);
        }
        const job = `snap-load-${Date.now()}`;
        const before = status ? Promise.resolve(status) : qmp.queryStatus(); // sent ahead of the load
        let loaded = false;
        try {
          await this.memorySnapshotJob(running, job, async () => {
            await Promise.all([before, qmp.snapshotLoad(job, tag, DISK_NODE, [DISK_NODE])]);
          });
          loaded = true; // QEMU resumes a guest that ran before a load that succeeded
        } finally {
          if (!loaded) {
            running.snapshots = undefined; // the list may be wrong: ask QEMU next time
            const wasRunning = await before.then((s) => s.running, () => false);
            if (wasRunning && !qmp.closed && !(await qmp.queryStatus()).running) await qmp.resume();
          }
        }
      }
      this.log.info({ partition: id, tag, ms: Date.now() - started }, 'reverted to snapshot');
    });
  }

  async snapshotDelete(id: string, tag: string): Promise<void> {
    checkTag(tag);
    await this.exclusive(id, 'delete a snapshot of', async () => {
      if (!(await this.snapshotList(id)).some((s) => s.tag === tag)) throw new NotFoundError('snapshot', tag);
      if (!this.instances.get(id)) {
        await run(this.qemuImg, ['snapshot', '--image-opts', '-d', tag, qcow2ImageOpts(await this.offlineDisk(id))]);
        return;
      }
      const running = this.live(id, 'delete a snapshot of');
      const { qmp } = running;
      const job = `snap-del-${Date.now()}`;
      running.snapshots = undefined; // listed again when next asked
      await runJob(qmp, job, () => qmp.snapshotDelete(job, tag, [DISK_NODE]), SNAPSHOT_JOB_TIMEOUT_MS);
    });
  }

  async migrationPrepareTarget(spec: GuestSpec, options: MigrationTargetOptions): Promise<MigrationTarget> {
    if (this.closed) throw new FailedPreconditionError('the QEMU driver is closed');
    const dir = this.dirOf(spec.id);
    const log = this.log.child({ partition: spec.id, migration: 'incoming' });
    if (options.tls) this.requireTlsDir();
    if (options.port !== undefined && (!Number.isInteger(options.port) || options.port < 1 || options.port > 65535)) throw ValidationError.field('port', `must be 1-65535 (got ${options.port})`);
    if (options.storage === 'shared' && !options.sharedDiskPath) throw ValidationError.field('sharedDiskPath', 'shared storage needs the disk path');
    await this.retired(spec.id);
    return this.exclusive(spec.id, 'receive', async () => {
      if (this.instances.has(spec.id)) throw new FailedPreconditionError(`partition ${spec.name || spec.id} already runs on this node`);
      // The directory is made here, and must be new (mkdir says whether it made it); then the checks.
      if (mkdirSync(dir, { recursive: true, mode: 0o700 }) === undefined) {
        throw new FailedPreconditionError(`partition ${spec.name || spec.id} already has files on this node (${dir})`);
      }
      let plan: LaunchPlan;
      try {
        plan = await this.validate(spec, dir);
      } catch (error) {
        await rm(dir, { recursive: true, force: true });
        throw error;
      }
      // Without a port, a free pair is looked for while QEMU starts: it is needed only when QEMU listens.
      const ports = options.port !== undefined ? Promise.resolve(options.port) : freePortPair(options.host);
      const pair = ports.then((port) => ({ port, nbdPort: options.nbdPort ?? port + 1 }));
      pair.catch(() => undefined); // awaited by the launch; a launch that fails first leaves it
      const inst = await this.launch(spec, dir, plan, log, { ...options, ports: pair }, true);
      const { port, nbdPort } = await pair;
      log.info({ qemuPid: inst.pid, port, nbdPort, storage: options.storage }, 'waiting for an incoming migration');
      return { host: options.host, port, storage: options.storage, ...(options.storage === 'copy' ? { nbdPort, exportName: DISK_NODE } : {}), ...(options.tls ? { tls: true } : {}) };
    });
  }

  async migrationFinishTarget(id: string): Promise<RunningGuest> {
    const inst = this.instances.get(id);
    if (!inst?.incoming || !inst.qmp || inst.qmp.closed) throw new FailedPreconditionError(`partition ${id} is not receiving a migration here`);
    const qmp = inst.qmp;
    try {
      // Its MIGRATION event usually said `completed` already; else (the source may see `completed`
      // a moment before this side finished loading the state) ask until it is.
      if (inst.incoming.status !== 'completed') {
        const changes = watchEvent(qmp, 'MIGRATION');
        let info: MigrationInfo = {};
        try {
          info = await qmp.queryMigrate();
          for (const end = Date.now() + 30_000; Date.now() < end && info.status && ['setup', 'active', 'device'].includes(info.status); ) {
            await changes.next(50);
            info = await qmp.queryMigrate();
          }
        } finally {
          changes.close();
        }
        if (info.status !== 'completed') throw new FailedPreconditionError(`cannot finish the migration of partition ${id}: the incoming migration is ${info.status ?? 'none'}`);
      }
      // Paused since it started (-S). Copy storage: the disk's NBD export goes first, in the same write.
      await Promise.all([
        inst.incoming.storage === 'copy' ? qmp.blockExportDel(MIG.exportId, 'hard').catch((error: unknown) => this.log.warn({ partition: id, err: error }, 'block-export-del failed')) : undefined,
        inst.incoming.storage === 'copy' ? qmp.nbdServerStop().catch(() => undefined) : undefined,
        qmp.resume(),
      ]);
      inst.incoming = undefined;
    } finally {
      this.releaseEvents(inst); // also when this failed: the guest's events are not held for good
    }
    rmSync(join(inst.dir, RUNTIME_FILES.incoming), { force: true }); // small, on the critical path: no thread-pool trip
    this.log.info({ partition: id, qemuPid: inst.pid }, 'migrated guest runs here');
    return { pid: inst.pid };
  }

  async migrationAbortTarget(id: string): Promise<void> {
    const dir = this.dirOf(id);
    const cold = this.coldReceivers.get(id);
    if (cold) {
      cold.abort(new CancelledError(`the cold migration of partition ${id} was aborted`));
      await cold.received.catch(() => undefined);
      return;
    }
    const inst = this.instances.get(id);
    if (inst && !inst.incoming) throw new FailedPreconditionError(`partition ${id} runs here: it is not an incoming migration`);
    if (inst?.qmp && !inst.qmp.closed) {
      const info = await inst.qmp.queryMigrate().catch(() => ({}) as MigrationInfo);
      if (info.status === 'completed' || info.status?.startsWith('postcopy')) {
        throw new FailedPreconditionError(`cannot abort the migration of partition ${id}: the guest's state already moved here (${info.status})`);
      }
    }
    if (inst) await this.stop(id, { force: true, graceMs: 0 });
    else if (!(await exists(join(dir, RUNTIME_FILES.incoming)))) return;
    await rm(dir, { recursive: true, force: true });
    this.log.info({ partition: id }, 'incoming migration aborted; its files are removed');
  }

  async migrationCancel(id: string): Promise<void> {
    const run = this.instances.get(id)?.migration;
    if (!run) throw new FailedPreconditionError(`partition ${id} is not migrating`);
    if (run.postcopy) throw new FailedPreconditionError(`cannot cancel the migration of partition ${id}: it is in post-copy`);
    run.cancelRequested = true;
    const qmp = this.instances.get(id)?.qmp;
    await qmp?.migrateCancel().catch(() => undefined);
    await run.done.catch(() => undefined);
  }

  async migrationStart(id: string, target: MigrationTarget, options: MigrationOptions, onProgress: (progress: MigrationProgress) => void = () => undefined): Promise<MigrationResult> {
    const inst = this.live(id, 'migrate');
    // The destination's QEMU would need the same chain disks (the control plane refuses this first).
    if ((await readDisks(inst.dir)).length) throw new FailedPreconditionError(`cannot migrate partition ${id}: it has service-chain disks; detach them first`);
    const log = this.log.child({ partition: id, migration: 'outgoing', to: `${target.host}:${target.port}` });
    const run: MigrationRun = { cancelRequested: false, postcopy: false, done: Promise.resolve() };
    const work = this.exclusive(id, 'migrate', async () => {
      inst.migration = run;
      this.holdEvents(inst);
      let moved = false;
      try {
        // Subscribed before the first poll: no event falls between a poll and the wait after it.
        const events = { ready: watchEvent(inst.qmp, 'BLOCK_JOB_READY'), migration: watchEvent(inst.qmp, 'MIGRATION') };
        try {
          const result = await this.migrate(inst, target, options, run, onProgress, log, events);
          moved = true;
          return result;
        } finally {
          events.ready.close();
          events.migration.close();
        }
      } finally {
        inst.migration = undefined;
        // Moved: at once, ahead of the answer, while the control plane still takes this node's word for the guest.
        this.releaseEvents(inst, moved);
      }
    });
    run.done = work;
    return work;
  }

  private async migrate(
    inst: Instance & { qmp: QmpClient },
    target: MigrationTarget,
    options: MigrationOptions,
    run: MigrationRun,
    onProgress: (progress: MigrationProgress) => void,
    log: Logger,
    events: { ready: ReturnType<typeof watchEvent>; migration: ReturnType<typeof watchEvent> },
  ): Promise<MigrationResult> {
    const { qmp } = inst;
    const started = Date.now();
    const bandwidth = Math.max(0, Math.floor(options.bandwidthBytesPerSec ?? 0));
    const stallMs = options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS;
    const checkCancel = () => {
      if (run.cancelRequested) throw new CancelledError(`the migration of partition ${inst.id} was cancelled; it keeps running here`);
    };
    let storageMs = 0;
    let info: MigrationInfo = {};
    const tls = target.tls ? { 'tls-creds': MIG.tlsClient, 'tls-hostname': target.tlsHostname ?? target.host } : undefined;
    try {
      if (tls) {
        await qmp.objectDel(MIG.tlsClient).catch(() => undefined); // left by an earlier attempt
        await qmp.objectAdd({ 'qom-type': 'tls-creds-x509', id: MIG.tlsClient, dir: this.requireTlsDir(), endpoint: 'client' });
      }
      if (target.storage === 'copy') {
        if (!target.nbdPort) throw ValidationError.field('target.nbdPort', 'copy storage needs the destination NBD port');
        const snapshots = await this.snapshotList(inst.id);
        if (snapshots.length > 0 && !options.discardSnapshots) {
          throw new FailedPreconditionError(`partition ${inst.id} has ${snapshots.length} snapshot(s); a live migration that copies the disk does not carry them (migrate with shared storage or cold, or allow discarding them)`);
        }
        await qmp.blockdevAdd({ driver: 'nbd', 'node-name': MIG.nbdNode, server: { type: 'inet', host: target.host, port: String(target.nbdPort) }, export: target.exportName ?? DISK_NODE, ...(tls ?? {}) });
        // `top`: only what the overlay holds; the base image is the same file on both nodes here.
        await qmp.blockdevMirror({ 'job-id': MIG.mirrorJob, device: DISK_NODE, target: MIG.nbdNode, sync: 'top', 'copy-mode': 'write-blocking', 'auto-dismiss': false, ...(bandwidth ? { speed: bandwidth } : {}) });
        let lastOffset = -1;
        let lastMove = Date.now();
        for (;;) {
          checkCancel();
          const job = (await qmp.queryBlockJobs()).find((j) => j.device === MIG.mirrorJob);
          if (!job || job.status === 'concluded' || job.status === 'aborting') {
            const info = (await qmp.queryJobs()).find((j) => j.id === MIG.mirrorJob);
            throw new InternalError(`copying the disk to ${target.host}:${target.nbdPort} failed: ${info?.error ?? 'the mirror job ended'}`);
          }
          onProgress({ phase: 'storage', bytesRemaining: Math.max(0, job.len - job.offset), bytesTransferred: job.offset, bytesTotal: job.len, dirtyRateBytesPerSec: 0, expectedDowntimeMs: 0, cpuThrottlePercent: 0, status: job.status });
          if (job.ready) break;
          if (job.offset !== lastOffset) [lastOffset, lastMove] = [job.offset, Date.now()];
          else if (Date.now() - lastMove > stallMs) {
            await this.breakConnections(target, log);
            throw new InternalError(`copying the disk stalled for ${stallMs} ms`);
          }
          await events.ready.next(MIGRATION_POLL_MS);
        }
        storageMs = Date.now() - started;
        log.info({ ms: storageMs }, 'disk copied; the mirror follows writes');
      }
      checkCancel();
      // One round trip for the three (QMP runs them in order); tls-creds '' turns encryption off
      // again after an earlier encrypted attempt. Should the capabilities or parameters be refused,
      // the migration that started anyway is cancelled below, as any failed one is.
      await settledAll([
        qmp.migrateSetCapabilities({ events: true, 'return-path': true, 'auto-converge': Boolean(options.autoConverge), 'postcopy-ram': Boolean(options.postcopy) }),
        qmp.migrateSetParameters({ 'downtime-limit': options.maxDowntimeMs ?? DEFAULT_MAX_DOWNTIME_MS, 'max-bandwidth': bandwidth || 2 ** 40, ...(tls ?? { 'tls-creds': '' }) }),
        qmp.migrate(`tcp:${target.host}:${target.port}`),
      ]);
      const memoryStarted = Date.now();
      let lastTransferred = -1;
      let lastMove = Date.now();
      let switchingSince = 0;
      for (;;) {
        info = await qmp.queryMigrate();
        const progress = progressOf(info);
        // The end is told by the answer (the control plane records no progress for it): reported
        // here, it would reach the control plane just ahead of the answer and compete with it.
        if (info.status === 'completed') break;
        // Reported once the copy has run MIGRATION_QUIET_MS. The switch-over (guest paused, the last
        // pages and the device state on their way) usually ends within ms: it is reported only when
        // it lasts, so the report does not compete with it.
        if (info.status === 'device' && !switchingSince) switchingSince = Date.now();
        if (Date.now() - memoryStarted >= MIGRATION_QUIET_MS && (info.status !== 'device' || Date.now() - switchingSince >= MIGRATION_POLL_MS)) onProgress(progress);
        if (info.status === 'failed') throw new InternalError(`migration to ${target.host}:${target.port} failed: ${info['error-desc'] ?? 'no detail from QEMU'}`);
        if (info.status === 'cancelled') {
          checkCancel();
          throw new InternalError('the migration was cancelled by QEMU');
        }
        if (info.status?.startsWith('postcopy')) run.postcopy = true;
        if (!run.postcopy) {
          checkCancel();
          if (progress.bytesTransferred !== lastTransferred) [lastTransferred, lastMove] = [progress.bytesTransferred, Date.now()];
          else if (Date.now() - lastMove > stallMs) {
            // The destination does not answer but its connections stay up: break them, or QEMU waits on them.
            await this.breakConnections(target, log);
            await qmp.migrateCancel().catch(() => undefined);
            throw new InternalError(`the migration stalled: no byte moved for ${stallMs} ms (destination unreachable?)`);
          }
          if (options.postcopy && info.status === 'active' && Date.now() - memoryStarted > (options.postcopyAfterMs ?? DEFAULT_POSTCOPY_AFTER_MS)) {
            log.info({ remaining: progress.bytesRemaining, dirtyRate: progress.dirtyRateBytesPerSec }, 'pre-copy does not converge: switching to post-copy');
            await qmp.migrateStartPostcopy();
            run.postcopy = true;
          }
        }
        // Progress every poll; a status change (completed, failed) wakes the loop at once.
        await events.migration.next(MIGRATION_POLL_MS);
      }
    } catch (error) {
      if (run.postcopy) {
        log.error({ err: error }, 'post-copy migration failed: the guest cannot resume on either side');
        throw new InternalError(`post-copy migration of partition ${inst.id} failed: ${(error as Error).message}`);
      }
      await this.cleanupSource(inst, log, true, target);
      if (tls) {
        await qmp.migrateSetParameters({ 'tls-creds': '' }).catch(() => undefined);
        await qmp.objectDel(MIG.tlsClient).catch(() => undefined);
      }
      onProgress({ phase: run.cancelRequested ? 'cancelled' : 'failed', bytesRemaining: 0, bytesTransferred: 0, bytesTotal: 0, dirtyRateBytesPerSec: 0, expectedDowntimeMs: 0, cpuThrottlePercent: 0, status: run.cancelRequested ? 'cancelled' : 'failed' });
      if (run.cancelRequested) throw new CancelledError(`the migration of partition ${inst.id} was cancelled; it keeps running here`);
      throw error;
    }
    // Completed: the guest is paused here (postmigrate) and whole on the destination, which stays
    // paused until migrationFinishTarget. Detach the disk copy (in sync: write-blocking mirror);
    // the paused QEMU quits (RETIRE_AFTER_MS later) and its files go once the destination took over (as libvirt's
    // confirm step runs after the destination resumed): nobody resumes a postmigrate guest here.
    if (target.storage === 'copy') await this.cleanupSource(inst, log, false); // nothing else was added for shared storage
    const result: MigrationResult = {
      totalTimeMs: Date.now() - started,
      downtimeMs: Number(info.downtime ?? 0),
      storageMs,
      ramTransferredBytes: Number(info.ram?.transferred ?? 0),
      postcopy: run.postcopy,
    };
    inst.stopRequested = true;
    let now!: () => void;
    const due = new Promise<void>((resolve) => (now = resolve));
    const timer = setTimeout(now, this.options.retireAfterMs ?? RETIRE_AFTER_MS);
    const retiring = {
      done: due.then(() => this.retireSource(inst, log)).finally(() => {
        if (this.retiring.get(inst.id) === retiring) this.retiring.delete(inst.id);
      }),
      now: () => {
        clearTimeout(timer);
        now();
      },
    };
    this.retiring.set(inst.id, retiring);
    log.info({ ...result, qemuMigrateTotalMs: info['total-time'] }, 'migrated away; the source QEMU quits and its files go');
    return result;
  }

  /** Quits the source QEMU of a completed migration and removes the partition's files here. */
  private async retireSource(inst: Instance & { qmp: QmpClient }, log: Logger): Promise<void> {
    // Files first, then quit: an agent restart in between finds neither a paused QEMU it would
    // have to retire (see recoverOne) nor files of a QEMU that is gone. (The QMP connection
    // stays up without its socket file.)
    await rm(inst.dir, { recursive: true, force: true }).catch((error: unknown) => log.warn({ err: error, dir: inst.dir }, 'could not remove the files of a partition that migrated away'));
    await inst.qmp.quit().catch(() => undefined);
    if (!(await this.waitGone(inst, this.options.quitTimeoutMs ?? DEFAULT_QUIT_TIMEOUT_MS))) {
      if (inst.child) inst.child.kill('SIGKILL');
      else signalPid(inst.pid, 'SIGKILL');
      await this.waitGone(inst, KILL_TIMEOUT_MS);
    }
    log.debug('source QEMU gone, files removed');
  }

  /** Retires a partition that migrated away now, if it waits to, and waits until it is gone from here (its QEMU quit, its files removed). */
  private async retired(id: string): Promise<void> {
    const retiring = this.retiring.get(id);
    retiring?.now();
    await retiring?.done.catch(() => undefined);
  }

  /**
   * Takes the migration's objects off the source: the mirror job (cancelled: a ready mirror ends
   * without switching to its target), the NBD client node, a pre-copy migration still running.
   * With `resume`, a guest the migration left paused runs again — never after `completed`.
   */
  private async cleanupSource(inst: Instance, log: Logger, resume: boolean, target?: MigrationTarget): Promise<void> {
    const qmp = inst.qmp;
    if (!qmp || qmp.closed) return;
    // A destination that stopped answering keeps QEMU's NBD requests (and so this cleanup) waiting: break its connections after a while.
    const breaker = target ? setTimeout(() => void this.breakConnections(target, log), 3_000) : undefined;
    try {
      const info = await qmp.queryMigrate();
      const completed = info.status === 'completed';
      if (info.status && ['setup', 'active', 'device', 'pre-switchover', 'wait-unplug'].includes(info.status)) {
        await qmp.migrateCancel().catch(() => undefined);
        for (let i = 0; i < 100; i++) {
          const s = (await qmp.queryMigrate()).status;
          if (s !== 'cancelling' && s !== 'active' && s !== 'setup' && s !== 'device') break;
          await sleep(50);
        }
      }
      const job = (await qmp.queryJobs()).find((j) => j.id === MIG.mirrorJob);
      if (job) {
        if (job.status !== 'concluded') await qmp.blockJobCancel(MIG.mirrorJob, true).catch(() => undefined);
        await waitJob(qmp, MIG.mirrorJob, 30_000).catch((error: unknown) => log.debug({ err: error }, 'mirror job ended with an error'));
      }
      await qmp.blockdevDel(MIG.nbdNode).catch(() => undefined);
      if (resume && !completed) {
        const status = await qmp.queryStatus();
        if (!status.running && status.status !== 'shutdown') await qmp.resume();
      }
    } catch (error) {
      log.error({ err: error }, 'cleaning up after the migration failed');
    } finally {
      clearTimeout(breaker);
    }
  }

  /** The node's TLS credentials directory; a node without one cannot take part in an encrypted migration. */
  private requireTlsDir(): string {
    if (!this.options.tlsDir) throw new FailedPreconditionError('this node has no TLS credentials for encrypted migration (start the worker with --tls-dir)');
    return this.options.tlsDir;
  }

  /** Aborts this host's connections to the destination's migration and NBD ports (see `killTcpConnections`). */
  private async breakConnections(target: MigrationTarget, log: Logger): Promise<void> {
    const ports = [target.port, ...(target.nbdPort ? [target.nbdPort] : [])];
    const done = await Promise.all(ports.map((port) => killTcpConnections(target.host, port)));
    log.warn({ host: target.host, ports, killed: done }, 'the destination does not answer: connections to it aborted');
  }

  async coldMigrationPrepareTarget(spec: GuestSpec, options: { host: string; port: number; timeoutMs?: number }): Promise<ColdMigrationReceiver> {
    const dir = this.dirOf(spec.id);
    const log = this.log.child({ partition: spec.id, migration: 'cold-incoming' });
    await this.retired(spec.id);
    if (this.instances.has(spec.id) || this.busy.has(spec.id)) throw new FailedPreconditionError(`partition ${spec.name || spec.id} already runs on this node`);
    if (await exists(dir)) throw new FailedPreconditionError(`partition ${spec.name || spec.id} already has files on this node (${dir})`);
    const plan = await this.validate(spec, dir);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const part = join(dir, `${RUNTIME_FILES.disk}.part`);
    const server = createServer();
    try {
      await new Promise<void>((resolveListen, rejectListen) => {
        server.once('error', rejectListen);
        server.listen(options.port, options.host, () => resolveListen());
      });
    } catch (error) {
      await rm(dir, { recursive: true, force: true });
      throw new InternalError(`cannot listen on ${options.host}:${options.port} for partition ${spec.id}: ${(error as Error).message}`);
    }
    this.busy.add(spec.id);
    let abortReceive: (error: Error) => void = () => undefined;
    const received = new Promise<void>((resolveReceived, rejectReceived) => {
      const timer = setTimeout(() => fail(new DeadlineExceededError(`no disk for partition ${spec.id} arrived within ${options.timeoutMs ?? 600_000} ms`)), options.timeoutMs ?? 600_000);
      let settled = false;
      const fail = (error: Error) => {
        if (settled) return;
        settled = true;
        this.coldReceivers.delete(spec.id);
        clearTimeout(timer);
        server.close();
        this.busy.delete(spec.id);
        void rm(dir, { recursive: true, force: true }).finally(() => rejectReceived(error));
        log.warn({ err: error }, 'cold migration: receiving the disk failed; nothing is left');
      };
      abortReceive = fail;
      server.once('connection', (socket) => {
        server.close();
        void (async () => {
          let expected = -1;
          let got = 0;
          let header = Buffer.alloc(0);
          const out = await open(part, 'w', 0o600);
          try {
            await new Promise<void>((done, failRead) => {
              socket.on('error', failRead);
              socket.on('end', () => (got === expected ? done() : failRead(new Error(`the disk ended after ${got} of ${expected} bytes`))));
              socket.on('data', (chunk: Buffer) => {
                let data = chunk;
                if (expected < 0) {
                  header = Buffer.concat([header, data]);
                  const nl = header.indexOf(10);
                  if (nl < 0) return;
                  try {
                    expected = Number((JSON.parse(header.subarray(0, nl).toString('utf8')) as { bytes?: number }).bytes ?? -1);
                  } catch {
                    expected = -1;
                  }
                  if (!Number.isSafeInteger(expected) || expected < 0) return failRead(new Error('bad header'));
                  data = header.subarray(nl + 1);
                }
                socket.pause();
                out.write(data).then(
                  () => {
                    got += data.length;
                    if (got === expected) done();
                    else if (got > expected) failRead(new Error(`more than the announced ${expected} bytes`));
                    else socket.resume();
                  },
                  failRead,
                );
              });
            });
            await out.sync();
          } finally {
            await out.close();
          }
          // The overlay names its base by absolute path on the source: point it at this node's copy of the same image.
          await run(this.qemuImg, ['rebase', '-u', '-f', 'qcow2', '-F', plan.imageFormat, '-b', plan.imagePath, part]);
          await run(this.qemuImg, ['check', '-q', '-f', 'qcow2', part]);
          await rename(part, join(dir, RUNTIME_FILES.disk));
          socket.end('ok\n');
          settled = true;
          clearTimeout(timer);
          this.busy.delete(spec.id);
          this.coldReceivers.delete(spec.id);
          log.info({ bytes: got }, 'cold migration: disk received');
          resolveReceived();
        })().catch((error: unknown) => {
          socket.end(`error: ${(error as Error).message}\n`);
          fail(error as Error);
        });
      });
    });
    received.catch(() => undefined);
    this.coldReceivers.set(spec.id, { abort: abortReceive, received });
    return { target: { host: options.host, port: (server.address() as AddressInfo).port }, received };
  }

  async coldMigrationSend(id: string, target: ColdMigrationTarget): Promise<{ bytes: number; ms: number }> {
    if (this.instances.has(id)) throw new FailedPreconditionError(`cannot migrate partition ${id} cold: it is running`);
    return this.exclusive(id, 'migrate', async () => {
      const disk = await this.offlineDisk(id);
      const started = Date.now();
      const { size } = await stat(disk);
      const answer = await new Promise<string>((resolveAnswer, rejectAnswer) => {
        const socket = createConnection({ host: target.host, port: target.port });
        let reply = '';
        socket.on('error', rejectAnswer);
        socket.on('data', (b: Buffer) => (reply += b.toString('utf8')));
        socket.on('close', () => resolveAnswer(reply.trim()));
        socket.once('connect', () => {
          socket.write(`${JSON.stringify({ bytes: size })}\n`);
          const file = createReadStream(disk);
          file.on('error', (error) => socket.destroy(error));
          file.pipe(socket, { end: false });
        });
      });
      if (answer !== 'ok') throw new InternalError(`cold migration of partition ${id} to ${target.host}:${target.port} failed: ${answer || 'the destination closed the connection'}`);
      await rm(this.dirOf(id), { recursive: true, force: true });
      const ms = Date.now() - started;
      this.log.info({ partition: id, bytes: size, ms }, 'cold migration: disk sent; the partition is gone from here');
      return { bytes: size, ms };
    });
  }

  async diskAttach(id: string, disk: ChainDiskSpec): Promise<void> {
    await this.diskOp(id, async (inst) => {
      const disks = await attachDisk(inst.qmp, await readDisks(inst.dir), disk, this.options.tlsDir);
      await writeDisks(inst.dir, disks);
      this.log.info({ partition: id, attachment: disk.attachmentId, index: disk.index, replicas: disk.replicas.map((r) => r.replicaId) }, 'chain disk attached');
    });
  }

  async diskDetach(id: string, attachmentId: string): Promise<void> {
    await this.diskOp(id, async (inst) => {
      await writeDisks(inst.dir, await detachDisk(inst.qmp, await readDisks(inst.dir), attachmentId));
      this.log.info({ partition: id, attachment: attachmentId }, 'chain disk detached');
    });
  }

  /** Chain-disk changes of one guest, one at a time (attach, detach and dropping a failed replica). */
  private diskOp(id: string, fn: (inst: Instance & { qmp: QmpClient }) => Promise<void>): Promise<void> {
    const run = (this.diskQueues.get(id) ?? Promise.resolve()).then(() => fn(this.live(id, 'change the disks of')));
    const tail = run.catch(() => undefined);
    this.diskQueues.set(id, tail);
    void tail.then(() => {
      if (this.diskQueues.get(id) === tail) this.diskQueues.delete(id);
    });
    return run;
  }

  /** A replica of a chain disk failed an I/O request: drop it (the guest carries on with the others) and say so. */
  private async onChainReplicaBad(inst: Instance, data: Record<string, unknown>): Promise<void> {
    const reason = `${String(data.type ?? 'I/O')} error: ${String(data.error ?? 'unknown')}`;
    try {
      await this.diskOp(inst.id, async (live) => {
        const dropped = await dropBadReplica(live.qmp, await readDisks(live.dir), String(data['node-name'] ?? ''));
        if (!dropped) return;
        await writeDisks(live.dir, dropped.disks);
        this.log.warn({ partition: inst.id, replica: dropped.replica.replicaId, reason }, 'chain disk dropped a replica after an I/O error');
        this.listener.onReplicaLost?.(inst.id, dropped.replica.replicaId, reason);
      });
    } catch (error) {
      this.log.warn({ partition: inst.id, err: error }, 'could not drop a failed chain-disk replica');
    }
  }

  async close(): Promise<void> {
    // A source that migrated away quits first: no paused copy of a guest stays behind.
    await Promise.all([...this.retiring.keys()].map((id) => this.retired(id)));
    this.closed = true;
    const all = [...this.instances.values()];
    this.instances.clear();
    for (const inst of all) {
      inst.stopPolling?.();
      await inst.qmp?.close();
    }
  }

  /** The last non-empty lines of qemu.log, joined, for error messages. */
  private async logTail(dir: string): Promise<string> {
    const { data } = await readTail(join(dir, RUNTIME_FILES.qemuLog), 600).catch(() => ({ data: '' }));
    return data.split('\n').map((l) => l.trim()).filter(Boolean).slice(-3).join(' | ');
  }
}

/** `qemu-img --image-opts` for a qcow2 file: the format pinned (`qemu-img snapshot` has no `-f`). */
function qcow2ImageOpts(file: string): string {
  return `driver=qcow2,file.driver=file,file.filename=${qemuOptValue(file)}`;
}

function describeStatus(status: ExitStatus): string {
  if (status.spawnError) return `spawn failed: ${status.spawnError.message}`;
  if (status.signal) return `signal ${status.signal}`;
  return `code ${status.code}`;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Waits until every promise settled; then throws the first rejection, if any. */
async function settledAll(promises: Array<Promise<unknown>>): Promise<void> {
  const failed = (await Promise.allSettled(promises)).find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

/**
 * Removes the files that only mean something while QEMU runs (sockets, pid file). A few small
 * files, removed without the thread pool: a start (a migration's destination) waits on it.
 */
function removeEphemeral(dir: string): void {
  for (const f of EPHEMERAL_FILES) rmSync(join(dir, f), { force: true });
}

/** Waits for `promise` at most `ms`; never rejects (a rejection counts as settled). */
async function withTimeout(promise: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([promise.catch(() => undefined), new Promise<void>((r) => (timer = setTimeout(r, Math.max(0, ms))))]);
  clearTimeout(timer);
}

