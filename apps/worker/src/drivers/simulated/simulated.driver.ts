/**
 * The simulated driver: a hollow node for scale tests and benchmarks ONLY. It keeps guests as
 * entries in a map, takes a configurable time to "start" them and fails a configurable share of
 * starts. No process, no file: guests vanish with the agent process, and `recover` finds none.
 */
import { Duplex } from 'node:stream';
import { CancelledError, FailedPreconditionError, InternalError, NotFoundError } from '@hyperplane/domain';
import type {
  ColdMigrationReceiver,
  ColdMigrationTarget,
  ConsoleTail,
  DriverListener,
  GuestSpec,
  HostFacts,
  ImageEntry,
  PartitionDriver,
  RecoveredGuest,
  MigrationOptions,
  MigrationProgress,
  MigrationResult,
  MigrationTarget,
  MigrationTargetOptions,
  RunningGuest,
  SnapshotCreateOptions,
  SnapshotEntry,
  StopOptions,
} from '../driver';
import { freePortPair } from '../../ports';

/** Settings of a simulated driver. */
export interface SimulatedDriverOptions {
  /** Time a start takes. Default 200 ms. */
  startMs?: number;
  /** Share of starts that fail, 0..1. Default 0. */
  failRate?: number;
  /** CPUs and memory the hollow node advertises. Defaults: 64 and 256 GiB. */
  cpus?: number;
  memoryMiB?: number;
  /** Source of randomness for `failRate` (tests pin it). */
  random?: () => number;
}

/** The images every hollow node claims to have. */
const SIMULATED_IMAGES: readonly ImageEntry[] = [
  { name: 'sample', format: 'qcow2', sizeBytes: 16 * 2 ** 20, virtualSizeBytes: 64 * 2 ** 20, path: '(simulated)' },
];

/** A fake guest's state: only whether it runs and when it started. */
interface SimGuest {
  name: string;
  startedAt: number;
}

/** Runs hollow guests. Cheap enough for thousands of nodes in one process. */
export class SimulatedDriver implements PartitionDriver {
  readonly kind = 'simulated' as const;
  private readonly guests = new Map<string, SimGuest>();
  /** Snapshots per partition id, by tag, in creation order. */
  private readonly snapshots = new Map<string, Map<string, SnapshotEntry>>();
  /** Partitions prepared as migration destinations, not yet finished. */
  private readonly incoming = new Map<string, SimGuest>();
  /** Partitions whose outgoing migration was cancelled while it "ran". */
  private readonly cancelled = new Set<string>();
  private readonly startMs: number;
  private readonly failRate: number;
  private readonly random: () => number;
  private readonly facts: HostFacts;

  constructor(options: SimulatedDriverOptions = {}) {
    this.startMs = options.startMs ?? 200;
    this.failRate = options.failRate ?? 0;
    this.random = options.random ?? Math.random;
    this.facts = {
      accelerator: 'simulated',
      qemuVersion: 'simulated',
      cpuFlags: [],
      machineTypes: ['pc', 'q35'],
      cpus: options.cpus ?? 64,
      memoryMiB: options.memoryMiB ?? 256 * 1024,
    };
  }

  setListener(_listener: DriverListener): void {
    // Hollow guests never end on their own, so there is nothing to tell.
  }

  async hostFacts(): Promise<HostFacts> {
    return this.facts;
  }

  async listImages(): Promise<ImageEntry[]> {
    return SIMULATED_IMAGES.map((i) => ({ ...i }));
  }

  async recover(): Promise<RecoveredGuest[]> {
    return [];
  }

  isRunning(id: string): boolean {
    return this.guests.has(id);
  }

  async start(spec: GuestSpec): Promise<RunningGuest> {
    if (this.guests.has(spec.id)) throw new FailedPreconditionError(`partition ${spec.name || spec.id} is already running`);
    if (this.startMs > 0) await new Promise((resolve) => setTimeout(resolve, this.startMs));
    if (this.failRate > 0 && this.random() < this.failRate) {
      throw new InternalError(`simulated start failure of partition ${spec.name || spec.id}`);
    }
    this.guests.set(spec.id, { name: spec.name || spec.id, startedAt: Date.now() });
    return { pid: 0 };
  }

  async stop(id: string, _options: StopOptions): Promise<void> {
    this.guests.delete(id);
  }

  async reboot(id: string): Promise<void> {
    const guest = this.guests.get(id);
    if (!guest) throw new FailedPreconditionError(`partition ${id} is not running`);
    guest.startedAt = Date.now();
  }

  async destroy(id: string): Promise<void> {
    this.guests.delete(id);
    this.snapshots.delete(id);
    this.incoming.delete(id);
  }

  async snapshotCreate(id: string, options: SnapshotCreateOptions): Promise<SnapshotEntry> {
    const running = this.guests.get(id);
    if (options.withMemory && !running) throw new FailedPreconditionError(`cannot save the memory of partition ${id}: it is not running`);
    const tags = this.snapshots.get(id) ?? new Map<string, SnapshotEntry>();
    if (tags.has(options.tag)) throw new FailedPreconditionError(`partition ${id} already has a snapshot tagged ${options.tag}`);
    const entry: SnapshotEntry = { tag: options.tag, vmStateBytes: options.withMemory ? 1 : 0, createdAt: new Date().toISOString(), vmClockMs: running ? Date.now() - running.startedAt : 0 };
    tags.set(options.tag, entry);
    this.snapshots.set(id, tags);
    return { ...entry };
  }

  async snapshotRevert(id: string, tag: string): Promise<void> {
    const entry = this.snapshots.get(id)?.get(tag);
    if (!entry) throw new NotFoundError('snapshot', tag);
    const guest = this.guests.get(id);
    if (guest) {
      if (entry.vmStateBytes === 0) throw new FailedPreconditionError(`snapshot ${tag} of partition ${id} holds no memory state: stop the partition to revert its disk`);
      guest.startedAt = Date.now() - entry.vmClockMs;
    }
  }

  async snapshotDelete(id: string, tag: string): Promise<void> {
    if (!this.snapshots.get(id)?.delete(tag)) throw new NotFoundError('snapshot', tag);
  }

  async snapshotList(id: string): Promise<SnapshotEntry[]> {
    return [...(this.snapshots.get(id)?.values() ?? [])].map((e) => ({ ...e }));
  }

  async migrationPrepareTarget(spec: GuestSpec, options: MigrationTargetOptions): Promise<MigrationTarget> {
    if (this.guests.has(spec.id) || this.incoming.has(spec.id)) throw new FailedPreconditionError(`partition ${spec.name || spec.id} already runs on this node`);
    this.incoming.set(spec.id, { name: spec.name || spec.id, startedAt: Date.now() });
    const port = options.port ?? (await freePortPair(options.host));
    return { host: options.host, port, storage: options.storage, ...(options.storage === 'copy' ? { nbdPort: options.nbdPort ?? port + 1, exportName: 'disk0' } : {}) };
  }

  async migrationStart(id: string, _target: MigrationTarget, _options: MigrationOptions, onProgress?: (progress: MigrationProgress) => void): Promise<MigrationResult> {
    if (!this.guests.has(id)) throw new FailedPreconditionError(`cannot migrate partition ${id}: it is not running`);
    this.cancelled.delete(id);
    onProgress?.({ phase: 'memory', bytesRemaining: 0, bytesTransferred: 0, bytesTotal: 0, dirtyRateBytesPerSec: 0, expectedDowntimeMs: 0, cpuThrottlePercent: 0, status: 'active' });
    await new Promise((resolve) => setTimeout(resolve, 1));
    if (this.cancelled.delete(id)) throw new CancelledError(`the migration of partition ${id} was cancelled; it keeps running here`);
    this.guests.delete(id);
    this.snapshots.delete(id);
    onProgress?.({ phase: 'completed', bytesRemaining: 0, bytesTransferred: 0, bytesTotal: 0, dirtyRateBytesPerSec: 0, expectedDowntimeMs: 0, cpuThrottlePercent: 0, status: 'completed' });
    return { totalTimeMs: 1, downtimeMs: 0, storageMs: 0, ramTransferredBytes: 0, postcopy: false };
  }

  async migrationCancel(id: string): Promise<void> {
    if (!this.guests.has(id)) throw new FailedPreconditionError(`partition ${id} is not migrating`);
    this.cancelled.add(id);
  }

  async migrationFinishTarget(id: string): Promise<RunningGuest> {
    const guest = this.incoming.get(id);
    if (!guest) throw new FailedPreconditionError(`partition ${id} is not receiving a migration here`);
    this.incoming.delete(id);
    this.guests.set(id, guest);
    return { pid: 0 };
  }

  async migrationAbortTarget(id: string): Promise<void> {
    this.incoming.delete(id);
  }

  async coldMigrationPrepareTarget(spec: GuestSpec, options: { host: string; port: number }): Promise<ColdMigrationReceiver> {
    if (this.guests.has(spec.id)) throw new FailedPreconditionError(`partition ${spec.name || spec.id} already runs on this node`);
    return { target: { host: options.host, port: options.port }, received: Promise.resolve() };
  }

  async coldMigrationSend(id: string, _target: ColdMigrationTarget): Promise<{ bytes: number; ms: number }> {
    if (this.guests.has(id)) throw new FailedPreconditionError(`cannot migrate partition ${id} cold: it is running`);
    this.snapshots.delete(id);
    return { bytes: 0, ms: 0 };
  }

  async consoleTail(id: string, bytes: number): Promise<ConsoleTail> {
    const guest = this.guests.get(id);
    const lines = guest
      ? ['SeaBIOS (simulated)', 'HYPERPLANE-GUEST-READY uptime=0.00 (simulated)', `hb ${Math.floor((Date.now() - guest.startedAt) / 1000)}`]
      : ['(simulated guest is not running)'];
    const text = lines.map((l) => `${l}\r\n`).join('');
    const buffer = Buffer.from(text);
    return { data: buffer.subarray(Math.max(0, buffer.length - bytes)).toString('utf8'), truncated: buffer.length > bytes };
  }

  openConsole(id: string): Duplex {
    if (!this.guests.has(id)) throw new FailedPreconditionError(`partition ${id} is not running`);
    return loopback();
  }

  async close(): Promise<void> {
    // Nothing to let go of: hollow guests live in this map only.
  }
}

/** A serial "port" that echoes what is typed, as a terminal with local echo would. */
function loopback(): Duplex {
  const port: Duplex = new Duplex({
    read() {},
    write(chunk: Buffer, _encoding, callback) {
      port.push(chunk);
      callback();
    },
    final(callback) {
      port.push(null);
      callback();
    },
  });
  return port;
}
