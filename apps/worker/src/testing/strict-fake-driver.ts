/**
 * A strict fake PartitionDriver for unit tests: every driver action must be set up with `when`
 * before it is called. An action called without being set up throws AND is recorded in
 * `unexpected`, which a test asserts empty (the reconciler catches driver errors, so the throw
 * alone would not fail the test).
 */
import type { Duplex } from 'node:stream';
import type {
  ColdMigrationReceiver,
  ColdMigrationTarget,
  ConsoleTail,
  DriverListener,
  GuestExit,
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
  snapshotCreate(id: string, options: SnapshotCreateOptions): Promise<SnapshotEntry>;
  snapshotRevert(id: string, tag: string): Promise<void>;
  snapshotDelete(id: string, tag: string): Promise<void>;
  snapshotList(id: string): Promise<SnapshotEntry[]>;
  migrationPrepareTarget(spec: GuestSpec, options: MigrationTargetOptions): Promise<MigrationTarget>;
  migrationStart(id: string, target: MigrationTarget, options: MigrationOptions, onProgress?: (progress: MigrationProgress) => void): Promise<MigrationResult>;
  migrationCancel(id: string): Promise<void>;
  migrationFinishTarget(id: string): Promise<RunningGuest>;
  migrationAbortTarget(id: string): Promise<void>;
  coldMigrationPrepareTarget(spec: GuestSpec, options: { host: string; port: number; timeoutMs?: number }): Promise<ColdMigrationReceiver>;
  coldMigrationSend(id: string, target: ColdMigrationTarget): Promise<{ bytes: number; ms: number }>;
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

  snapshotCreate(id: string, options: SnapshotCreateOptions): Promise<SnapshotEntry> {
    return this.invoke('snapshotCreate', [id, options]);
  }

  snapshotRevert(id: string, tag: string): Promise<void> {
    return this.invoke('snapshotRevert', [id, tag]);
  }

  snapshotDelete(id: string, tag: string): Promise<void> {
    return this.invoke('snapshotDelete', [id, tag]);
  }

  snapshotList(id: string): Promise<SnapshotEntry[]> {
    return this.invoke('snapshotList', [id]);
  }

  migrationPrepareTarget(spec: GuestSpec, options: MigrationTargetOptions): Promise<MigrationTarget> {
    return this.invoke('migrationPrepareTarget', [spec, options]);
  }

  /** `onProgress` is passed to the set-up action but not recorded. */
  migrationStart(id: string, target: MigrationTarget, options: MigrationOptions, onProgress?: (progress: MigrationProgress) => void): Promise<MigrationResult> {
    const impl = this.actions.migrationStart;
    if (!impl) return this.invoke('migrationStart', [id, target, options]);
    this.calls.push({ method: 'migrationStart', args: [id, target, options] });
    try {
      return impl(id, target, options, onProgress);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  migrationCancel(id: string): Promise<void> {
    return this.invoke('migrationCancel', [id]);
  }

  migrationFinishTarget(id: string): Promise<RunningGuest> {
    return this.invoke('migrationFinishTarget', [id]);
  }

  migrationAbortTarget(id: string): Promise<void> {
    return this.invoke('migrationAbortTarget', [id]);
  }

  coldMigrationPrepareTarget(spec: GuestSpec, options: { host: string; port: number; timeoutMs?: number }): Promise<ColdMigrationReceiver> {
    return this.invoke('coldMigrationPrepareTarget', [spec, options]);
  }

  coldMigrationSend(id: string, target: ColdMigrationTarget): Promise<{ bytes: number; ms: number }> {
    return this.invoke('coldMigrationSend', [id, target]);
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
