/**
 * The simulated driver: a hollow node for scale tests and benchmarks ONLY. It keeps guests as
 * entries in a map, takes a configurable time to "start" them and fails a configurable share of
 * starts. No process, no file: guests vanish with the agent process, and `recover` finds none.
 */
import { Duplex } from 'node:stream';
import { FailedPreconditionError, InternalError } from '@hyperplane/domain';
import type {
  ConsoleTail,
  DriverListener,
  GuestSpec,
  HostFacts,
  ImageEntry,
  PartitionDriver,
  RecoveredGuest,
  RunningGuest,
  StopOptions,
} from '../driver';

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
