/**
 * The reconciler: makes what runs on this node match what the control plane wants, by
 * generation.
 *
 * - Every partition has a queue: start, stop, delete, reboot and exit handling of one partition
 *   run one after the other, never interleaved. Different partitions proceed in parallel.
 * - A spec acts only when its generation is newer than the newest one accepted; an older or equal
 *   one causes a status report and nothing else. Specs that arrive while an action runs are
 *   coalesced: the next action takes the newest.
 * - `desired = running` starts a guest that does not run; `stopped` stops a running one
 *   gracefully; `absent` stops it forcibly, removes all its files and forgets it. A DesiredState
 *   is the full set: a partition missing from it is treated as desired absent.
 * - A guest that ends without being asked is reported (`failed`, or `stopped` when the guest
 *   powered itself off) and NOT restarted.
 * - Every change is reported as a PartitionStatus carrying the generation acted on, and written
 *   to `state.json`, so that after a restart the agent knows what it had and what it last did.
 * - Snapshot and migration commands run in the partition's queue like everything else, except
 *   `migrationCancel`, which reaches the migration that holds the queue. A partition received by
 *   migration is `starting` ("incoming migration") until `migrationFinishTarget`, and is not
 *   removed by a DesiredState that does not list it; a migrated-away partition is forgotten and
 *   reported `absent`.
 */
import { INCOMING_MIGRATION_REASON } from '@hyperplane/domain';
import type { agentV1 } from '@hyperplane/proto';
import type { Logger } from 'pino';
import { enqueueOn } from './serial-queue';
import { MIGRATION_QUIET_MS, type GuestExit, type MigrationProgress, type MigrationStorage, type MigrationTarget, type PartitionDriver, type StopOptions } from './drivers/driver';
import { chainDiskFromWire, guestSpecOf, isDesiredState, specFromWire, type PartitionRecord, type ReportedState, type SpecRecord } from './partition-record';
import type { PartitionStore } from './partition-store';

/** Grace of a stop the control plane asked for through `desired = stopped` alone. */
export const DEFAULT_GRACE_MS = 30_000;

/** Console tail size when the command asks for 0 bytes. */
export const CONSOLE_TAIL_DEFAULT_BYTES = 64 * 1024;

/** The most console text one command result carries. */
export const CONSOLE_TAIL_MAX_BYTES = 1024 * 1024;

/** The reconciler's collaborators. */
export interface ReconcilerDeps {
  driver: PartitionDriver;
  store: Pick<PartitionStore, 'loadAll' | 'save' | 'forget' | 'forgetRecord'>;
  /** Called on every status change (and for every spec, even one that causes no action). */
  report: (status: agentV1.PartitionStatus) => void;
  /** Called for every hypervisor event of a guest. */
  event?: (event: agentV1.GuestEvent) => void;
  /** Called with the progress of outgoing migrations. */
  migrationProgress?: (progress: agentV1.MigrationProgress) => void;
  /** Called when a chain disk dropped a replica after an I/O error. */
  replicaLost?: (lost: agentV1.ReplicaLost) => void;
  /** The node's address: where incoming migrations listen unless the command names a host. */
  address?: string;
  log: Logger;
  /** Grace of a stop asked through the desired state alone. Default {@link DEFAULT_GRACE_MS}. */
  defaultGraceMs?: number;
}

/** One partition the agent knows about. */
interface Entry {
  id: string;
  /** The last spec acted on (never an `absent` one: that entry is about to go). */
  spec: SpecRecord | undefined;
  /** Generation of the last spec acted on. */
  applied: number;
  /** Newest generation queued; -1 before any. */
  accepted: number;
  /** The newest spec not acted on yet. */
  pending: SpecRecord | undefined;
  state: ReportedState;
  reason: string;
  pid: number;
  /** The end of this partition's queue. */
  tail: Promise<void>;
  /** Stop options from a stop command, for the next stop of this partition. */
  stopRequest: StopOptions | undefined;
  /** Set once the entry has been deleted; queued work for it then does nothing. */
  gone: boolean;
  /** Receiving this partition by live migration (until finish or abort). */
  incoming: boolean;
  /** While incoming: the migration's id and its prepare, which a second prepare of it joins. */
  preparing: { migrationId: string; result: Promise<agentV1.CommandResult> } | undefined;
  /** While incoming: when it is reported again (see {@link Reconciler.recheckIncoming}). */
  incomingRecheckAt: number;
}

/** How many aborted migration ids a node remembers (a late prepare comes within seconds). */
const ABORTED_MIGRATIONS_KEPT = 256;

/** The reason reported for a partition being received by live migration. */
export const INCOMING_REASON = INCOMING_MIGRATION_REASON;

/**
 * How often a partition still being received is reported again, so that the control plane drops
 * one whose migration it ended without reaching this node (see recheckIncoming).
 */
export const INCOMING_RECHECK_MS = 60_000;

/** Reconciles one node's partitions. Call `init` once, before anything else. */
export class Reconciler {
  private readonly entries = new Map<string, Entry>();
  /** Migrations aborted for good (newest last, bounded): a prepare of one of them that arrives late is refused. */
  private readonly abortedMigrations = new Set<string>();
  private readonly inflight = new Set<Promise<void>>();
  private readonly driver: PartitionDriver;
  private readonly log: Logger;
  private readonly defaultGraceMs: number;

  constructor(private readonly deps: ReconcilerDeps) {
    this.driver = deps.driver;
    this.log = deps.log;
    this.defaultGraceMs = deps.defaultGraceMs ?? DEFAULT_GRACE_MS;
    this.driver.setListener({
      onExit: (id, exit) => this.onExit(id, exit),
      onEvent: (id, event, data, at) => this.deps.event?.({ partitionId: id, event, dataJson: JSON.stringify(data), at: (at ?? new Date()).toISOString() }),
      onReplicaLost: (id, replicaId, reason) => this.deps.replicaLost?.({ replicaId, consumer: `partition:${id}`, reason }),
    });
  }

  /**
   * Loads the records on disk and re-attaches to guests that survived the previous agent process
   * (adopted ones keep running). A guest that is gone is reported per its last desired state:
   * `failed` if it should have been running, else `stopped`. An action the previous process had
   * begun (a stop, a delete) is carried on. Does not report: the caller registers with
   * `statuses()` afterwards.
   */
  async init(): Promise<void> {
    const { records, orphans } = await this.deps.store.loadAll();
    const recovered = new Map((await this.driver.recover()).map((r) => [r.id, r]));
    for (const record of records) {
      const r = recovered.get(record.id);
      if (r && !r.alive && r.movedAway) {
        // Its outgoing migration completed before the agent stopped: the guest lives elsewhere.
        await this.deps.store.forget(record.id);
        this.log.info({ partition: record.id }, 'partition migrated away before the restart; its record is dropped');
        continue;
      }
      const e = this.newEntry(record.id);
      e.spec = record.spec;
      e.applied = record.appliedGeneration;
      e.accepted = record.appliedGeneration;
      if (r?.alive && r.status === 'incoming') {
        e.state = 'starting';
        e.pid = r.pid;
        e.reason = INCOMING_REASON;
        e.incoming = true;
        e.incomingRecheckAt = Date.now() + INCOMING_RECHECK_MS;
      } else if (r?.alive) {
        e.state = 'running';
        e.pid = r.pid;
        e.reason = r.status === 'running' ? '' : r.status;
      } else {
        [e.state, e.reason] = goneState(record, r?.reason);
      }
      this.entries.set(e.id, e);
      if (e.state !== record.state || e.reason !== record.reason) await this.persist(e);
    }
    for (const id of orphans) {
      const r = recovered.get(id);
      if (r && !r.alive && r.movedAway) continue;
      const e = this.newEntry(id);
      e.state = r?.alive ? 'running' : 'stopped';
      e.pid = r?.alive ? r.pid : 0;
      e.reason = r?.alive ? 'found running without a record' : 'found without a record';
      e.accepted = 0;
      this.entries.set(id, e);
      this.log.warn({ partition: id, state: e.state }, 'partition directory without a record');
    }
    for (const e of this.entries.values()) {
      if (e.spec?.desired === 'stopped' && this.driver.isRunning(e.id)) {
        this.log.info({ partition: e.id }, 'carrying on a stop begun before the restart');
        void this.enqueue(e, () => this.stopGuest(e, { force: false, graceMs: this.defaultGraceMs }));
      }
    }
    this.log.info({ partitions: this.entries.size, running: this.runningCount() }, 'reconciler ready');
  }

  /** Status of every partition the agent has acted on or found (for Register.partitions). */
  statuses(): agentV1.PartitionStatus[] {
    return [...this.entries.values()].filter((e) => e.applied > 0 || e.state !== 'absent').map((e) => this.statusOf(e));
  }

  /** Number of partitions whose guest runs. */
  /**
   * Reports again each partition that has been incoming for INCOMING_RECHECK_MS (then once per
   * period). The control plane ignores the report while its record says the partition migrates
   * here, and answers `absent` (which drops it) once the migration ended without it: an incoming
   * guest whose abort never arrived (the node was away, the command lost) does not stay for good.
   * Called on the heartbeat.
   */
  recheckIncoming(now = Date.now()): void {
    for (const e of this.entries.values()) {
      if (!e.incoming || e.gone || now < e.incomingRecheckAt) continue;
      e.incomingRecheckAt = now + INCOMING_RECHECK_MS;
      this.report(e);
    }
  }

  runningCount(): number {
    let n = 0;
    for (const e of this.entries.values()) if (e.state === 'running') n++;
    return n;
  }

  /** Applies one partition's spec (ControlMessage.upsert). */
  upsert(wire: agentV1.PartitionSpec__Output): void {
    const spec = specFromWire(wire);
    if (!spec) {
      this.log.warn('spec without a partition id ignored');
      return;
    }
    if (!isDesiredState(spec.desired)) {
      this.log.warn({ partition: spec.id, desired: spec.desired }, 'spec with an unknown desired state ignored');
      const e = this.entries.get(spec.id);
      if (e) this.report(e);
      return;
    }
    let e = this.entries.get(spec.id);
    if (!e) {
      if (spec.desired === 'absent') {
        this.deps.report({ id: spec.id, state: 'absent', reason: '', generation: spec.generation, pid: 0 });
        return;
      }
      e = this.newEntry(spec.id);
      this.entries.set(spec.id, e);
    }
    if (spec.generation <= e.accepted) {
      const retryDelete = spec.desired === 'absent' && e.pending === undefined && e.state === 'failed' && e.spec !== undefined && e.applied === spec.generation;
      if (!retryDelete) {
        this.report(e);
        return;
      }
    }
    e.accepted = Math.max(e.accepted, spec.generation);
    e.pending = spec;
    void this.enqueue(e, () => this.applyPending(e));
  }

  /** Applies the full desired set (ControlMessage.desired): listed specs as upserts, the rest as absent. */
  desired(specs: agentV1.PartitionSpec__Output[]): void {
    const listed = new Set<string>();
    for (const spec of specs) {
      if (spec.id) listed.add(spec.id);
      this.upsert(spec);
    }
    for (const e of [...this.entries.values()]) {
      if (listed.has(e.id) || e.pending?.desired === 'absent') continue;
      if (e.incoming) continue; // only an explicit absent (or migrationAbortTarget) drops an incoming migration
      this.log.info({ partition: e.id }, 'not in the desired state: removing it');
      const generation = Math.max(e.applied, e.accepted, 0);
      e.pending = { ...(e.spec ?? blankSpec(e.id)), desired: 'absent', generation };
      void this.enqueue(e, () => this.applyPending(e));
    }
  }

  /** Runs one command and resolves with its result (never rejects). */
  async command(cmd: agentV1.Command__Output): Promise<agentV1.CommandResult> {
    const commandId = cmd.id ?? '';
    const fail = (errorCode: string, errorMessage: string): agentV1.CommandResult => ({ commandId, ok: false, errorCode, errorMessage, payload: '' });
    try {
      switch (cmd.body) {
        case 'stop': {
          const id = cmd.stop?.partitionId ?? '';
          const e = this.entries.get(id);
          if (!e) return fail('NOT_FOUND', `partition ${id} is not on this node`);
          const graceMs = Number(cmd.stop?.graceMs ?? 0);
          const options: StopOptions = { force: Boolean(cmd.stop?.force), graceMs: graceMs > 0 ? graceMs : this.defaultGraceMs };
          e.stopRequest = mergeStop(e.stopRequest, options);
          if (e.state === 'stopping' && this.driver.isRunning(id)) {
            // A stop runs already (from desired = stopped): it takes this command's grace, and force.
            this.driver.stop(id, options).catch(() => undefined);
          }
          await this.enqueue(e, async () => {
            if (this.driver.isRunning(id)) await this.stopGuest(e, options);
            e.stopRequest = undefined;
          });
          if (this.driver.isRunning(id)) return fail('INTERNAL', `partition ${id} still runs: ${e.reason}`);
          return { commandId, ok: true, errorCode: '', errorMessage: '', payload: '' };
        }
        case 'reboot': {
          const id = cmd.reboot?.partitionId ?? '';
          const e = this.entries.get(id);
          if (!e) return fail('NOT_FOUND', `partition ${id} is not on this node`);
          let result: agentV1.CommandResult = { commandId, ok: true, errorCode: '', errorMessage: '', payload: '' };
          await this.enqueue(e, async () => {
            if (!this.driver.isRunning(id)) {
              result = fail('FAILED_PRECONDITION', `cannot reboot partition ${e.spec?.name || id}: it is ${e.state}`);
              return;
            }
            try {
              await this.driver.reboot(id);
              this.log.info({ partition: id }, 'guest reset');
            } catch (error) {
              result = fail(errorCode(error), (error as Error).message);
            }
          });
          return result;
        }
        case 'consoleTail': {
          const id = cmd.consoleTail?.partitionId ?? '';
          if (!this.entries.has(id)) return fail('NOT_FOUND', `partition ${id} is not on this node`);
          const asked = Number(cmd.consoleTail?.bytes ?? 0);
          const bytes = Math.min(asked > 0 ? asked : CONSOLE_TAIL_DEFAULT_BYTES, CONSOLE_TAIL_MAX_BYTES);
          const tail = await this.driver.consoleTail(id, bytes);
          return { commandId, ok: true, errorCode: '', errorMessage: '', payload: JSON.stringify({ data: tail.data, truncated: tail.truncated }) };
        }
        case 'snapshotCreate':
        case 'snapshotRevert':
        case 'snapshotDelete':
        case 'snapshotList':
        case 'snapshotExport':
          return await this.snapshotCommand(cmd);
        case 'migrationPrepareTarget':
        case 'migrationStart':
        case 'migrationCancel':
        case 'migrationAbortTarget':
        case 'migrationFinishTarget':
          return await this.migrationCommand(cmd);
        case 'coldMigrationPrepareTarget':
        case 'coldMigrationSend':
          return await this.coldMigrationCommand(cmd);
        case 'diskAttach':
        case 'diskDetach':
          return await this.diskCommand(cmd);
        case 'migrationOutcome': {
          const id = cmd.migrationOutcome?.partitionId ?? '';
          const gone = JSON.stringify({ present: false, state: 'absent', reason: '' });
          const e = this.entries.get(id);
          if (!e || e.incoming) return { commandId, ok: true, errorCode: '', errorMessage: '', payload: gone };
          // Behind whatever runs in the partition's queue (a migration): then it is here or not.
          let payload = gone;
          await this.enqueue(e, async () => {
            payload = JSON.stringify({ present: true, state: e.state, reason: e.reason, ...(this.driver.diskPath ? { diskPath: this.driver.diskPath(id) } : {}) });
          });
          return { commandId, ok: true, errorCode: '', errorMessage: '', payload };
        }
        default:
          return fail('INVALID_ARGUMENT', `unknown command ${JSON.stringify(cmd.body ?? '')}`);
      }
    } catch (error) {
      return fail(errorCode(error), (error as Error).message);
    }
  }

  /** The state of one partition, or undefined when the agent does not know it. */
  stateOf(id: string): ReportedState | undefined {
    return this.entries.get(id)?.state;
  }

  /** Resolves once no partition has queued work (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.inflight.size > 0) await Promise.all([...this.inflight]);
  }

  private newEntry(id: string): Entry {
    return { id, spec: undefined, applied: 0, accepted: -1, pending: undefined, state: 'absent', reason: '', pid: 0, tail: Promise.resolve(), stopRequest: undefined, gone: false, incoming: false, preparing: undefined, incomingRecheckAt: 0 };
  }

  /** Runs `fn` in the partition's queue; its error becomes a failed result. */
  private async queued(commandId: string, e: Entry, fn: () => Promise<string>): Promise<agentV1.CommandResult> {
    let result: agentV1.CommandResult = { commandId, ok: false, errorCode: 'INTERNAL', errorMessage: `partition ${e.id} went away`, payload: '' };
    await this.enqueue(e, async () => {
      try {
        result = { commandId, ok: true, errorCode: '', errorMessage: '', payload: await fn() };
      } catch (error) {
        result = { commandId, ok: false, errorCode: errorCode(error), errorMessage: (error as Error).message, payload: '' };
      }
    });
    return result;
  }

  private async snapshotCommand(cmd: agentV1.Command__Output): Promise<agentV1.CommandResult> {
    const commandId = cmd.id ?? '';
    const body = cmd.snapshotCreate ?? cmd.snapshotRevert ?? cmd.snapshotDelete ?? cmd.snapshotList ?? cmd.snapshotExport;
    const id = body?.partitionId ?? '';
    const e = this.entries.get(id);
    if (!e || e.incoming) {
      return { commandId, ok: false, errorCode: 'NOT_FOUND', errorMessage: `partition ${id} is not on this node`, payload: '' };
    }
    return this.queued(commandId, e, async () => {
      switch (cmd.body) {
        case 'snapshotCreate': {
          const entry = await this.driver.snapshotCreate(id, { tag: cmd.snapshotCreate?.tag ?? '', withMemory: Boolean(cmd.snapshotCreate?.withMemory) });
          this.log.info({ partition: id, tag: entry.tag, withMemory: entry.vmStateBytes > 0 }, 'snapshot created');
          return JSON.stringify(entry);
        }
        case 'snapshotExport': {
          if (!this.driver.snapshotExport) throw Object.assign(new Error(`the ${this.driver.kind} driver cannot export snapshots`), { code: 'FAILED_PRECONDITION' });
          const out = await this.driver.snapshotExport(id, cmd.snapshotExport?.tag ?? '', cmd.snapshotExport?.fileName ?? '');
          this.log.info({ partition: id, tag: cmd.snapshotExport?.tag, file: out.path, bytes: out.sizeBytes }, 'snapshot exported');
          return JSON.stringify(out);
        }
        case 'snapshotRevert':
          await this.driver.snapshotRevert(id, cmd.snapshotRevert?.tag ?? '');
          this.log.info({ partition: id, tag: cmd.snapshotRevert?.tag }, 'reverted to snapshot');
          return '';
        case 'snapshotDelete':
          await this.driver.snapshotDelete(id, cmd.snapshotDelete?.tag ?? '');
          return '';
        default:
          return JSON.stringify({ snapshots: await this.driver.snapshotList(id) });
      }
    });
  }

  private async migrationCommand(cmd: agentV1.Command__Output): Promise<agentV1.CommandResult> {
    const commandId = cmd.id ?? '';
    const notHere = (id: string): agentV1.CommandResult => ({ commandId, ok: false, errorCode: 'NOT_FOUND', errorMessage: `partition ${id} is not on this node`, payload: '' });
    switch (cmd.body) {
      case 'migrationPrepareTarget': {
        const body = cmd.migrationPrepareTarget!;
        const spec = body.spec ? specFromWire(body.spec) : undefined;
        if (!spec) return { commandId, ok: false, errorCode: 'INVALID_ARGUMENT', errorMessage: 'migration_prepare_target needs a spec with an id', payload: '' };
        if (body.migrationId && this.abortedMigrations.has(body.migrationId)) {
          return { commandId, ok: false, errorCode: 'FAILED_PRECONDITION', errorMessage: `migration ${body.migrationId} of partition ${spec.name || spec.id} was aborted`, payload: '' };
        }
        const known = this.entries.get(spec.id);
        if (known?.incoming && known.preparing && body.migrationId && known.preparing.migrationId === body.migrationId) {
          return { ...(await known.preparing.result), commandId }; // the same migration prepared again: the same answer
        }
        if (known) {
          return { commandId, ok: false, errorCode: 'FAILED_PRECONDITION', errorMessage: `partition ${spec.name || spec.id} is already on this node (${known.state})`, payload: '' };
        }
        const e = this.newEntry(spec.id);
        e.incoming = true;
        e.incomingRecheckAt = Date.now() + INCOMING_RECHECK_MS;
        e.spec = { ...spec, desired: 'running' };
        e.applied = spec.generation;
        e.accepted = spec.generation;
        this.entries.set(spec.id, e);
        const storage: MigrationStorage = body.storage === 'shared' ? 'shared' : 'copy';
        const prepared = this.queued(commandId, e, async () => {
          this.setState(e, 'starting', INCOMING_REASON);
          const host = body.host || this.deps.address || '127.0.0.1';
          const target = await this.driver.migrationPrepareTarget(
            guestSpecOf(spec),
            {
              host,
              ...(Number(body.port ?? 0) ? { port: Number(body.port) } : {}), // else the driver finds one while QEMU starts
              ...(body.nbdPort ? { nbdPort: Number(body.nbdPort) } : {}),
              storage,
              ...(body.sharedDiskPath ? { sharedDiskPath: body.sharedDiskPath } : {}),
              postcopy: Boolean(body.postcopy),
              ...(body.tls ? { tls: true } : {}),
            },
          );
          e.pid = 0;
          // Recorded, not reported: the migration that asked knows, and a report could reach the
          // control plane before the request that asked committed (a destination is prepared ahead
          // of the commit), which answers a report of an incoming partition no record names with
          // absent. Reported from a minute on (recheckIncoming), and when the guest runs here.
          await this.persist(e);
          return JSON.stringify(target);
        });
        if (body.migrationId) e.preparing = { migrationId: body.migrationId, result: prepared };
        const result = await prepared;
        if (!result.ok && this.entries.get(spec.id) === e) {
          e.gone = true;
          this.entries.delete(spec.id);
        }
        return result;
      }
      case 'migrationStart': {
        const body = cmd.migrationStart!;
        const id = body.partitionId ?? '';
        const e = this.entries.get(id);
        if (!e || e.incoming) return notHere(id);
        const target: MigrationTarget = {
          host: body.targetHost ?? '',
          port: Number(body.targetPort ?? 0),
          storage: body.storage === 'shared' ? 'shared' : 'copy',
          ...(body.targetNbdPort ? { nbdPort: Number(body.targetNbdPort) } : {}),
          ...(body.exportName ? { exportName: body.exportName } : {}),
          ...(body.tls ? { tls: true, ...(body.tlsHostname ? { tlsHostname: body.tlsHostname } : {}) } : {}),
        };
        const o = body.options;
        const positive = (v: unknown) => (Number(v ?? 0) > 0 ? Number(v) : undefined);
        const options = {
          maxDowntimeMs: positive(o?.maxDowntimeMs),
          bandwidthBytesPerSec: positive(o?.bandwidthBytesPerSec),
          autoConverge: Boolean(o?.autoConverge),
          postcopy: Boolean(o?.postcopy),
          postcopyAfterMs: positive(o?.postcopyAfterMs),
          stallTimeoutMs: positive(o?.stallTimeoutMs),
          discardSnapshots: Boolean(o?.discardSnapshots),
        };
        const migrationId = body.migrationId ?? '';
        const onProgress = (p: MigrationProgress) =>
          this.deps.migrationProgress?.({
            partitionId: id,
            migrationId,
            phase: p.phase,
            bytesRemaining: p.bytesRemaining,
            bytesTransferred: p.bytesTransferred,
            bytesTotal: p.bytesTotal,
            dirtyRateBytesPerSec: Math.round(p.dirtyRateBytesPerSec),
            expectedDowntimeMs: p.expectedDowntimeMs,
            cpuThrottlePercent: p.cpuThrottlePercent,
            status: p.status,
          });
        return this.queued(commandId, e, async () => {
          if (!this.driver.isRunning(id)) throw Object.assign(new Error(`cannot migrate partition ${e.spec?.name || id}: it is ${e.state}`), { code: 'FAILED_PRECONDITION' });
          this.log.info({ partition: id, target: `${target.host}:${target.port}`, storage: target.storage }, 'live migration starting');
          // The reason tells a control plane that reconnects (or restarted) that a migration runs.
          // It is reported, and written to the record, once the migration has run
          // MIGRATION_QUIET_MS, as its progress is (a shorter one is told by its end alone): a
          // restarted agent goes by what QEMU says (see recover), not by this reason; the record is
          // replaced or forgotten below only once this write is done.
          this.setState(e, 'running', `migrating to ${target.host}:${target.port}`);
          const migrating = this.driver.migrationStart(id, target, options, onProgress);
          let written: Promise<void> = Promise.resolve();
          const told = setTimeout(() => {
            this.report(e);
            written = this.persist(e);
          }, MIGRATION_QUIET_MS);
          let result;
          try {
            result = await migrating;
          } catch (error) {
            clearTimeout(told);
            await written;
            if (this.driver.isRunning(id) && e.state === 'running') {
              this.setState(e, 'running', '');
              await this.settle(e);
            }
            throw error;
          }
          // The guest lives on the destination now: forget it here. The record goes first; the
          // paused QEMU's files go when it quits (a restart in between finds it: see recover).
          clearTimeout(told);
          await written;
          // Nothing from here on may turn the answer into a failure: the control plane would take
          // it for a migration that left the guest here, and the guest's only copy is elsewhere.
          await this.deps.store.forgetRecord(id).catch((error: unknown) => this.log.error({ partition: id, err: error }, 'cannot remove the record of a partition that migrated away'));
          e.gone = true;
          e.pid = 0;
          if (this.entries.get(id) === e) this.entries.delete(id);
          this.log.info({ partition: id, ...result }, 'migrated away');
          this.reportMigratedAway(e);
          return JSON.stringify(result);
        });
      }
      case 'migrationCancel': {
        const id = cmd.migrationCancel?.partitionId ?? '';
        if (!this.entries.get(id)) return notHere(id);
        await this.driver.migrationCancel(id);
        return { commandId, ok: true, errorCode: '', errorMessage: '', payload: '' };
      }
      case 'migrationAbortTarget': {
        const id = cmd.migrationAbortTarget?.partitionId ?? '';
        const migrationId = cmd.migrationAbortTarget?.migrationId ?? '';
        if (migrationId) {
          this.abortedMigrations.add(migrationId);
          if (this.abortedMigrations.size > ABORTED_MIGRATIONS_KEPT) this.abortedMigrations.delete(this.abortedMigrations.values().next().value!);
        }
        const e = this.entries.get(id);
        if (!e) {
          // Nothing here (already aborted, or the QEMU died): make sure no file is left.
          await this.driver.migrationAbortTarget(id);
          return { commandId, ok: true, errorCode: '', errorMessage: '', payload: '' };
        }
        if (!e.incoming) return { commandId, ok: false, errorCode: 'FAILED_PRECONDITION', errorMessage: `partition ${id} runs on this node: it is not an incoming migration`, payload: '' };
        // The incoming migration of another (newer) migration of the partition: not this one's to abort.
        if (migrationId && e.preparing && e.preparing.migrationId !== migrationId) return { commandId, ok: true, errorCode: '', errorMessage: '', payload: '' };
        return this.queued(commandId, e, async () => {
          await this.abortIncoming(e, 'migration aborted');
          return '';
        });
      }
      default: {
        const id = cmd.migrationFinishTarget?.partitionId ?? '';
        const e = this.entries.get(id);
        if (!e) return notHere(id);
        return this.queued(commandId, e, async () => {
          if (!e.incoming) {
            if (e.state === 'running' && this.driver.isRunning(id)) return JSON.stringify({ pid: e.pid }); // finished already: say so again
            throw Object.assign(new Error(`partition ${id} is not receiving a migration here (${e.state})`), { code: 'FAILED_PRECONDITION' });
          }
          const guest = await this.driver.migrationFinishTarget(id);
          e.incoming = false;
          e.preparing = undefined;
          e.pid = guest.pid;
          this.setState(e, 'running', '');
          // The answer goes first (the migration's end waits for it); the record and the report
          // follow. An agent restart in between goes by QEMU, which runs the guest (see init).
          setImmediate(() => void this.settle(e));
          return JSON.stringify({ pid: guest.pid });
        });
      }
    }
  }

  /**
   * Chain disks: on a running guest they are hot-plugged or unplugged (attach also updates the
   * replicas of a disk the guest has); either way the partition's spec records them for its next start.
   */
  private async diskCommand(cmd: agentV1.Command__Output): Promise<agentV1.CommandResult> {
    const commandId = cmd.id ?? '';
    const id = cmd.diskAttach?.partitionId ?? cmd.diskDetach?.partitionId ?? '';
    const e = this.entries.get(id);
    if (!e || e.incoming || !e.spec) return { commandId, ok: false, errorCode: 'NOT_FOUND', errorMessage: `partition ${id} is not on this node`, payload: '' };
    const spec = e.spec;
    return this.queued(commandId, e, async () => {
      const running = this.driver.isRunning(id);
      if (cmd.body === 'diskAttach') {
        const disk = chainDiskFromWire(cmd.diskAttach?.disk);
        if (!disk) throw Object.assign(new Error('disk_attach needs a disk with an attachment id'), { code: 'INVALID_ARGUMENT' });
        if (running) {
          if (!this.driver.diskAttach) throw Object.assign(new Error(`the ${this.driver.kind} driver has no service-chain disks`), { code: 'FAILED_PRECONDITION' });
          await this.driver.diskAttach(id, disk);
        }
        e.spec = { ...spec, disks: [...(spec.disks ?? []).filter((d) => d.attachmentId !== disk.attachmentId), disk] };
      } else {
        const attachmentId = cmd.diskDetach?.attachmentId ?? '';
        if (running && this.driver.diskDetach) await this.driver.diskDetach(id, attachmentId);
        e.spec = { ...spec, disks: (spec.disks ?? []).filter((d) => d.attachmentId !== attachmentId) };
      }
      await this.persist(e);
      return JSON.stringify({ running });
    });
  }

  private async coldMigrationCommand(cmd: agentV1.Command__Output): Promise<agentV1.CommandResult> {
    const commandId = cmd.id ?? '';
    if (cmd.body === 'coldMigrationPrepareTarget') {
      const body = cmd.coldMigrationPrepareTarget!;
      const spec = body.spec ? specFromWire(body.spec) : undefined;
      if (!spec) return { commandId, ok: false, errorCode: 'INVALID_ARGUMENT', errorMessage: 'cold_migration_prepare_target needs a spec with an id', payload: '' };
      if (this.entries.has(spec.id)) return { commandId, ok: false, errorCode: 'FAILED_PRECONDITION', errorMessage: `partition ${spec.name || spec.id} is already on this node`, payload: '' };
      const e = this.newEntry(spec.id);
      e.incoming = true;
      e.incomingRecheckAt = Date.now() + INCOMING_RECHECK_MS;
      e.spec = { ...spec, desired: 'stopped' };
      e.applied = spec.generation;
      e.accepted = spec.generation;
      this.entries.set(spec.id, e);
      const result = await this.queued(commandId, e, async () => {
        const receiver = await this.driver.coldMigrationPrepareTarget(
          guestSpecOf(spec),
          { host: body.host || this.deps.address || '127.0.0.1', port: Number(body.port ?? 0), ...(Number(body.timeoutMs ?? 0) > 0 ? { timeoutMs: Number(body.timeoutMs) } : {}) }, // port 0: the system picks one
        );
        this.setState(e, 'starting', 'incoming cold migration');
        this.report(e);
        receiver.received.then(
          () =>
            void this.enqueue(e, async () => {
              e.incoming = false;
              this.setState(e, 'stopped', '');
              await this.settle(e);
            }),
          (error: unknown) =>
            void this.enqueue(e, async () => {
              e.gone = true;
              if (this.entries.get(e.id) === e) this.entries.delete(e.id);
              this.deps.report({ id: e.id, state: 'absent', reason: `cold migration failed: ${(error as Error).message}`, generation: e.applied, pid: 0 });
            }),
        );
        return JSON.stringify(receiver.target);
      });
      if (!result.ok && this.entries.get(spec.id) === e) {
        e.gone = true;
        this.entries.delete(spec.id);
      }
      return result;
    }
    const body = cmd.coldMigrationSend!;
    const id = body.partitionId ?? '';
    const e = this.entries.get(id);
    if (!e || e.incoming) return { commandId, ok: false, errorCode: 'NOT_FOUND', errorMessage: `partition ${id} is not on this node`, payload: '' };
    return this.queued(commandId, e, async () => {
      if (this.driver.isRunning(id)) throw Object.assign(new Error(`cannot migrate partition ${e.spec?.name || id} cold: it is ${e.state}`), { code: 'FAILED_PRECONDITION' });
      const sent = await this.driver.coldMigrationSend(id, { host: body.targetHost ?? '', port: Number(body.targetPort ?? 0) });
      await this.deps.store.forget(id);
      e.gone = true;
      if (this.entries.get(id) === e) this.entries.delete(id);
      this.reportMigratedAway(e);
      return JSON.stringify(sent);
    });
  }

  /** Drops an incoming migration: its QEMU and files go, the partition is reported absent. */
  private async abortIncoming(e: Entry, why: string): Promise<void> {
    await this.driver.migrationAbortTarget(e.id);
    await this.deps.store.forget(e.id);
    e.gone = true;
    if (this.entries.get(e.id) === e) this.entries.delete(e.id);
    this.log.info({ partition: e.id, why }, 'incoming migration dropped');
    this.deps.report({ id: e.id, state: 'absent', reason: why, generation: e.applied, pid: 0 });
  }

  /** Appends work to a partition's queue; the promise settles when it ran (never rejects). */
  private enqueue(e: Entry, task: () => Promise<void>): Promise<void> {
    return enqueueOn(e, task, this.inflight, (error) => this.log.error({ partition: e.id, err: error }, 'partition action failed'));
  }

  /** Acts on the newest pending spec (queued). */
  private async applyPending(e: Entry): Promise<void> {
    const spec = e.pending;
    if (!spec) return;
    e.pending = undefined;
    e.applied = spec.generation;
    if (spec.desired !== 'absent') e.spec = spec;
    if (e.incoming) {
      // Until migrationFinishTarget the guest is not ours to start or stop; absent (the partition
      // deleted, or its migration over without this node) drops it.
      if (spec.desired === 'absent') await this.abortIncoming(e, 'dropped: the control plane does not migrate it here');
      else await this.settle(e);
      return;
    }
    switch (spec.desired) {
      case 'running':
        if (this.driver.isRunning(e.id)) {
          if (e.state !== 'running') this.setState(e, 'running', '');
          await this.settle(e);
          return;
        }
        await this.startGuest(e, spec);
        return;
      case 'stopped':
        if (this.driver.isRunning(e.id)) {
          await this.stopGuest(e, { force: false, graceMs: this.defaultGraceMs });
          return;
        }
        if (e.state !== 'failed' && e.state !== 'stopped') this.setState(e, 'stopped', '');
        await this.settle(e);
        return;
      case 'absent':
        await this.deleteGuest(e, spec.generation);
        return;
    }
  }

  private async startGuest(e: Entry, spec: SpecRecord): Promise<void> {
    this.setState(e, 'starting', '');
    await this.settle(e);
    try {
      const guest = await this.driver.start(guestSpecOf(spec));
      e.pid = guest.pid;
      this.setState(e, 'running', '');
    } catch (error) {
      e.pid = 0;
      this.setState(e, 'failed', (error as Error).message);
    }
    await this.settle(e);
  }

  private async stopGuest(e: Entry, defaults: StopOptions): Promise<void> {
    const options = e.stopRequest ?? defaults;
    e.stopRequest = undefined;
    this.setState(e, 'stopping', options.force ? 'forced stop' : 'stop requested');
    // Begin the stop before persisting, so that a stop command arriving from now on adjusts it.
    const outcome = this.driver.stop(e.id, options).then(
      () => undefined,
      (error: unknown) => error as Error,
    );
    await this.settle(e);
    const error = await outcome;
    if (error) {
      this.setState(e, 'failed', `stop failed: ${error.message}`);
    } else {
      e.pid = 0;
      this.setState(e, 'stopped', options.force ? 'forced stop' : 'stopped on request');
    }
    await this.settle(e);
  }

  private async deleteGuest(e: Entry, generation: number): Promise<void> {
    if (this.driver.isRunning(e.id)) {
      this.setState(e, 'stopping', 'deleting');
      await this.settle(e);
    }
    try {
      await this.driver.destroy(e.id);
      await this.deps.store.forget(e.id);
    } catch (error) {
      this.setState(e, 'failed', `delete failed: ${(error as Error).message}`);
      await this.settle(e);
      return;
    }
    e.gone = true;
    if (this.entries.get(e.id) === e) this.entries.delete(e.id);
    this.log.info({ partition: e.id, generation }, 'partition removed');
    this.deps.report({ id: e.id, state: 'absent', reason: '', generation, pid: 0 });
  }

  /** A guest ended (driver callback). Unrequested ends are recorded through the queue. */
  private onExit(id: string, exit: GuestExit): void {
    const e = this.entries.get(id);
    if (!e || exit.requested) return;
    if (e.incoming) {
      // The destination's QEMU ended before it got the guest: nothing of it is left (the driver removed its dir).
      void this.enqueue(e, async () => {
        if (!e.incoming || this.driver.isRunning(id)) return;
        await this.abortIncoming(e, `incoming migration ended: ${exit.reason}`);
      });
      return;
    }
    void this.enqueue(e, async () => {
      if (e.pid !== exit.pid || (e.state !== 'running' && e.state !== 'starting') || this.driver.isRunning(id)) return;
      e.pid = 0;
      this.setState(e, exit.state, exit.reason);
      await this.settle(e);
    });
  }

  private setState(e: Entry, state: ReportedState, reason: string): void {
    if (e.state !== state || e.reason !== reason) {
      this.log.info({ partition: e.id, from: e.state, state, reason: reason || undefined, generation: e.applied, guestPid: e.pid || undefined }, 'partition state');
    }
    e.state = state;
    e.reason = reason;
  }

  /** Persists the entry and reports it. */
  private async settle(e: Entry): Promise<void> {
    await this.persist(e);
    this.report(e);
  }

  private async persist(e: Entry): Promise<void> {
    const record: PartitionRecord = { id: e.id, spec: e.spec, appliedGeneration: e.applied, state: e.state, reason: e.reason, updatedAt: new Date().toISOString() };
    try {
      await this.deps.store.save(record);
    } catch (error) {
      this.log.error({ partition: e.id, err: error }, 'cannot write the partition record');
    }
  }

  /**
   * Reports a partition that moved away as absent, after the command's answer has gone: the
   * control plane handles a node's messages in order, and the answer is what the migration waits for.
   */
  private reportMigratedAway(e: Entry): void {
    setImmediate(() => this.deps.report({ id: e.id, state: 'absent', reason: 'migrated away', generation: e.applied, pid: 0 }));
  }

  private report(e: Entry): void {
    this.deps.report(this.statusOf(e));
  }

  private statusOf(e: Entry): agentV1.PartitionStatus {
    return { id: e.id, state: e.state, reason: e.reason, generation: e.applied, pid: e.pid };
  }
}

/** The state of a partition whose guest is gone after a restart, from its last record. */
function goneState(record: PartitionRecord, driverReason: string | undefined): [ReportedState, string] {
  if (record.state === 'failed') return ['failed', record.reason];
  if (record.state === 'stopped') return ['stopped', record.reason];
  if (record.spec?.desired === 'running') {
    return ['failed', driverReason ?? 'the guest is gone: it ended while the agent was not running'];
  }
  return ['stopped', record.state === 'stopping' ? 'stopped on request' : record.reason];
}

/** A later stop request over an earlier one: its grace wins, a force stays. */
function mergeStop(earlier: StopOptions | undefined, later: StopOptions): StopOptions {
  return { force: Boolean(earlier?.force) || later.force, graceMs: later.graceMs };
}

function blankSpec(id: string): SpecRecord {
  return { id, name: '', projectId: '', vcpus: 0, memoryMiB: 0, diskGiB: 0, image: '', desired: 'absent', generation: 0 };
}

/** The protocol error code of an error (domain errors carry one). */
function errorCode(error: unknown): string {
  const code = (error as { code?: unknown })?.code;
  return typeof code === 'string' && /^[A-Z_]+$/.test(code) ? code : 'INTERNAL';
}
