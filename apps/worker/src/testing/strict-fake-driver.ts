/**
 * A strict fake PartitionDriver for unit tests: every driver action must be set up with `when`
 * before it is called. An action called without being set up throws AND is recorded in
 * `unexpected`, which a test asserts empty (the reconciler catches driver errors, so the throw
 * alone would not fail the test).
 */
import type { Duplex } from 'node:stream';
import type {
  ConsoleTail,
  DriverListener,
  GuestExit,
  GuestSpec,
  HostFacts,
  ImageEntry,
  PartitionDriver,
  RecoveredGuest,
  RunningGuest,
  StopOptions,
} from '../drivers/driver';

/** The driver actions a test sets up. */
export interface FakeDriverActions {
  hostFacts(): Promise<HostFacts>;
  listImages(): Promise<ImageEntry[]>;
  recover(): Promise<RecoveredGuest[]>;
  start(spec: GuestSpec): Promise<RunningGuest>;
  stop(id: string, options: StopOptions): Promise<void>;
  reboot(id: string): Promise<void>;
  destroy(id: string): Promise<void>;
  consoleTail(id: string, bytes: number): Promise<ConsoleTail>;
  openConsole(id: string): Duplex;
  close(): Promise<void>;
}

/** One recorded call. */
export interface FakeCall {
  method: keyof FakeDriverActions;
  args: unknown[];
}

/** See the file comment. `running` is the fake's truth for `isRunning`; set-ups update it. */
export class StrictFakeDriver implements PartitionDriver {
  readonly kind = 'simulated' as const;
  /** Ids whose guest "runs", with its pid. */
  readonly running = new Map<string, number>();
  readonly calls: FakeCall[] = [];
  readonly unexpected: string[] = [];
  private listener: DriverListener | undefined;
  private readonly actions: Partial<FakeDriverActions> = {};

  /** Sets up an action. */
  when<K extends keyof FakeDriverActions>(method: K, impl: FakeDriverActions[K]): this {
    this.actions[method] = impl;
    return this;
  }

  /** The recorded calls of one method, as argument lists. */
  callsOf(method: keyof FakeDriverActions): unknown[][] {
    return this.calls.filter((c) => c.method === method).map((c) => c.args);
  }

  /** Simulates a guest ending (as the driver would report it). */
  exit(id: string, exit: GuestExit): void {
    this.running.delete(id);
    this.listener!.onExit(id, exit);
  }

  /** Simulates a hypervisor event. */
  event(id: string, event: string, data: Record<string, unknown>): void {
    this.listener!.onEvent(id, event, data);
  }

  setListener(listener: DriverListener): void {
    this.listener = listener;
  }

  isRunning(id: string): boolean {
    return this.running.has(id);
  }

  hostFacts(): Promise<HostFacts> {
    return this.invoke('hostFacts', []);
  }

  listImages(): Promise<ImageEntry[]> {
    return this.invoke('listImages', []);
  }

  recover(): Promise<RecoveredGuest[]> {
    return this.invoke('recover', []);
  }

  start(spec: GuestSpec): Promise<RunningGuest> {
    return this.invoke('start', [spec]);
  }

  stop(id: string, options: StopOptions): Promise<void> {
    return this.invoke('stop', [id, options]);
  }

  reboot(id: string): Promise<void> {
    return this.invoke('reboot', [id]);
  }

  destroy(id: string): Promise<void> {
    return this.invoke('destroy', [id]);
  }

  consoleTail(id: string, bytes: number): Promise<ConsoleTail> {
    return this.invoke('consoleTail', [id, bytes]);
  }

  openConsole(id: string): Duplex {
    return this.invokeSync('openConsole', [id]);
  }

  close(): Promise<void> {
    return this.invoke('close', []);
  }

  private invoke<T>(method: keyof FakeDriverActions, args: unknown[]): Promise<T> {
    try {
      return Promise.resolve(this.invokeSync(method, args));
    } catch (error) {
      return Promise.reject(error);
    }
  }

  private invokeSync<T>(method: keyof FakeDriverActions, args: unknown[]): T {
    this.calls.push({ method, args });
    const impl = this.actions[method] as ((...a: unknown[]) => T) | undefined;
    if (!impl) {
      const message = `StrictFakeDriver.${method}(${args.map((a) => JSON.stringify(a)).join(', ')}) called without being set up`;
      this.unexpected.push(message);
      throw new Error(message);
    }
    return impl(...args);
  }
}
