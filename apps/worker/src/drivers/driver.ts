/**
 * The contract between the reconciler and whatever runs guests on this node. A driver knows how to
 * start, stop and inspect one guest per partition id; it knows nothing of generations, desired
 * state or the control plane. The reconciler serialises calls per partition id, so a driver never
 * sees two of start/stop/reboot/destroy for the same id at once, with one exception: `stop` may be
 * called again while a stop runs, to adjust it (force, grace).
 */
import type { Duplex } from 'node:stream';
import type { Endpoint } from '../providers/nbd-graph';

/** What one guest needs to start: the parts of a PartitionSpec a driver uses. */
export interface GuestSpec {
  /** Partition id (a UUID); names the guest's runtime directory. */
  id: string;
  /** Partition name, for the process title and logs. */
  name: string;
  vcpus: number;
  memoryMiB: number;
  /** Wanted disk size; the disk is never smaller than the image's virtual size. */
  diskGiB: number;
  /** Image name in the node's image store (`sample` means `images/sample.qcow2`). */
  image: string;
  /**
   * When set, the disk is based on the copy of this library image (`images/library/<id>.<format>`,
   * fetched beforehand) and `image` is only its name for logs.
   */
  libraryImageId?: string;
  /** Service-chain disks the guest gets besides its boot disk. */
  disks?: ChainDiskSpec[];
}

/** A service-chain disk of a partition: a quorum over NBD clients to the replicas of the attached link. */
export interface ChainDiskSpec {
  attachmentId: string;
  /** 0-15: the device sits in PCI slot 0x10 + index. */
  index: number;
  readOnly: boolean;
  replicas: Endpoint[];
}

/** A guest that runs after `start` or was adopted by `recover`. */
export interface RunningGuest {
  /** Host process id (0 for the simulated driver). */
  pid: number;
}

/** How to stop: `force` quits at once; otherwise ask the guest (ACPI) and quit after `graceMs`. */
export interface StopOptions {
  force: boolean;
  graceMs: number;
}

/** How a guest ended; given to `DriverListener.onExit` for every end the driver sees. */
export interface GuestExit {
  /** Process id of the guest that ended (matches `RunningGuest.pid`). */
  pid: number;
  /** `stopped` for a requested stop or a power-off from inside the guest, else `failed`. */
  state: 'stopped' | 'failed';
  /** Human-readable cause: "guest powered off", "qemu exited with signal SIGKILL". */
  reason: string;
  /** True when the end was asked for through `stop` or `destroy`. */
  requested: boolean;
}

/** A guest found by `recover`: adopted and running, or gone (its runtime files cleaned up). */
export type RecoveredGuest =
  | { id: string; alive: true; pid: number; status: string }
  | { id: string; alive: false; reason: string; movedAway?: boolean };

/** Facts about this host as the driver sees them, for the node's inventory. */
export interface HostFacts {
  /** kvm | tcg | simulated. */
  accelerator: string;
  qemuVersion: string;
  cpuFlags: string[];
  machineTypes: string[];
  /** Overrides of the host's real figures (hollow nodes advertise what the benchmark asks). */
  cpus?: number;
  memoryMiB?: number;
  /** The node has TLS credentials, so it can send and receive encrypted migrations. */
  tls?: boolean;
}

/** Disk formats an image store holds. A file's format is detected from its bytes, then pinned. */
export type ImageFormat = 'qcow2' | 'vhdx' | 'raw';

/** One image of the node's store. */
export interface ImageEntry {
  name: string;
  format: string;
  sizeBytes: number;
  virtualSizeBytes: number;
  path: string;
  /** The metadata stored inside the file (libs/disk-formats), as JSON; absent or '' when none. */
  metadataJson?: string;
  /** Set when the file failed the hostile-image checks: it is reported, never used. */
  rejected?: { reason: string; message: string };
  /** Set for a copy of a control-plane library image (usable only through `GuestSpec.libraryImageId`). */
  libraryImageId?: string;
}

/** Where a fetch writes, and how it ends: `commit` checks and moves the file into place, `abort` removes it. */
export interface FetchTarget {
  /** A new temporary file (mode 0600) in the store, not yet written. */
  path: string;
  /** Checks the written file (format pinned, hostile structures rejected), fsyncs and renames it into place; returns the final path. */
  commit(): Promise<string>;
  /** Removes the temporary file (no-op after commit). */
  abort(): Promise<void>;
}

/**
 * A node's image store as image transfers use it (QEMU driver only; hollow nodes have none). Top-level
 * files are the node's own images, usable by name; `library/` holds copies of control-plane library
 * images; `staging/` holds files the node produced for the control plane (exports).
 */
export interface NodeImageStore {
  /** Absolute path of the store. */
  readonly dir: string;
  /** True when a checked copy of library image `id` is in the store. */
  hasLibraryCopy(id: string): Promise<boolean>;
  /** Prepares a fetch of library image `id` in `format`. */
  beginFetch(id: string, format: ImageFormat): Promise<FetchTarget>;
  /**
   * The absolute, symlink-free path of a file of the store that may be sent to the control plane.
   * Throws ValidationError when `path` resolves outside the store (`..`, a symlink out, an absolute
   * path elsewhere), names a hidden file, a library copy, a directory, or (without `allowStaging`)
   * a staging file.
   */
  resolveSendPath(path: string, options: { allowStaging: boolean }): Promise<string>;
  /** Removes a staging file after it was sent (refuses anything outside `staging/`). */
  removeStaged(path: string): Promise<void>;
  /** Removes fetches an earlier agent process left unfinished; returns how many. Call at start. */
  sweepPartialFetches(): Promise<number>;
  /** Calls `onChange` (debounced) when files of the store change; returns how to stop watching. */
  watch(onChange: () => void): () => void;
}

/** The end of a guest's serial log. */
export interface ConsoleTail {
  /** UTF-8 text (a partial first character is dropped). */
  data: string;
  /** True when the log holds more than was returned. */
  truncated: boolean;
}

/** One internal snapshot of a partition's disk, as QEMU or `qemu-img` lists it. */
export interface SnapshotEntry {
  /** The tag it was created with (the control plane's snapshot id). */
  tag: string;
  /** Bytes of saved VM state; 0 for a disk-only snapshot. */
  vmStateBytes: number;
  /** When it was taken (ISO 8601, host clock). */
  createdAt: string;
  /** Guest clock at the snapshot, in ms (0 for a disk-only snapshot of a stopped partition). */
  vmClockMs: number;
}

/** What `snapshotCreate` takes: a tag, and whether to save memory and device state too. */
export interface SnapshotCreateOptions {
  tag: string;
  /** Save memory/device state with the disk (needs a running guest). False: disk only. */
  withMemory: boolean;
}

/** How the destination gets the disk: copied over NBD while the guest runs, or already shared. */
export type MigrationStorage = 'copy' | 'shared';

/**
 * How long a live migration's memory copy runs before its source reports it (its progress, and
 * the partition's migrating state): one that ends sooner is told by its end alone. Each report is
 * a message, a database write and an event on the control plane, which in a migration's first
 * moments take CPU from QEMU's own copy (the memory copy of the benchmark's guest was measured
 * slower through the API than bare with them, about as fast without them).
 */
export const MIGRATION_QUIET_MS = 200;

/** What the destination is asked to prepare. */
export interface MigrationTargetOptions {
  /** Address the destination listens on (its node address, e.g. 127.0.0.2). */
  host: string;
  /** TCP port for the memory stream (`migrate-incoming tcp:host:port`). Omitted: the driver finds a free one (with the next one free too, for the NBD server). */
  port?: number;
  /** TCP port of the NBD server for `copy` storage. Default `port + 1`. */
  nbdPort?: number;
  storage: MigrationStorage;
  /** For `shared` storage: the source's disk file, seen by this node at the same path. */
  sharedDiskPath?: string;
  /** Must match the source's `postcopy` option (the capability is set on both sides). */
  postcopy?: boolean;
  /** Encrypt the memory stream and the NBD disk copy with this node's TLS credentials (server side). */
  tls?: boolean;
}

/** Where the source sends memory and disk, as returned by `migrationPrepareTarget`. */
export interface MigrationTarget {
  host: string;
  port: number;
  storage: MigrationStorage;
  /** For `copy` storage: the NBD server and the export name of the destination's disk. */
  nbdPort?: number;
  exportName?: string;
  /** The destination listens with TLS: the source connects with its client credentials. */
  tls?: boolean;
  /** The name the destination's certificate must carry (default: `host`). */
  tlsHostname?: string;
}

/** Tuning of one live migration. Every field is optional. */
export interface MigrationOptions {
  /** Longest pause of the guest at switch-over, ms (QEMU `downtime-limit`). Default 300. */
  maxDowntimeMs?: number;
  /** Bandwidth cap for memory and the disk copy, bytes/s (QEMU `max-bandwidth`, mirror `speed`). 0: none. */
  bandwidthBytesPerSec?: number;
  /** Throttle the guest's vCPUs when memory does not converge (QEMU `auto-converge`). */
  autoConverge?: boolean;
  /** Allow switching to post-copy when pre-copy does not converge (needs `postcopy` on the target too). */
  postcopy?: boolean;
  /** With `postcopy`: switch after this long in pre-copy without converging. Default 10 s. */
  postcopyAfterMs?: number;
  /** Give up (and stay on the source) when no byte moved for this long. Default 30 s. */
  stallTimeoutMs?: number;
  /** `copy` storage loses internal snapshots (they are not part of what is mirrored); say yes to go on anyway. */
  discardSnapshots?: boolean;
}

/** Migration phases as reported in progress. */
export type MigrationPhase = 'storage' | 'memory' | 'postcopy' | 'switchover' | 'completed' | 'failed' | 'cancelled';

/** One progress report of a running migration. */
export interface MigrationProgress {
  phase: MigrationPhase;
  /** Bytes still to send in this phase (disk bytes in `storage`, RAM bytes after). */
  bytesRemaining: number;
  bytesTransferred: number;
  bytesTotal: number;
  /** Guest memory dirtied per second, bytes/s (0 when unknown). */
  dirtyRateBytesPerSec: number;
  /** QEMU's estimate of the switch-over pause, ms (0 when unknown). */
  expectedDowntimeMs: number;
  /** vCPU throttle applied by auto-converge, percent. */
  cpuThrottlePercent: number;
  /** QEMU's migration status (`active`, `postcopy-active`...), or the mirror job's. */
  status: string;
}

/** How a completed migration went, from the source's `query-migrate`. */
export interface MigrationResult {
  totalTimeMs: number;
  /** The pause QEMU measured at switch-over. */
  downtimeMs: number;
  /** Time the disk copy took until the mirror was ready (0 for shared storage). */
  storageMs: number;
  ramTransferredBytes: number;
  postcopy: boolean;
}

/** Where the source of a cold migration sends the disk file: a one-shot TCP listener on the destination. */
export interface ColdMigrationTarget {
  host: string;
  port: number;
}

/** A prepared cold-migration destination: where to send, and a promise that settles when the disk arrived (or failed). */
export interface ColdMigrationReceiver {
  target: ColdMigrationTarget;
  /** Resolves once the whole disk is here and usable; rejects (leaving no file) on failure or after the timeout. */
  received: Promise<void>;
}

/** Receives what happens to guests between calls. Set once, before `recover`. */
export interface DriverListener {
  /** A guest process ended, requested or not. Called once per guest process. */
  onExit(id: string, exit: GuestExit): void;
  /**
   * A hypervisor event (QMP event name and data), for the control plane's event stream; `at`:
   * when it happened, if not now (an event passed on later).
   */
  onEvent(id: string, event: string, data: Record<string, unknown>, at?: Date): void;
  /** A chain disk dropped a replica after an I/O error on it (the guest saw no error). */
  onReplicaLost?(id: string, replicaId: string, reason: string): void;
}

/** A driver: runs guests for one node. Every method's `id` is a partition id (UUID). */
export interface PartitionDriver {
  /** qemu | simulated, as reported in the inventory. */
  readonly kind: 'qemu' | 'simulated';
  /** Sets who hears about exits and events; call before `recover` and `start`. */
  setListener(listener: DriverListener): void;
  /** Host facts (cached after the first call). */
  hostFacts(): Promise<HostFacts>;
  /** The images of this node's store, rejected ones included (with the reason). */
  listImages(): Promise<ImageEntry[]>;
  /** The image store, when the driver has one (QEMU); transfers of images go through it. */
  readonly imageStore?: NodeImageStore;
  /** Where a partition's disk file is on this node (drivers with real disks), for shared-storage migration. */
  diskPath?(id: string): string;
  /**
   * Finds guests left by an earlier agent process: adopts the live ones (they keep running) and
   * cleans the runtime files of dead ones. Call once, before anything else touches guests.
   */
  recover(): Promise<RecoveredGuest[]>;
  /** Starts a guest; resolves once it runs. On failure nothing it created is left behind. */
  start(spec: GuestSpec): Promise<RunningGuest>;
  /**
   * Stops a guest; resolves once its process is gone (at once when it does not run). Calling it
   * again during a stop adjusts the running stop (`force` is sticky; the new grace counts from
   * when the stop began) and waits for it.
   */
  stop(id: string, options: StopOptions): Promise<void>;
  /** Hard-resets a running guest (the process stays). Rejects when it does not run. */
  reboot(id: string): Promise<void>;
  /** Forcibly stops the guest if it runs, then removes every file of the partition. */
  destroy(id: string): Promise<void>;
  /** The last `bytes` of the guest's serial log (empty when it has none). */
  consoleTail(id: string, bytes: number): Promise<ConsoleTail>;
  /**
   * Connects to a running guest's serial port. The stream carries raw bytes both ways and ends
   * when the guest goes away. The QEMU driver's port serves one connection at a time.
   */
  openConsole(id: string): Duplex;
  /** Whether a guest process for `id` runs now. */
  isRunning(id: string): boolean;
  /**
   * Creates internal snapshot `tag`: disk and (with `withMemory`) memory and device state of a
   * running guest, or disk only. A stopped partition gets a disk-only snapshot (no QEMU runs). On
   * failure the guest runs as before and no snapshot named `tag` is left.
   */
  snapshotCreate(id: string, options: SnapshotCreateOptions): Promise<SnapshotEntry>;
  /**
   * Reverts to snapshot `tag`. A running guest loads its memory state and keeps running from
   * there; a stopped partition gets its disk reverted (the next start boots it).
   */
  snapshotRevert(id: string, tag: string): Promise<void>;
  /** Deletes snapshot `tag`; the other snapshots stay usable. */
  snapshotDelete(id: string, tag: string): Promise<void>;
  /** The snapshots of a partition's disk (running or stopped), oldest first. */
  snapshotList(id: string): Promise<SnapshotEntry[]>;
  /**
   * Writes snapshot `tag` of the partition's disk as a standalone qcow2 image `fileName` in this
   * node's image store (its backing image flattened in), while the guest runs or not. Drivers
   * without real disks leave it out. Returns the file's path relative to the store and its size.
   */
  snapshotExport?(id: string, tag: string, fileName: string): Promise<{ path: string; sizeBytes: number }>;
  /**
   * On the destination: prepares to receive `spec` (its disk and a QEMU waiting for the incoming
   * stream, paused). The guest runs here only after `migrationFinishTarget`.
   */
  migrationPrepareTarget(spec: GuestSpec, options: MigrationTargetOptions): Promise<MigrationTarget>;
  /**
   * On the source: migrates the running guest to `target` (disk first for `copy` storage, then
   * memory) and reports progress through `onProgress`. Resolves once the destination holds the
   * complete guest and the source's QEMU and files are gone. Rejects when the migration failed or
   * was cancelled: then the guest still runs here.
   */
  migrationStart(id: string, target: MigrationTarget, options: MigrationOptions, onProgress?: (progress: MigrationProgress) => void): Promise<MigrationResult>;
  /** On the source: cancels a migration in pre-copy; the guest keeps running here. */
  migrationCancel(id: string): Promise<void>;
  /** On the destination, after the source's `migrationStart` resolved: lets the guest run here. */
  migrationFinishTarget(id: string): Promise<RunningGuest>;
  /** On the destination: kills a QEMU still waiting for (or receiving) a migration and removes its files. */
  migrationAbortTarget(id: string): Promise<void>;
  /**
   * Cold migration, destination: listens once on `host:port` for the disk file of the stopped
   * partition `spec` (the whole qcow2, snapshots included) and re-points its base image at this
   * node's store. Nothing runs; the partition is stopped here once `received` resolves.
   */
  coldMigrationPrepareTarget(spec: GuestSpec, options: { host: string; port: number; timeoutMs?: number }): Promise<ColdMigrationReceiver>;
  /**
   * Cold migration, source: sends the stopped partition's disk file to `target` and, once the
   * destination confirmed it, removes the partition's files here. On failure nothing changes here.
   */
  coldMigrationSend(id: string, target: ColdMigrationTarget): Promise<{ bytes: number; ms: number }>;
  /**
   * Service-chain disks of a running guest: hot-plugs `disk`, or, when the guest has it, makes its
   * replicas exactly these. Drivers without real disks leave it out.
   */
  diskAttach?(id: string, disk: ChainDiskSpec): Promise<void>;
  /** Unplugs a chain disk from a running guest (the guest releases it first). */
  diskDetach?(id: string, attachmentId: string): Promise<void>;
  /** Lets go of guests (monitor connections, watchers) WITHOUT stopping them. */
  close(): Promise<void>;
}
