// Wire and reply types, modeled on QEMU 7.2's QAPI schema (as reported by `query-qmp-schema`).
// Object keys keep QAPI's spelling so QEMU's documentation applies to them unchanged.

/** QEMU's version triple, as in the greeting and `query-version`. */
export interface QemuVersionTriple {
  major: number;
  minor: number;
  micro: number;
}

/** `query-version` reply; `package` is the distribution's build string (may be empty). */
export interface VersionInfo {
  qemu: QemuVersionTriple;
  package: string;
}

/** The first line QEMU sends on a new monitor connection, before `qmp_capabilities`. */
export interface QmpGreeting {
  QMP: {
    version: VersionInfo;
    capabilities: string[];
  };
}

/** Timestamp QEMU puts on every event (host wall clock). */
export interface QmpTimestamp {
  seconds: number;
  microseconds: number;
}

/** A QMP event. `data` is `{}` when QEMU sent none. */
export interface QmpEvent<D = Record<string, unknown>> {
  event: string;
  data: D;
  timestamp: QmpTimestamp;
}

/** QEMU's run states (`RunState`). */
export type RunState =
  | 'debug'
  | 'inmigrate'
  | 'internal-error'
  | 'io-error'
  | 'paused'
  | 'postmigrate'
  | 'prelaunch'
  | 'finish-migrate'
  | 'restore-vm'
  | 'running'
  | 'save-vm'
  | 'shutdown'
  | 'suspended'
  | 'watchdog'
  | 'guest-panicked'
  | 'colo';

/** `query-status` reply. */
export interface StatusInfo {
  running: boolean;
  singlestep: boolean;
  status: RunState;
}

/** Why QEMU shut down or reset (`ShutdownCause`). */
export type ShutdownCause =
  | 'none'
  | 'host-error'
  | 'host-qmp-quit'
  | 'host-qmp-system-reset'
  | 'host-signal'
  | 'host-ui'
  | 'guest-shutdown'
  | 'guest-reset'
  | 'guest-panic'
  | 'subsystem-reset'
  | 'snapshot-load';

/** One vCPU in a `query-cpus-fast` reply. */
export interface CpuInfoFast {
  'cpu-index': number;
  'qom-path': string;
  'thread-id': number;
  props?: {
    'node-id'?: number;
    'socket-id'?: number;
    'die-id'?: number;
    'cluster-id'?: number;
    'core-id'?: number;
    'thread-id'?: number;
  };
  target: string;
}

/** I/O status of a block device or block job. */
export type BlockIoStatus = 'ok' | 'failed' | 'nospace';

/** The medium inserted in a block device (the fields we read; QEMU sends more). */
export interface BlockDeviceInfo {
  file: string;
  'node-name'?: string;
  ro: boolean;
  drv: string;
  backing_file?: string;
  encrypted: boolean;
  image: { filename: string; format: string; 'virtual-size': number; 'actual-size'?: number; [key: string]: unknown };
  [key: string]: unknown;
}

/** One device in a `query-block` reply. */
export interface BlockInfo {
  device: string;
  qdev?: string;
  type: string;
  removable: boolean;
  locked: boolean;
  inserted?: BlockDeviceInfo;
  tray_open?: boolean;
  'io-status'?: BlockIoStatus;
}

/** Arguments of `blockdev-add` (`BlockdevOptions`): a driver plus that driver's options. */
export interface BlockdevOptions {
  driver: string;
  'node-name'?: string;
  [key: string]: unknown;
}

/** Arguments of `device_add`: a driver plus that device's properties. */
export interface DeviceAddOptions {
  driver: string;
  id?: string;
  bus?: string;
  [key: string]: unknown;
}

/** Arguments of `object-add` (flat since QEMU 6.0): type, id and the object's properties. */
export interface ObjectAddOptions {
  'qom-type': string;
  id: string;
  [key: string]: unknown;
}

/** Image formats `screendump` can write (`png` since QEMU 7.1). */
export type ScreendumpFormat = 'ppm' | 'png';

/** Migration states (`MigrationStatus`). */
export type MigrationStatus =
  | 'none'
  | 'setup'
  | 'cancelling'
  | 'cancelled'
  | 'active'
  | 'postcopy-active'
  | 'postcopy-paused'
  | 'postcopy-recover'
  | 'completed'
  | 'failed'
  | 'colo'
  | 'pre-switchover'
  | 'device'
  | 'wait-unplug';

/** Migration capabilities QEMU 7.2 knows (`MigrationCapability`). */
export type MigrationCapability =
  | 'xbzrle'
  | 'rdma-pin-all'
  | 'auto-converge'
  | 'zero-blocks'
  | 'compress'
  | 'events'
  | 'postcopy-ram'
  | 'x-colo'
  | 'release-ram'
  | 'block'
  | 'return-path'
  | 'pause-before-switchover'
  | 'multifd'
  | 'dirty-bitmaps'
  | 'postcopy-blocktime'
  | 'late-block-activate'
  | 'x-ignore-shared'
  | 'validate-uuid'
  | 'background-snapshot'
  | 'zero-copy-send'
  | 'postcopy-preempt';

/** Arguments of `migrate-set-parameters` (the commonly used subset; all optional). */
export interface MigrateSetParameters {
  'max-bandwidth'?: number;
  'downtime-limit'?: number;
  'max-postcopy-bandwidth'?: number;
  'multifd-channels'?: number;
  'multifd-compression'?: 'none' | 'zlib' | 'zstd';
  'xbzrle-cache-size'?: number;
  'cpu-throttle-initial'?: number;
  'cpu-throttle-increment'?: number;
  'max-cpu-throttle'?: number;
  'tls-creds'?: string | null;
  'tls-hostname'?: string | null;
  'tls-authz'?: string | null;
  'announce-initial'?: number;
  'announce-max'?: number;
  'announce-rounds'?: number;
  'announce-step'?: number;
  [key: string]: unknown;
}

/** RAM or disk transfer counters in `query-migrate`. */
export interface MigrationStats {
  transferred: number;
  remaining: number;
  total: number;
  duplicate: number;
  normal: number;
  'normal-bytes': number;
  'dirty-pages-rate': number;
  mbps: number;
  'dirty-sync-count': number;
  'postcopy-requests': number;
  'page-size': number;
  'multifd-bytes': number;
  'pages-per-second': number;
  'precopy-bytes': number;
  'downtime-bytes': number;
  'postcopy-bytes': number;
}

/** `query-migrate` reply; times are in milliseconds. Empty (`{}`) before any migration. */
export interface MigrationInfo {
  status?: MigrationStatus;
  ram?: MigrationStats;
  disk?: MigrationStats;
  'total-time'?: number;
  'expected-downtime'?: number;
  downtime?: number;
  'setup-time'?: number;
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
  'blocked-reasons'?: string[];
  'postcopy-blocktime'?: number;
  [key: string]: unknown;
}

/** Error actions for block jobs (`BlockdevOnError`). */
export type BlockdevOnError = 'report' | 'ignore' | 'enospc' | 'stop' | 'auto';

/** Arguments of `blockdev-mirror`: copy node `device` into the already-added node `target`. */
export interface BlockdevMirrorOptions {
  'job-id'?: string;
  device: string;
  target: string;
  replaces?: string;
  sync: 'top' | 'full' | 'none' | 'incremental' | 'bitmap';
  speed?: number;
  granularity?: number;
  'buf-size'?: number;
  'on-source-error'?: BlockdevOnError;
  'on-target-error'?: BlockdevOnError;
  'filter-node-name'?: string;
  'copy-mode'?: 'background' | 'write-blocking';
  'auto-finalize'?: boolean;
  'auto-dismiss'?: boolean;
}

/** Job states (`JobStatus`); `concluded` jobs stay listed until dismissed. */
export type JobStatus =
  | 'undefined'
  | 'created'
  | 'running'
  | 'paused'
  | 'ready'
  | 'standby'
  | 'waiting'
  | 'pending'
  | 'aborting'
  | 'concluded'
  | 'null';

/** Job kinds (`JobType`). */
export type JobType =
  | 'commit'
  | 'stream'
  | 'mirror'
  | 'backup'
  | 'create'
  | 'amend'
  | 'snapshot-load'
  | 'snapshot-save'
  | 'snapshot-delete';

/** One job in a `query-jobs` reply; `error` is set once a failed job concluded. */
export interface JobInfo {
  id: string;
  type: JobType;
  status: JobStatus;
  'current-progress': number;
  'total-progress': number;
  error?: string;
}

/** One block job in a `query-block-jobs` reply; `device` is the job id. */
export interface BlockJobInfo {
  type: string;
  device: string;
  len: number;
  offset: number;
  busy: boolean;
  paused: boolean;
  speed: number;
  'io-status': BlockIoStatus;
  ready: boolean;
  status: JobStatus;
  'auto-finalize': boolean;
  'auto-dismiss': boolean;
  error?: string;
}

/** Where a server listens: a unix socket path or a TCP host and port. */
export type SocketAddress =
  | { type: 'unix'; path: string }
  | { type: 'inet'; host: string; port: string | number };

/** Options of `nbd-server-start` beside the address. */
export interface NbdServerStartOptions {
  'tls-creds'?: string;
  'tls-authz'?: string;
  'max-connections'?: number;
}

/** Arguments of `block-export-add` for an NBD export (other export types pass extra keys). */
export interface BlockExportOptions {
  type: 'nbd' | 'vhost-user-blk' | 'fuse' | 'vduse-blk';
  id: string;
  'node-name': string;
  writable?: boolean;
  writethrough?: boolean;
  iothread?: string;
  name?: string;
  description?: string;
  bitmaps?: string[];
  'allocation-depth'?: boolean;
  [key: string]: unknown;
}

/** One entry of `query-named-block-nodes` (`BlockDeviceInfo`), the fields the product reads. */
export interface NamedBlockNode {
  'node-name': string;
  drv: string;
  ro: boolean;
  file: string;
  backing_file?: string;
  image: { 'virtual-size': number; filename: string; format: string; 'backing-filename'?: string };
  [key: string]: unknown;
}

/** `x-debug-query-block-graph`: nodes (by internal id) and edges from parent to child with the child's name. */
export interface BlockGraph {
  nodes: Array<{ id: number; type: string; name: string }>;
  edges: Array<{ parent: number; child: number; name: string; perm: string[]; 'shared-perm': string[] }>;
}

/** `data` of the events the product waits for, by event name. */
export interface QmpEventMap {
  SHUTDOWN: { guest: boolean; reason: ShutdownCause };
  RESET: { guest: boolean; reason: ShutdownCause };
  POWERDOWN: Record<string, never>;
  STOP: Record<string, never>;
  RESUME: Record<string, never>;
  SUSPEND: Record<string, never>;
  WAKEUP: Record<string, never>;
  GUEST_PANICKED: { action: 'pause' | 'poweroff' | 'run'; info?: Record<string, unknown> };
  DEVICE_DELETED: { device?: string; path: string };
  JOB_STATUS_CHANGE: { id: string; status: JobStatus };
  BLOCK_JOB_READY: { type: JobType; device: string; len: number; offset: number; speed: number };
  BLOCK_JOB_COMPLETED: { type: JobType; device: string; len: number; offset: number; speed: number; error?: string };
  BLOCK_JOB_CANCELLED: { type: JobType; device: string; len: number; offset: number; speed: number };
  BLOCK_JOB_ERROR: { device: string; operation: 'read' | 'write'; action: 'ignore' | 'report' | 'stop' };
  BLOCK_EXPORT_DELETED: { id: string };
  MIGRATION: { status: MigrationStatus };
  MIGRATION_PASS: { pass: number };
}

/** The `data` type of event `N`: typed for names in `QmpEventMap`, a plain record otherwise. */
export type QmpEventData<N extends string> = N extends keyof QmpEventMap ? QmpEventMap[N] : Record<string, unknown>;
