/**
 * The contract between the reconciler and whatever runs guests on this node. A driver knows how to
 * start, stop and inspect one guest per partition id; it knows nothing of generations, desired
 * state or the control plane. The reconciler serialises calls per partition id, so a driver never
 * sees two of start/stop/reboot/destroy for the same id at once, with one exception: `stop` may be
 * called again while a stop runs, to adjust it (force, grace).
 */
import type { Duplex } from 'node:stream';

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
  | { id: string; alive: false; reason: string };

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
}

/** One image of the node's store. */
export interface ImageEntry {
  name: string;
  format: string;
  sizeBytes: number;
  virtualSizeBytes: number;
  path: string;
}

/** The end of a guest's serial log. */
export interface ConsoleTail {
  /** UTF-8 text (a partial first character is dropped). */
  data: string;
  /** True when the log holds more than was returned. */
  truncated: boolean;
}

/** Receives what happens to guests between calls. Set once, before `recover`. */
export interface DriverListener {
  /** A guest process ended, requested or not. Called once per guest process. */
  onExit(id: string, exit: GuestExit): void;
  /** A hypervisor event (QMP event name and data), for the control plane's event stream. */
  onEvent(id: string, event: string, data: Record<string, unknown>): void;
}

/** A driver: runs guests for one node. Every method's `id` is a partition id (UUID). */
export interface PartitionDriver {
  /** qemu | simulated, as reported in the inventory. */
  readonly kind: 'qemu' | 'simulated';
  /** Sets who hears about exits and events; call before `recover` and `start`. */
  setListener(listener: DriverListener): void;
  /** Host facts (cached after the first call). */
  hostFacts(): Promise<HostFacts>;
  /** The images this node can start guests from. */
  listImages(): Promise<ImageEntry[]>;
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
  /** Lets go of guests (monitor connections, watchers) WITHOUT stopping them. */
  close(): Promise<void>;
}
