import { Inject, Injectable, OnModuleInit } from '@nestjs/common';
import { CancelledError, DeadlineExceededError, DomainError, FailedPreconditionError, InternalError, PartitionState, UnavailableError } from '@hyperplane/domain';
import { agentV1 } from '@hyperplane/proto';
import { Logger } from 'pino';
import { DataSource } from 'typeorm';
import { AgentSessions, CommandBody } from '../agents/agent-sessions';
import { agentFailure } from '../agents/agent-errors';
import { specOf } from '../agents/agents.service';
import { PartitionImages } from '../images/partition-images';
import { Config, CONFIG } from '../config';
import { DATA_SOURCE, LOGGER } from '../common/tokens';
import { inTransaction } from '../database/database';
import { EventBus } from '../events/event-bus';
import { NodeRepository, NodeRow } from '../nodes/node.repository';
import { OperationContext, OperationRunner } from '../operations/operation-runner';
import { MigrationMetadata, OperationRepository, OperationRow } from '../operations/operation.repository';
import { OperationsService } from '../operations/operations.service';
import { PartitionRepository, PartitionRow } from '../partitions/partition.repository';
import { partitionEvent, partitionView } from '../partitions/partition-view';
import { SnapshotRepository } from '../snapshots/snapshot.repository';
import { MigrateParams } from './migration.service';

/** How long a node may take to get a destination ready (QEMU started, listening). */
const PREPARE_TIMEOUT_MS = 60_000;
/** How long a live migration may run before the control plane asks where the guest is. */
const MIGRATE_TIMEOUT_MS = 60 * 60_000;
/** How long a destination prepared ahead is kept for an operation that runs on another replica. */
const AHEAD_KEPT_MS = 5 * 60_000;
/** Wait between attempts to reach a node that is away (reconnecting, restarting). */
const RETRY_MS = 2000;

/**
 * Every command of a migration is answered as soon as the node's result arrives: the steps write the
 * partition's record themselves and read none of what the node's status reports record.
 */
const AT_ONCE = { atOnce: true };

/** What the request of a migration committed: the partition as it left it, and the two nodes. */
export interface AcceptedMigration {
  row: PartitionRow;
  source: NodeRow;
  target: NodeRow;
}

/** Where the guest is once a migration attempt ended. */
type Outcome = 'moved' | 'stayed';

/** The result the source sends when a live migration completed (MigrationStart in agent.proto). */
interface MigrationResult {
  totalTimeMs: number;
  downtimeMs: number;
  storageMs: number;
  ramTransferredBytes: number;
  postcopy: boolean;
}

/**
 * The `partition.migrate` handler. The order keeps the guest on exactly one node:
 *
 *   prepare the destination (paused QEMU waiting, or a listener for a cold disk)
 *   → start on the source (answered when it ended: the source's QEMU is gone only if it moved)
 *   → moved: finish on the destination (the guest runs there now), then the record follows
 *     stayed: abort the destination, the record stays.
 *
 * When the answer of the start is lost (the control plane restarted, the source's stream broke),
 * the source is asked with `migration_outcome`, which answers once the partition's queue on the
 * source is idle: the partition is there (it stayed) or not (it moved). `stage` in the
 * operation's metadata tells a re-run after a crash how far it got.
 */
@Injectable()
export class MigrationOperations implements OnModuleInit {
  constructor(
    private readonly runner: OperationRunner,
    private readonly partitions: PartitionRepository,
    private readonly nodes: NodeRepository,
    private readonly snapshots: SnapshotRepository,
    private readonly ops: OperationRepository,
    private readonly operations: OperationsService,
    private readonly sessions: AgentSessions,
    private readonly events: EventBus,
    @Inject(DATA_SOURCE) private readonly ds: DataSource,
    @Inject(CONFIG) private readonly config: Config,
    @Inject(LOGGER) private readonly log: Logger,
    private readonly images: PartitionImages,
  ) {}

  /** Destinations being prepared ahead by this replica, by migration (operation) id: see prepareAhead. */
  private readonly ahead = new Map<string, Promise<Record<string, unknown>>>();

  onModuleInit(): void {
    this.runner.register('partition.migrate', (op, ctx, accepted?: AcceptedMigration) => this.handleMigrate(op, ctx, accepted));
    this.operations.onCancelledBeforeStart('partition.migrate', (op) => this.undoPending(op));
  }

  /** A migration cancelled before it started: the partition stays where it is, the destination's capacity goes back. */
  private async undoPending(op: OperationRow): Promise<void> {
    const p = op.params as unknown as MigrateParams;
    const row = await this.partitions.getById(op.target_id);
    this.ahead.delete(op.id);
    if (row?.state !== 'migrating' || row.target_node_id !== p.targetNodeId) return;
    await this.abortTarget(row, p, this.log.child({ operationId: op.id }), op.id); // what was prepared ahead, and what may still arrive
    await this.end(row, 'stayed', p, '', undefined, op.id);
  }

  /**
   * partition.migrate: see the class comment for the order of steps. `accepted`: the rows the
   * request committed, when it runs here just after (the usual case; only a first attempt is run
   * so, by OperationRunner.runHere): not read again.
   */
  async handleMigrate(op: OperationRow, ctx: OperationContext, accepted?: AcceptedMigration): Promise<void> {
    const p = op.params as unknown as MigrateParams;
    const row = accepted?.row ?? (await this.partitions.getById(op.target_id));
    if (!row) throw new CancelledError(`partition ${op.target_id} no longer exists`);
    if (row.state !== 'migrating' || row.target_node_id !== p.targetNodeId) {
      // Ended already: a re-run after a crash between the record and the operation's end. The
      // record names the destination as soon as the source completed, while the destination
      // resumes the guest: finish there again (a node answers at once for a guest it runs).
      if (row.node_id === p.targetNodeId) {
        const refused = p.live && row.state !== 'failed' ? await this.finishOnTarget(row, p, ctx) : undefined;
        if (refused !== undefined) await this.lost(row, p.targetNodeName, refused);
        return;
      }
      throw new FailedPreconditionError(`the migration of partition ${row.name} ended without moving it`);
    }
    const [source, target] = accepted ? [accepted.source, accepted.target] : await Promise.all([this.nodes.findByIdOrName(p.sourceNodeId), this.nodes.findByIdOrName(p.targetNodeId)]);
    const names = { sourceNode: source?.name ?? p.sourceNodeId, targetNode: target?.name ?? p.targetNodeId };
    const log = this.log.child({ operationId: op.id, partition: row.name, from: names.sourceNode, to: names.targetNode });
    let stage = op.metadata?.stage ?? 'new';

    let outcome: Outcome | undefined;
    let failure: DomainError | undefined;
    /** How long each step took, ms: shown on the operation, so an operator sees where time went. */
    const timings: { prepareMs?: number; sourceMs?: number; finishMs?: number } = {};
    let result: MigrationResult | undefined;
    if (stage === 'started' || stage === 'moved') { // moved: recorded by earlier versions once the source completed
      log.info({ stage }, 're-run of a migration whose start was sent: asking the source where the guest is');
      outcome = await this.outcomeFromSource(row, p, ctx);
    } else {
      // A re-run (the start was never sent: `started` is recorded before it is): what the last
      // attempt may have prepared goes first.
      if (op.attempts > 1) await this.abortTarget(row, p, log); // not for good: this attempt prepares the same migration again
      let targetInfo: Record<string, unknown>;
      let started: Promise<void> | undefined;
      try {
        const t0 = Date.now();
        // Prepared ahead by this replica (the usual case): its answer, unless it failed.
        const ahead = op.attempts > 1 ? undefined : this.takeAhead(op.id);
        const shown: MigrationMetadata = { ...names, mode: p.live ? 'live' : 'cold', storage: p.storage, phase: 'preparing' };
        // The record, a library image the destination lacks (fetched first) and the shared disk's
        // path are independent: one wait for the three. Without a library image there is nothing
        // to fetch, and the `started` record below shows the same.
        const [, , sharedDiskPath] = await Promise.all([
          row.image_id ? this.record(op, 'preparing', 'preparing the destination', 5, shown) : undefined,
          this.images.ensureOnNode(row, p.targetNodeId, ctx),
          p.live && p.storage === 'shared' && !ahead ? this.sharedDiskPath(row, p.sourceNodeId) : undefined,
        ]);
        // From here on a re-run asks the source first (the start may have been sent): recorded
        // while the destination gets ready, not after, so the start does not wait for it. (A crash
        // before the start was sent then ends the migration where the guest is, rather than retrying.)
        started = this.record(op, 'started', 'preparing the destination', 8, row.image_id ? {} : shown);
        started.catch(() => undefined); // awaited below; until then a failure must not go unhandled
        // Usually prepared ahead (see prepareAhead): its answer; else (it failed, or another replica made it) a prepare now.
        const prepared = (async () => {
          const answer = await ahead;
          if (answer) return answer;
          const disk = sharedDiskPath ?? (ahead && p.live && p.storage === 'shared' ? await this.sharedDiskPath(row, p.sourceNodeId) : undefined);
          return this.prepare(row, p, disk, op.id);
        })();
        [targetInfo] = await Promise.all([prepared, started]);
        timings.prepareMs = Date.now() - t0;
      } catch (e) {
        await started?.catch(() => undefined);
        await this.abortTarget(row, p, log, op.id);
        await this.end(row, 'stayed', p, `migration to node ${names.targetNode} failed: ${(e as Error).message}`);
        throw e;
      }
      if (ctx.signal.aborted) {
        await this.abortTarget(row, p, log, op.id);
        await this.end(row, 'stayed', p, '');
        throw new CancelledError(`migration of partition ${row.name} cancelled before it started`);
      }
      stage = 'started';
      // A live migration's source reports its phase as soon as it started; a cold one's is shown here (not waited for).
      if (!p.live) void this.record(op, 'started', 'copying the disk', 10, { phase: 'storage' }).catch(() => undefined);
      const t1 = Date.now();
      const sent = await this.start(op, row, p, targetInfo, ctx, log);
      timings.sourceMs = Date.now() - t1;
      outcome = sent.outcome;
      failure = sent.failure;
      result = sent.result;
      if (!outcome) outcome = await this.outcomeFromSource(row, p, ctx);
    }

    if (outcome === 'stayed') {
      await this.abortTarget(row, p, log, op.id);
      const cancelled = ctx.signal.aborted || failure instanceof CancelledError;
      await this.end(row, 'stayed', p, cancelled ? '' : `migration to node ${names.targetNode} failed: ${failure?.message ?? 'it ended without moving the guest'}`);
      await this.record(op, 'ended', cancelled ? 'cancelled' : 'failed', undefined, { phase: cancelled ? 'cancelled' : 'failed' });
      if (cancelled) throw new CancelledError(`migration of partition ${row.name} cancelled; it keeps running on node ${names.sourceNode}`);
      throw failure ?? new InternalError(`migration of partition ${row.name} ended without moving it; it stays on node ${names.sourceNode}`);
    }

    // Moved: the destination holds the guest's only copy. The command that lets it run there goes out
    // first; the record names the destination at once, while the node works (a re-run after a
    // crash in between finds the record ended and still finishes on the destination: see above).
    const t2 = Date.now();
    const finishing = p.live ? this.finishOnTarget(row, p, ctx) : Promise.resolve(undefined);
    // (The operation shows nothing new for these few ms: its end records QEMU's figures.)
    const written = Promise.all([this.end(row, 'moved', p, ''), this.images.record(op, row, 'migrated', { node: names.targetNode, details: { from: names.sourceNode, live: p.live } })]);
    written.catch(() => undefined); // awaited below; until then a failure must not go unhandled
    let refused: string | undefined;
    try {
      refused = await finishing;
    } finally {
      await written;
    }
    if (refused !== undefined) await this.lost(row, names.targetNode, refused);
    if (p.live) timings.finishMs = Date.now() - t2;
    const figures = result ? { bytesTransferred: result.ramTransferredBytes, totalTimeMs: result.totalTimeMs, downtimeMs: result.downtimeMs, postcopy: result.postcopy } : {};
    ctx.succeedWith({ stage: 'done', migration: { phase: 'completed', bytesRemaining: 0, ...figures, ...timings } });
    log.info({ ...result, ...timings }, 'partition migrated');
  }

  /**
   * Lets the guest run on the destination of a live migration that completed (asking until the node
   * answers). Resolves with undefined when it runs there, else with the node's reason.
   */
  private async finishOnTarget(row: PartitionRow, p: MigrateParams, ctx: OperationContext): Promise<string | undefined> {
    const finished = await this.untilAnswered(p.targetNodeId, { migrationFinishTarget: { partitionId: row.id } }, PREPARE_TIMEOUT_MS, ctx, 'finish on the destination');
    return finished.ok ? undefined : finished.errorMessage ?? '';
  }

  /**
   * The destination could not let the guest run: its only copy is stuck there. The partition (its
   * record naming the destination) is marked failed with the reason; throws.
   */
  private async lost(row: PartitionRow, targetName: string, reason: string): Promise<never> {
    const lost = `the guest moved to node ${targetName} but could not be resumed there: ${reason}`;
    const failed = await this.partitions.setState(this.ds.manager, row.id, 'failed', lost);
    if (failed) void this.events.publish(partitionEvent('partition.updated', partitionView(failed)));
    throw new InternalError(`migration of partition ${row.name}: ${lost}`);
  }

  /**
   * Starts getting the destination of a live migration ready while the request's transaction
   * commits and the operation is queued and picked up (the QEMU spawn takes longer than all three).
   * The operation's own prepare of the same migration then takes this one's answer: here, without
   * asking again; on another replica, the node answers it what it answered this one. Best effort:
   * if it fails, the operation prepares again and reports why. Not for a library image the node may
   * lack (the operation fetches it first, with progress). `sharedDiskPath`: the source's answer,
   * asked while the request's transaction runs. False when it does not apply.
   */
  prepareAhead(migrationId: string, row: PartitionRow, p: MigrateParams, sharedDiskPath?: Promise<string>): boolean {
    if (!p.live || row.image_id) return false;
    const prepared = (async () => {
      const disk = p.storage === 'shared' ? await (sharedDiskPath ?? this.sharedDiskPath(row, p.sourceNodeId)) : undefined;
      return this.prepare(row, p, disk, migrationId);
    })();
    prepared.catch((err: unknown) => this.log.debug({ err, operationId: migrationId }, 'preparing the destination ahead failed; the operation prepares it'));
    this.ahead.set(migrationId, prepared);
    // Taken by the operation when it runs here; forgotten after a while when it runs elsewhere.
    setTimeout(() => this.ahead.delete(migrationId), AHEAD_KEPT_MS).unref();
    return true;
  }

  /** A migration whose request did not commit: what was prepared ahead for it goes (also if the prepare is still on its way). */
  abandonAhead(migrationId: string, row: PartitionRow, p: MigrateParams): void {
    const prepared = this.takeAhead(migrationId);
    void (async () => {
      await prepared;
      await this.abortTarget(row, p, this.log.child({ operationId: migrationId, partition: row.name }), migrationId);
    })();
  }

  /**
   * The prepare made ahead for this migration by this replica, if there was one: it resolves with
   * its answer, or with undefined when it failed.
   */
  private takeAhead(migrationId: string): Promise<Record<string, unknown> | undefined> | undefined {
    const prepared = this.ahead.get(migrationId);
    this.ahead.delete(migrationId);
    return prepared?.catch(() => undefined);
  }

  /** Prepares the destination; returns what the source needs to reach it. */
  private async prepare(row: PartitionRow, p: MigrateParams, sharedDiskPath: string | undefined, migrationId: string): Promise<Record<string, unknown>> {
    const spec = specOf(row);
    const body: CommandBody = p.live
      ? { migrationPrepareTarget: { spec: { ...spec, desired: 'running' }, storage: p.storage, postcopy: Boolean(p.options.postcopy), tls: p.tls, migrationId, ...(sharedDiskPath ? { sharedDiskPath } : {}) } }
      : { coldMigrationPrepareTarget: { spec: { ...spec, desired: 'stopped' } } };
    const r = await this.sessions.command(p.targetNodeId, body, PREPARE_TIMEOUT_MS, AT_ONCE);
    if (!r.ok) throw agentFailure(r, `preparing node ${p.targetNodeName} to receive partition ${row.name}`);
    return JSON.parse(r.payload || '{}') as Record<string, unknown>;
  }

  /**
   * Sends the start to the source and waits for its answer. Cancel is passed on (pre-copy only:
   * the guest stays on the source). Returns no outcome when the answer was lost.
   */
  private async start(
    op: OperationRow,
    row: PartitionRow,
    p: MigrateParams,
    t: Record<string, unknown>,
    ctx: OperationContext,
    log: Logger,
  ): Promise<{ outcome?: Outcome; failure?: DomainError; result?: MigrationResult }> {
    const body: CommandBody = p.live
      ? {
          migrationStart: {
            partitionId: row.id,
            targetHost: String(t.host ?? ''),
            targetPort: Number(t.port ?? 0),
            targetNbdPort: Number(t.nbdPort ?? 0),
            storage: p.storage,
            exportName: String(t.exportName ?? ''),
            migrationId: op.id,
            tls: p.tls,
            tlsHostname: p.tls ? p.targetNodeName : '',
            options: { ...p.options, discardSnapshots: p.discardSnapshots },
          },
        }
      : { coldMigrationSend: { partitionId: row.id, targetHost: String(t.host ?? ''), targetPort: Number(t.port ?? 0) } };
    const onAbort = () => {
      if (!p.live) return; // a disk file in flight is not cancelled halfway; it ends soon
      log.info('cancel requested: cancelling the migration on the source');
      void this.sessions.command(p.sourceNodeId, { migrationCancel: { partitionId: row.id } }, 30_000, AT_ONCE).then(
        (r) => { if (!r.ok) log.warn({ error: r.errorMessage }, 'the source did not cancel the migration'); },
        () => undefined,
      );
    };
    ctx.signal.addEventListener('abort', onAbort);
    try {
      const r = await this.sessions.command(p.sourceNodeId, body, MIGRATE_TIMEOUT_MS, AT_ONCE);
      if (r.ok) return { outcome: 'moved', result: p.live ? (JSON.parse(r.payload || '{}') as MigrationResult) : undefined };
      if (r.errorCode === 'UNAVAILABLE') return {};
      return { outcome: 'stayed', failure: agentFailure(r, `migration of partition ${row.name}`) };
    } catch (e) {
      if (e instanceof UnavailableError || e instanceof DeadlineExceededError) return {};
      throw e;
    } finally {
      ctx.signal.removeEventListener('abort', onAbort);
    }
  }

  /** Asks the source until it answers whether the partition is still there (see MigrationOutcome). */
  private async outcomeFromSource(row: PartitionRow, p: MigrateParams, ctx: OperationContext): Promise<Outcome> {
    const r = await this.untilAnswered(p.sourceNodeId, { migrationOutcome: { partitionId: row.id } }, MIGRATE_TIMEOUT_MS, ctx, 'asking the source where the guest is', () => {
      if (p.live) void this.sessions.command(p.sourceNodeId, { migrationCancel: { partitionId: row.id } }, 30_000, AT_ONCE).catch(() => undefined);
    });
    if (!r.ok) throw agentFailure(r, `asking node ${p.sourceNodeId} about partition ${row.name}`);
    const answer = JSON.parse(r.payload || '{}') as { present?: boolean };
    return answer.present ? 'stayed' : 'moved';
  }

  /**
   * Sends a command until the node answers (it may be away for a while: reconnecting, its agent
   * restarting); a node's failure answer is returned, not thrown. `onAbort` runs once on cancel.
   */
  private async untilAnswered(nodeId: string, body: CommandBody, timeoutMs: number, ctx: OperationContext, what: string, onAbort?: () => void): Promise<agentV1.CommandResult__Output> {
    let told = false;
    const since = Date.now();
    const deadline = since + Math.max(timeoutMs, this.config.operationTimeoutMs);
    for (;;) {
      if (ctx.signal.aborted && onAbort && !told) {
        told = true;
        onAbort();
      }
      try {
        const r = await this.sessions.command(nodeId, body, timeoutMs, AT_ONCE);
        if (r.errorCode !== 'UNAVAILABLE') return r;
      } catch (e) {
        if (!(e instanceof UnavailableError || e instanceof DeadlineExceededError)) throw e;
      }
      if (Date.now() > deadline) throw new UnavailableError(`${what}: node ${nodeId} did not answer for ${Math.round((Date.now() - since) / 1000)} s; the partition stays migrating until it does`);
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
    }
  }

  /**
   * Removes what the destination prepared (best effort: a node that is away drops it when it
   * re-registers). With `migrationId` the migration is over: the node also refuses a prepare of it
   * that arrives later (one prepared ahead and delayed).
   */
  private async abortTarget(row: PartitionRow, p: MigrateParams, log: Logger, migrationId = ''): Promise<void> {
    try {
      const r = await this.sessions.command(p.targetNodeId, { migrationAbortTarget: { partitionId: row.id, migrationId } }, 30_000, AT_ONCE);
      if (!r.ok) log.warn({ error: r.errorMessage }, 'the destination did not abort the incoming migration');
    } catch (e) {
      log.warn({ err: e }, 'could not reach the destination to abort the incoming migration; it drops it when it reconnects');
    }
  }

  /**
   * Ends the migration in one transaction: the record names the node the guest is on, and the
   * capacity of the other node is given back. With copy storage, snapshots the copy did not carry go.
   * `onlyOf`: only if no other migration operation of the partition is live (see endMigrationReleasing).
   */
  private async end(row: PartitionRow, outcome: Outcome, p: MigrateParams, reason: string, state?: PartitionState, onlyOf?: string): Promise<void> {
    const moved = outcome === 'moved';
    const freedNode = moved ? p.sourceNodeId : p.targetNodeId;
    const copied = moved && p.live && p.storage === 'copy';
    // Usually one statement; a disk copy also drops the snapshots it did not carry, in one transaction.
    const out = !copied ? await this.partitions.endMigrationReleasing(this.ds, row.id, moved, state ?? p.previousState, reason, freedNode, onlyOf) : await inTransaction(this.ds, async (tx) => {
      const ended = await this.partitions.endMigrationReleasing(tx, row.id, moved, state ?? p.previousState, reason, freedNode, onlyOf);
      if (!ended) return undefined;
      const dropped = await this.snapshots.removeAll(tx, row.id);
      return dropped.length ? ((await this.partitions.setCurrentSnapshot(tx, row.id, null)) ?? ended) : ended;
    });
    if (out) void this.events.publish(partitionEvent('partition.updated', partitionView(out)));
  }

  /** Records the handler's stage and the migration's progress on the operation. */
  private async record(op: OperationRow, stage: string, phase: string, progress: number | undefined, migration: MigrationMetadata): Promise<void> {
    const r = await this.ops.mergeMetadata(op.id, { stage, migration }, phase, progress);
    if (r) void this.operations.publish(r); // heard here at once; the next step does not wait for Redis
  }

  /** Shared storage: the path of the source's disk file, which the destination sees at the same path. */
  async sharedDiskPath(row: PartitionRow, sourceNodeId = row.node_id!): Promise<string> {
    const r = await this.sessions.command(sourceNodeId, { migrationOutcome: { partitionId: row.id } }, 30_000, AT_ONCE);
    const disk = (JSON.parse(r.payload || '{}') as { diskPath?: string }).diskPath;
    if (!disk) throw new FailedPreconditionError(`node ${sourceNodeId} did not say where the disk of partition ${row.name} is, which shared storage needs`);
    return disk;
  }
}
