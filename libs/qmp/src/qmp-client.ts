import { createConnection } from 'node:net';
import type { Duplex } from 'node:stream';
import { QmpCommandError, QmpDisconnectedError, QmpProtocolError, QmpTimeoutError } from './qmp-errors';
import { QmpLineDecoder } from './qmp-line-decoder';
import type {
  BlockdevMirrorOptions,
  BlockdevOptions,
  BlockExportOptions,
  BlockGraph,
  BlockInfo,
  BlockJobInfo,
  CpuInfoFast,
  DeviceAddOptions,
  JobInfo,
  MigrateSetParameters,
  MigrationCapability,
  MigrationInfo,
  MigrationStatus,
  NamedBlockNode,
  NbdServerStartOptions,
  ObjectAddOptions,
  QemuVersionTriple,
  QmpEvent,
  QmpEventData,
  QmpGreeting,
  ScreendumpFormat,
  SocketAddress,
  StatusInfo,
  VersionInfo,
} from './qmp-types';

/** Tuning for a `QmpClient`; every field has a default. */
export interface QmpClientOptions {
  /** Time a command may wait for its reply unless `execute` says otherwise. Default 30 s. */
  commandTimeoutMs?: number;
  /** Time for the socket connect, greeting and `qmp_capabilities` together. Default 5 s. */
  connectTimeoutMs?: number;
  /** Time the `query-status` liveness probe may take. Default 2 s. */
  probeTimeoutMs?: number;
  /** Longest message accepted, in characters; longer is a protocol error. Default 16 Mi. */
  maxLineLength?: number;
}

/** Per-call options of `execute`. `timeoutMs: Infinity` waits without a timer. */
export interface QmpExecuteOptions {
  timeoutMs?: number;
}

/**
 * What a failure says about QEMU, as told by `classifyFailure`:
 * - `command-failed`: QEMU answered the probe, so only the command failed;
 * - `unresponsive`: the connection is open but QEMU did not answer the probe in time (hung or very busy);
 * - `disconnected`: the monitor connection is gone (QEMU exited or crashed, or the client was closed).
 */
export type QmpFailureKind = 'command-failed' | 'unresponsive' | 'disconnected';

interface PendingCommand {
  command: string;
  resolve(value: unknown): void;
  reject(error: Error): void;
  timer: NodeJS.Timeout | undefined;
}

const DEFAULT_OPTIONS: Required<QmpClientOptions> = {
  commandTimeoutMs: 30_000,
  connectTimeoutMs: 5_000,
  probeTimeoutMs: 2_000,
  maxLineLength: 16 * 1024 * 1024,
};

/**
 * A QMP connection to one QEMU process. Obtain one with `QmpClient.connect(path)` or
 * `QmpClient.fromStream(stream)`: both resolve only after the greeting and `qmp_capabilities`
 * handshake, so every method is usable at once. Commands may run concurrently; replies are matched
 * by id. Errors: `QmpCommandError` (QEMU refused the command), `QmpTimeoutError` (no reply in time;
 * the connection stays open), `QmpDisconnectedError` (connection gone: pending and later commands
 * reject with it), `QmpProtocolError` (the peer is not speaking QMP: pending commands reject with
 * it and the client closes itself). Call `close()` when done; it leaves no timers or listeners.
 */
export class QmpClient {
  private readonly options: Required<QmpClientOptions>;
  private readonly decoder: QmpLineDecoder;
  private readonly pending = new Map<number, PendingCommand>();
  private readonly eventListeners = new Set<(event: QmpEvent) => void>();
  private readonly disconnectListeners = new Set<(error: QmpDisconnectedError) => void>();
  private readonly greetingReceived: Promise<QmpGreeting>;
  private readonly streamClosed: Promise<void>;
  private settleGreeting!: { resolve(greeting: QmpGreeting): void; reject(error: Error): void };
  private receivedGreeting: QmpGreeting | undefined;
  private disconnectError: QmpDisconnectedError | undefined;
  private nextId = 1;

  private constructor(
    private readonly stream: Duplex,
    private readonly label: string,
    options: QmpClientOptions,
  ) {
    this.options = { ...DEFAULT_OPTIONS, ...options };
    this.decoder = new QmpLineDecoder(this.options.maxLineLength);
    this.greetingReceived = new Promise<QmpGreeting>((resolve, reject) => {
      this.settleGreeting = { resolve, reject };
    });
    this.greetingReceived.catch(() => undefined);
    this.streamClosed = new Promise<void>((resolve) => stream.once('close', () => resolve()));
    stream.on('data', (chunk: Buffer | string) => this.onData(chunk));
    stream.on('end', () => this.shutDown(this.decoder.pendingLength > 0 ? 'QEMU closed the connection mid-message' : 'QEMU closed the connection'));
    stream.on('error', (error: Error) => this.shutDown(`connection error: ${error.message}`, error));
    stream.on('close', () => this.shutDown('connection closed'));
  }

  /**
   * Connects to QEMU's QMP unix socket (`-qmp unix:PATH,server=on,wait=off`) and completes the
   * handshake within `connectTimeoutMs`. Rejects with `QmpDisconnectedError` if the socket cannot
   * be opened (its `cause` is the errno error: retry on ENOENT/ECONNREFUSED while QEMU starts),
   * `QmpTimeoutError`, `QmpProtocolError` for a bad greeting, or `QmpCommandError`.
   */
  static connect(path: string, options: QmpClientOptions = {}): Promise<QmpClient> {
    return QmpClient.start(createConnection({ path }), path, options);
  }

  /**
   * Like `connect`, over a stream already connected to a QMP server (tests, proxies). The client
   * owns the stream from now on; it must emit 'close' once destroyed, as sockets do.
   */
  static fromStream(stream: Duplex, options: QmpClientOptions = {}): Promise<QmpClient> {
    return QmpClient.start(stream, 'stream', options);
  }

  private static async start(stream: Duplex, label: string, options: QmpClientOptions): Promise<QmpClient> {
    const client = new QmpClient(stream, label, options);
    const timeoutMs = client.options.connectTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new QmpTimeoutError('QMP handshake', timeoutMs)), timeoutMs);
    });
    try {
      await Promise.race([client.handshake(), deadline]);
      return client;
    } catch (error) {
      client.shutDown('handshake failed', error);
      await client.close();
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  private async handshake(): Promise<void> {
    await this.greetingReceived;
    await this.execute('qmp_capabilities', undefined, { timeoutMs: Infinity });
  }

  /** The greeting QEMU sent on connect. */
  get greeting(): QmpGreeting {
    return this.receivedGreeting!;
  }

  /** QEMU's version from the greeting (no round trip). */
  get version(): QemuVersionTriple {
    return this.greeting.QMP.version.qemu;
  }

  /** Whether the connection is gone; once true, every command rejects with `QmpDisconnectedError`. */
  get closed(): boolean {
    return this.disconnectError !== undefined;
  }

  /**
   * Sends one command and resolves with its `return` value (`T` is trusted, not checked). Rejects
   * with `QmpCommandError`, `QmpTimeoutError` after `timeoutMs` (default `commandTimeoutMs`),
   * `QmpDisconnectedError`, or `QmpProtocolError`. Commands are sent in call order; QEMU runs them
   * in that order, so a stuck command delays the ones after it.
   */
  execute<T = unknown>(command: string, args?: object, options: QmpExecuteOptions = {}): Promise<T> {
    if (this.disconnectError) {
      return Promise.reject(new QmpDisconnectedError(`${command}: ${this.disconnectError.message}`, { cause: this.disconnectError }));
    }
    const id = this.nextId++;
    const timeoutMs = options.timeoutMs ?? this.options.commandTimeoutMs;
    const message = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
    const line = `${JSON.stringify(message)}\n`;
    return new Promise<T>((resolve, reject) => {
      const entry: PendingCommand = { command, resolve: resolve as (value: unknown) => void, reject, timer: undefined };
      if (Number.isFinite(timeoutMs)) {
        entry.timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new QmpTimeoutError(command, timeoutMs));
        }, timeoutMs);
      }
      this.pending.set(id, entry);
      this.stream.write(line);
    });
  }

  /**
   * Subscribes to every event (`'event'`) or to the end of the connection (`'disconnect'`, called
   * once, after pending commands were rejected). Returns the unsubscribe function. Listeners added
   * after the disconnect are never called. A listener that throws does not disturb the client; its
   * error is rethrown on the next tick.
   */
  on(type: 'event', listener: (event: QmpEvent) => void): () => void;
  on(type: 'disconnect', listener: (error: QmpDisconnectedError) => void): () => void;
  on(type: 'event' | 'disconnect', listener: ((event: QmpEvent) => void) | ((error: QmpDisconnectedError) => void)): () => void {
    const set = (type === 'event' ? this.eventListeners : this.disconnectListeners) as Set<typeof listener>;
    if (this.closed) return () => undefined;
    set.add(listener);
    return () => void set.delete(listener);
  }

  /** Subscribes to the events named `name` (e.g. `SHUTDOWN`); returns the unsubscribe function. */
  onEvent<N extends string>(name: N, listener: (event: QmpEvent<QmpEventData<N>>) => void): () => void {
    return this.on('event', (event) => {
      if (event.event === name) listener(event as QmpEvent<QmpEventData<N>>);
    });
  }

  /**
   * Resolves with the next event `name` that satisfies `predicate`. Register it before sending the
   * command that causes the event: earlier events are not replayed. Rejects with `QmpTimeoutError`
   * after `timeoutMs` (default `commandTimeoutMs`), `QmpDisconnectedError` if the connection ends
   * first, or the predicate's own error.
   */
  waitForEvent<N extends string>(
    name: N,
    predicate?: (event: QmpEvent<QmpEventData<N>>) => boolean,
    timeoutMs: number = this.options.commandTimeoutMs,
  ): Promise<QmpEvent<QmpEventData<N>>> {
    return new Promise((resolve, reject) => {
      if (this.disconnectError) {
        reject(new QmpDisconnectedError(`waiting for event ${name}: ${this.disconnectError.message}`, { cause: this.disconnectError }));
        return;
      }
      const settle = (fn: () => void): void => {
        clearTimeout(timer);
        offEvent();
        offDisconnect();
        fn();
      };
      const timer = setTimeout(() => settle(() => reject(new QmpTimeoutError(`event ${name}`, timeoutMs))), timeoutMs);
      const offEvent = this.onEvent(name, (event) => {
        let matches: boolean;
        try {
          matches = predicate ? predicate(event) : true;
        } catch (error) {
          settle(() => reject(error));
          return;
        }
        if (matches) settle(() => resolve(event));
      });
      const offDisconnect = this.on('disconnect', (error) =>
        settle(() => reject(new QmpDisconnectedError(`waiting for event ${name}: ${error.message}`, { cause: error }))),
      );
    });
  }

  /**
   * Resolves with the disconnect error once the connection has ended (at once if it already has).
   * Rejects with `QmpTimeoutError` after `timeoutMs`; without one it waits for ever.
   */
  waitForDisconnect(timeoutMs?: number): Promise<QmpDisconnectedError> {
    return new Promise((resolve, reject) => {
      if (this.disconnectError) {
        resolve(this.disconnectError);
        return;
      }
      const timer =
        timeoutMs === undefined
          ? undefined
          : setTimeout(() => {
              off();
              reject(new QmpTimeoutError('waiting for disconnect', timeoutMs));
            }, timeoutMs);
      const off = this.on('disconnect', (error) => {
        clearTimeout(timer);
        resolve(error);
      });
    });
  }

  /**
   * Cheap liveness probe: `query-status` with a short timeout (default `probeTimeoutMs`). True when
   * QEMU answered at all, even with an error. Never rejects.
   */
  async isAlive(timeoutMs: number = this.options.probeTimeoutMs): Promise<boolean> {
    return (await this.probe(timeoutMs)) === 'command-failed';
  }

  /**
   * After a command rejected with `error`, tells a failed command from a dead or hung QEMU (see
   * `QmpFailureKind`). Probes with `query-status` unless the connection is already gone. Call it
   * only after the failed command settled. Never rejects.
   */
  async classifyFailure(error: unknown, timeoutMs: number = this.options.probeTimeoutMs): Promise<QmpFailureKind> {
    if (this.closed || error instanceof QmpDisconnectedError || error instanceof QmpProtocolError) return 'disconnected';
    return this.probe(timeoutMs);
  }

  private async probe(timeoutMs: number): Promise<QmpFailureKind> {
    try {
      await this.execute('query-status', undefined, { timeoutMs });
      return 'command-failed';
    } catch (error) {
      if (error instanceof QmpCommandError) return 'command-failed';
      if (error instanceof QmpTimeoutError) return 'unresponsive';
      return 'disconnected';
    }
  }

  /**
   * Closes the connection: pending commands and event waits reject with `QmpDisconnectedError`,
   * `'disconnect'` listeners run, and the promise resolves once the socket is closed. Idempotent.
   * Does not stop QEMU (use `quit()` for that).
   */
  async close(): Promise<void> {
    this.shutDown('client closed the connection');
    if (!this.stream.closed) await this.streamClosed;
  }

  /** `query-status`: the VM's run state. */
  queryStatus(): Promise<StatusInfo> {
    return this.execute<StatusInfo>('query-status');
  }

  /** `cont`: resume a paused VM, or start one launched with `-S`. */
  async resume(): Promise<void> {
    await this.execute('cont');
  }

  /** `stop`: pause the VM's vCPUs (emits `STOP`). */
  async pause(): Promise<void> {
    await this.execute('stop');
  }

  /** `system_powerdown`: ask the guest to power off via ACPI; the guest may ignore it. */
  async systemPowerdown(): Promise<void> {
    await this.execute('system_powerdown');
  }

  /** `system_reset`: hard-reset the VM (emits `RESET`). */
  async systemReset(): Promise<void> {
    await this.execute('system_reset');
  }

  /**
   * `quit`: make QEMU exit at once, without asking the guest. Resolves when QEMU acknowledged or
   * closed the connection (it may close before its reply arrives); wait for the process to exit
   * separately.
   */
  async quit(): Promise<void> {
    if (this.closed) {
      await this.execute('quit');
      return;
    }
    try {
      await this.execute('quit');
    } catch (error) {
      if (!(error instanceof QmpDisconnectedError)) throw error;
    }
  }

  /** `query-version`: QEMU's version, asked over the wire (the greeting's `version` is free). */
  queryVersion(): Promise<VersionInfo> {
    return this.execute<VersionInfo>('query-version');
  }

  /** `query-cpus-fast`: vCPUs with their host thread ids, without interrupting them. */
  queryCpusFast(): Promise<CpuInfoFast[]> {
    return this.execute<CpuInfoFast[]>('query-cpus-fast');
  }

  /** `query-block`: the block devices the guest sees and their media. */
  queryBlock(): Promise<BlockInfo[]> {
    return this.execute<BlockInfo[]>('query-block');
  }

  /** `blockdev-add`: add a block node graph; give it a `node-name` to refer to it later. */
  async blockdevAdd(options: BlockdevOptions): Promise<void> {
    await this.execute('blockdev-add', options);
  }

  /** `blockdev-del`: remove a block node added by `blockdevAdd`; nothing may use it any more. */
  async blockdevDel(nodeName: string): Promise<void> {
    await this.execute('blockdev-del', { 'node-name': nodeName });
  }

  /** `device_add`: hot-plug a device. */
  async deviceAdd(options: DeviceAddOptions): Promise<void> {
    await this.execute('device_add', options);
  }

  /**
   * `device_del`: request unplug. Resolves when the request is accepted; the device is gone only
   * at `DEVICE_DELETED` (`waitForEvent` it, registered before this call).
   */
  async deviceDel(id: string): Promise<void> {
    await this.execute('device_del', { id });
  }

  /** `human-monitor-command`: run an HMP command line and return its text output. */
  humanMonitorCommand(commandLine: string, cpuIndex?: number): Promise<string> {
    return this.execute<string>('human-monitor-command', { 'command-line': commandLine, 'cpu-index': cpuIndex });
  }

  /**
   * `screendump`: write the display to `filename` on QEMU's host (PPM by default, or PNG). Needs a
   * display device (e.g. `-vga std`); works with `-display none`.
   */
  async screendump(filename: string, format?: ScreendumpFormat, target: { device?: string; head?: number } = {}): Promise<void> {
    await this.execute('screendump', { filename, format, ...target });
  }

  /**
   * `migrate`: start an outgoing migration to `uri` (e.g. `tcp:HOST:PORT`). Resolves once started;
   * follow it with `queryMigrate` or `MIGRATION` events (with the `events` capability).
   * `resume: true` resumes a paused postcopy migration.
   */
  async migrate(uri: string, options: { resume?: boolean } = {}): Promise<void> {
    await this.execute('migrate', { uri, ...options });
  }

  /** `migrate-incoming`: listen for an incoming migration; QEMU must run with `-incoming defer`. */
  async migrateIncoming(uri: string): Promise<void> {
    await this.execute('migrate-incoming', { uri });
  }

  /** `migrate_cancel`: cancel the outgoing migration; the source keeps running. */
  async migrateCancel(): Promise<void> {
    await this.execute('migrate_cancel');
  }

  /** `migrate-set-capabilities`: set capabilities before `migrate`/`migrateIncoming`, on both sides. */
  async migrateSetCapabilities(capabilities: Partial<Record<MigrationCapability, boolean>>): Promise<void> {
    const list = Object.entries(capabilities).map(([capability, state]) => ({ capability, state }));
    await this.execute('migrate-set-capabilities', { capabilities: list });
  }

  /** `migrate-set-parameters`: tune bandwidth, downtime and friends; may be changed mid-migration. */
  async migrateSetParameters(parameters: MigrateSetParameters): Promise<void> {
    await this.execute('migrate-set-parameters', parameters);
  }

  /** `query-migrate`: progress and outcome of the current or last migration. */
  queryMigrate(): Promise<MigrationInfo> {
    return this.execute<MigrationInfo>('query-migrate');
  }

  /** `migrate-start-postcopy`: switch a running migration to postcopy (needs `postcopy-ram`). */
  async migrateStartPostcopy(): Promise<void> {
    await this.execute('migrate-start-postcopy');
  }

  /** `migrate-continue`: go on from the paused `state` (e.g. `pre-switchover`). */
  async migrateContinue(state: MigrationStatus): Promise<void> {
    await this.execute('migrate-continue', { state });
  }

  /**
   * `blockdev-mirror`: start a mirror job copying node `device` into the already-added node
   * `target`. It reaches `ready` (`BLOCK_JOB_READY`); then `blockJobComplete` pivots to the target
   * or `blockJobCancel` stops mirroring and keeps the source.
   */
  async blockdevMirror(options: BlockdevMirrorOptions): Promise<void> {
    await this.execute('blockdev-mirror', options);
  }

  /** `block-job-cancel`: stop a block job (`device` is the job id); `force` even when paused. */
  async blockJobCancel(device: string, force?: boolean): Promise<void> {
    await this.execute('block-job-cancel', { device, force });
  }

  /** `block-job-complete`: finish a `ready` mirror job by switching to its target. */
  async blockJobComplete(device: string): Promise<void> {
    await this.execute('block-job-complete', { device });
  }

  /** `query-block-jobs`: the running block jobs. */
  queryBlockJobs(): Promise<BlockJobInfo[]> {
    return this.execute<BlockJobInfo[]>('query-block-jobs');
  }

  /** `query-jobs`: all jobs, including concluded ones not yet dismissed. */
  queryJobs(): Promise<JobInfo[]> {
    return this.execute<JobInfo[]>('query-jobs');
  }

  /** `job-dismiss`: forget a `concluded` job (read its `error` with `queryJobs` first). */
  async jobDismiss(id: string): Promise<void> {
    await this.execute('job-dismiss', { id });
  }

  /**
   * `snapshot-save`: start job `jobId` saving internal snapshot `tag` of `devices` (node names),
   * with VM state in node `vmstate`. Resolves when started; watch `JOB_STATUS_CHANGE` or
   * `queryJobs` for `concluded`, then `jobDismiss`.
   */
  async snapshotSave(jobId: string, tag: string, vmstate: string, devices: string[]): Promise<void> {
    await this.execute('snapshot-save', { 'job-id': jobId, tag, vmstate, devices });
  }

  /** `snapshot-load`: start job `jobId` restoring snapshot `tag`; same job life cycle as `snapshotSave`. */
  async snapshotLoad(jobId: string, tag: string, vmstate: string, devices: string[]): Promise<void> {
    await this.execute('snapshot-load', { 'job-id': jobId, tag, vmstate, devices });
  }

  /**
   * `blockdev-snapshot-internal-sync`: take internal snapshot `name` of one disk (`device`: a
   * device or root node name) at once, without VM state: crash-consistent, the guest keeps running.
   */
  async blockdevSnapshotInternalSync(device: string, name: string): Promise<void> {
    await this.execute('blockdev-snapshot-internal-sync', { device, name });
  }

  /** `snapshot-delete`: start job `jobId` deleting snapshot `tag` from `devices`. */
  async snapshotDelete(jobId: string, tag: string, devices: string[]): Promise<void> {
    await this.execute('snapshot-delete', { 'job-id': jobId, tag, devices });
  }

  /** `nbd-server-start`: start QEMU's single NBD server; export nodes with `blockExportAdd`. */
  async nbdServerStart(address: SocketAddress, options: NbdServerStartOptions = {}): Promise<void> {
    const addr =
      address.type === 'unix'
        ? { type: 'unix', data: { path: address.path } }
        : { type: 'inet', data: { host: address.host, port: String(address.port) } };
    await this.execute('nbd-server-start', { addr, ...options });
  }

  /**
   * `block-export-add`: export a node, e.g. `{type: 'nbd', id, 'node-name', name, writable}` on
   * the server `nbdServerStart` started (the modern form of `nbd-server-add`).
   */
  async blockExportAdd(options: BlockExportOptions): Promise<void> {
    await this.execute('block-export-add', options);
  }

  /** `block-export-del`: remove an export; `hard` drops connected clients. Done at `BLOCK_EXPORT_DELETED`. */
  async blockExportDel(id: string, mode?: 'safe' | 'hard'): Promise<void> {
    await this.execute('block-export-del', { id, mode });
  }

  /** `nbd-server-stop`: stop the NBD server and drop its exports. */
  async nbdServerStop(): Promise<void> {
    await this.execute('nbd-server-stop');
  }

  /** `object-add`: create a QOM object (secret, iothread, memory backend, TLS creds...). */
  async objectAdd(options: ObjectAddOptions): Promise<void> {
    await this.execute('object-add', options);
  }

  /** `object-del`: delete a QOM object no longer in use. */
  async objectDel(id: string): Promise<void> {
    await this.execute('object-del', { id });
  }

  /** `query-named-block-nodes` (flat): every block node with its image facts (virtual size, backing). */
  queryNamedBlockNodes(): Promise<NamedBlockNode[]> {
    return this.execute<NamedBlockNode[]>('query-named-block-nodes', { flat: true });
  }

  /**
   * `x-blockdev-change`: add node `node` as a new child of `parent` (a quorum), or remove the
   * child named `child` (`children.N`, see `blockGraph`). Experimental in QEMU 7.2 (hence `x-`);
   * quorum is the only driver that supports it.
   */
  async xBlockdevChange(change: { parent: string; node: string } | { parent: string; child: string }): Promise<void> {
    await this.execute('x-blockdev-change', change);
  }

  /** `x-debug-query-block-graph`: the block graph (nodes and named parent→child edges). Debug command in QEMU 7.2. */
  blockGraph(): Promise<BlockGraph> {
    return this.execute<BlockGraph>('x-debug-query-block-graph');
  }

  /**
   * `block-stream`: start job `jobId` copying the backing chain's data of node `device` into it
   * (all of it when `baseNode` is absent; the node then has no backing any more).
   */
  async blockStream(jobId: string, device: string, options: { baseNode?: string; speed?: number } = {}): Promise<void> {
    await this.execute('block-stream', { 'job-id': jobId, device, ...(options.baseNode ? { 'base-node': options.baseNode } : {}), ...(options.speed ? { speed: options.speed } : {}) });
  }

  /** `blockdev-backup`: start job `jobId` copying node `device` into the same-sized node `target` (`sync: full` copies everything). */
  async blockdevBackup(jobId: string, device: string, target: string, sync: 'full' | 'top' | 'none' = 'full'): Promise<void> {
    await this.execute('blockdev-backup', { 'job-id': jobId, device, target, sync });
  }

  /** `blockdev-create`: start job `jobId` formatting an image (`options` are the driver's `BlockdevCreateOptions`). */
  async blockdevCreate(jobId: string, options: BlockdevOptions): Promise<void> {
    await this.execute('blockdev-create', { 'job-id': jobId, options });
  }

  private onData(chunk: Buffer | string): void {
    if (this.closed) return;
    let lines: string[];
    try {
      lines = this.decoder.push(chunk);
    } catch (error) {
      this.failProtocol(error as QmpProtocolError);
      return;
    }
    for (const line of lines) {
      if (this.closed) return;
      this.onLine(line);
    }
  }

  private onLine(line: string): void {
    let message: unknown;
    try {
      message = JSON.parse(line);
    } catch {
      this.failProtocol(new QmpProtocolError(`QMP ${this.label}: not JSON: ${excerpt(line)}`));
      return;
    }
    if (!isRecord(message)) {
      this.failProtocol(new QmpProtocolError(`QMP ${this.label}: not a JSON object: ${excerpt(line)}`));
      return;
    }
    if (!this.receivedGreeting) {
      this.onGreeting(message, line);
    } else if (typeof message.event === 'string') {
      this.dispatchEvent(message);
    } else if ('return' in message || 'error' in message) {
      this.onReply(message, line);
    } else {
      this.failProtocol(new QmpProtocolError(`QMP ${this.label}: unexpected message: ${excerpt(line)}`));
    }
  }

  private onGreeting(message: Record<string, unknown>, line: string): void {
    const qmp = message.QMP;
    const version = isRecord(qmp) && isRecord(qmp.version) ? qmp.version : undefined;
    const qemu = version && isRecord(version.qemu) ? version.qemu : undefined;
    const valid =
      isRecord(qmp) &&
      qemu !== undefined &&
      typeof qemu.major === 'number' &&
      typeof qemu.minor === 'number' &&
      typeof qemu.micro === 'number' &&
      Array.isArray(qmp.capabilities);
    if (!valid) {
      this.failProtocol(new QmpProtocolError(`QMP ${this.label}: bad greeting: ${excerpt(line)}`));
      return;
    }
    this.receivedGreeting = {
      QMP: {
        version: { qemu: { major: qemu.major as number, minor: qemu.minor as number, micro: qemu.micro as number }, package: String(version!.package ?? '') },
        capabilities: (qmp.capabilities as unknown[]).map(String),
      },
    };
    this.settleGreeting.resolve(this.receivedGreeting);
  }

  private dispatchEvent(message: Record<string, unknown>): void {
    const timestamp = isRecord(message.timestamp) ? message.timestamp : {};
    const event: QmpEvent = {
      event: message.event as string,
      data: isRecord(message.data) ? message.data : {},
      timestamp: { seconds: Number(timestamp.seconds ?? 0), microseconds: Number(timestamp.microseconds ?? 0) },
    };
    for (const listener of [...this.eventListeners]) callListener(listener, event);
  }

  private onReply(message: Record<string, unknown>, line: string): void {
    if (typeof message.id !== 'number') {
      this.failProtocol(new QmpProtocolError(`QMP ${this.label}: reply without a command id: ${excerpt(line)}`));
      return;
    }
    const entry = this.pending.get(message.id);
    if (!entry) return; // late reply to a command that already timed out
    this.pending.delete(message.id);
    clearTimeout(entry.timer);
    if ('error' in message) {
      const error = isRecord(message.error) ? message.error : {};
      entry.reject(new QmpCommandError(entry.command, String(error.class ?? 'GenericError'), String(error.desc ?? '')));
    } else {
      entry.resolve(message.return);
    }
  }

  private failProtocol(error: QmpProtocolError): void {
    this.shutDown(`protocol error: ${error.message}`, error, error);
  }

  /**
   * Ends the connection once: rejects pending commands (with `failure` if given, else a
   * per-command QmpDisconnectedError), destroys the stream, then tells 'disconnect' listeners.
   */
  private shutDown(reason: string, cause?: unknown, failure?: Error): void {
    if (this.disconnectError) return;
    const error = new QmpDisconnectedError(`QMP ${this.label}: ${reason}`, cause === undefined ? undefined : { cause });
    this.disconnectError = error;
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const entry of pending) {
      clearTimeout(entry.timer);
      entry.reject(failure ?? new QmpDisconnectedError(`${entry.command}: ${error.message}`, { cause: error }));
    }
    this.settleGreeting.reject(failure ?? error);
    this.stream.destroy();
    const listeners = [...this.disconnectListeners];
    this.disconnectListeners.clear();
    this.eventListeners.clear();
    for (const listener of listeners) callListener(listener, error);
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function excerpt(line: string): string {
  return JSON.stringify(line.length > 120 ? `${line.slice(0, 120)}…` : line);
}

function callListener<A>(listener: (arg: A) => void, arg: A): void {
  try {
    listener(arg);
  } catch (error) {
    process.nextTick(() => {
      throw error;
    });
  }
}
