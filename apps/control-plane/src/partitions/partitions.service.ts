import { Injectable } from '@nestjs/common';
import {
  AlreadyExistsError,
  DomainError,
  FailedPreconditionError,
  NotFoundError,
  PARTITION_STATES,
  PartitionAction,
  Principal,
  UUID_RE,
  ValidationError,
  assertCanPerform,
  requireRole,
  uuidv7,
} from '@hyperplane/domain';
import { checkIfMatch } from '../common/etag';
import { Page, parsePage, toPage } from '../common/pagination';
import { MutationOptions, TransactionRunner } from '../common/transactions';
import { Db } from '../database/database';
import { labelsProblem, parseLabelSelectors } from '../common/validation';
import { EventBus } from '../events/event-bus';
import { PlacementDemand, PlacementService, PlacementSpec } from './placement.service';
import { Batcher } from '../common/batcher';
import { OperationQueueRepository } from '../operations/operation-queue.repository';
import { NewOperation, OperationLease, OperationRepository, OperationRow } from '../operations/operation.repository';
import { OperationRunner } from '../operations/operation-runner';
import { OperationView, OperationsService, cancelSubjectOf, inProgressHint, operationView } from '../operations/operations.service';
import { AgentSessions } from '../agents/agent-sessions';
import { ImagePolicy, ImageTerms } from '../images/image-policy';
import { NewPartition, PartitionRepository, PartitionRow, PlacementSpecRow } from './partition.repository';
import { PartitionView, partitionEvent, partitionView } from './partition-view';
import { CreatePartitionInput, StopPartitionInput, UpdatePartitionInput } from './partitions.dto';

/** The answer to every state-changing partition call: the partition and the operation doing the work. */
export interface PartitionOperationView {
  partition: PartitionView;
  operation: OperationView;
}

/** The answer to a create with `count`: every partition and its operation, in order. */
export interface PartitionBatchView {
  partitions: PartitionView[];
  operations: OperationView[];
}

/** A create request, checked and ready to place. */
interface CreateRequest {
  projectId: string;
  input: CreatePartitionInput;
  opts: MutationOptions;
  names: string[];
  spec: PlacementSpec;
  diskGiB: number;
  /** Seeds the placement order (replayable from the idempotency key or request id). */
  seed: string;
  /** `performance.now()` when it came. */
  asked: number;
}

/** What became of one create of a batch. */
type CreateOutcome = { ok: true; value: PartitionOperationView | PartitionBatchView } | { ok: false; error: unknown };

/** The placement demands of a create's partitions. */
function demandsOf(req: CreateRequest, terms: ImageTerms): PlacementDemand[] {
  const { input, spec, diskGiB } = req;
  return req.names.map((_, i) => ({ requestId: `${req.seed}/${i}`, vcpus: input.vcpus, memoryMiB: input.memoryMiB, diskGiB, image: input.image, spec, imageRequirements: terms.requirements, imageInLibrary: terms.inLibrary }));
}

/** The rows of a create's partitions, placed on `nodeIds` in order. */
function newPartitions(req: CreateRequest, nodeIds: string[], terms: ImageTerms): NewPartition[] {
  const { input } = req;
  return req.names.map((name, i) => ({
    id: uuidv7(), projectId: req.projectId, name, description: input.description ?? '', state: 'scheduled' as const, nodeId: nodeIds[i]!, vcpus: input.vcpus, memoryMiB: input.memoryMiB,
    diskGiB: req.diskGiB, image: input.image, imageId: terms.imageId ?? null, labels: input.labels ?? {}, placement: req.spec as PlacementSpecRow,
  }));
}

/** The `partition.create` operation of a new partition. */
function newCreateOperation(req: CreateRequest, p: PartitionRow): NewOperation {
  return { id: uuidv7(), projectId: req.projectId, kind: 'partition.create', targetType: 'partition', targetId: p.id, requestId: req.opts.requestId };
}

/** The answer to a create: one partition and its operation, or (with `count`) all of them. */
function answerOf(req: CreateRequest, partitions: PartitionView[], operations: OperationView[]): PartitionOperationView | PartitionBatchView {
  return req.input.count === undefined ? { partition: partitions[0]!, operation: operations[0]! } : { partitions, operations };
}

/** Default disk when the request names none. */
const DEFAULT_DISK_GIB = 1;
/** Most partitions one batch of creates commits at once. */
const MAX_BATCH_PARTITIONS = 300;
/** Largest console tail one request returns. */
const MAX_CONSOLE_BYTES = 1024 * 1024;

/**
 * Partition lifecycle. Requests are checked and recorded synchronously (placement included, so
 * "no node fits" is a 422 that creates nothing); the work happens in operations.
 */
@Injectable()
export class PartitionsService {
  constructor(
    private readonly partitions: PartitionRepository,
    private readonly placement: PlacementService,
    private readonly ops: OperationRepository,
    private readonly queue: OperationQueueRepository,
    private readonly operations: OperationsService,
    private readonly sessions: AgentSessions,
    private readonly events: EventBus,
    private readonly tx: TransactionRunner,
    private readonly imagePolicy: ImagePolicy,
    private readonly runner: OperationRunner,
  ) {}

  /** Creates arriving together, committed together (see {@link create}). */
  private readonly creates = new Batcher<CreateRequest, CreateOutcome>((reqs) => this.createBatch(reqs), { maxBatch: MAX_BATCH_PARTITIONS, weight: (r) => r.names.length, maxInFlight: 3 });

  /**
   * Creates a partition (or `count` of them, named NAME-1..NAME-N, all or nothing), places it, and
   * starts an operation per partition that boots it. Placement happens here, so "no node fits" is
   * a 422 that creates nothing. Creates without an idempotency key, a pinned node or a placement
   * group are committed together with those arriving at the same moment (one transaction, one
   * statement per step for all of them); each still succeeds or fails on its own.
   */
  async create(principal: Principal, projectId: string, input: CreatePartitionInput, opts: MutationOptions = {}): Promise<PartitionOperationView | PartitionBatchView> {
    requireRole(principal, 'operator', 'create partitions');
    const diskGiB = input.diskGiB ?? DEFAULT_DISK_GIB;
    const count = input.count;
    const names = count === undefined ? [input.name] : Array.from({ length: count }, (_, i) => `${input.name}-${i + 1}`);
    const longest = names[names.length - 1]!;
    if (longest.length > 63) throw ValidationError.field('name', `with count ${count} the names run up to ${longest}, longer than 63 characters`);
    const spec: PlacementSpec = { ...(input.placement ?? {}) };
    const req: CreateRequest = { projectId, input, opts, names, spec, diskGiB, seed: opts.idempotencyKey ?? opts.requestId ?? uuidv7(), asked: performance.now() };
    if (opts.idempotencyKey || spec.group || spec.node) return this.createAlone(req);
    const r = await this.creates.call(req);
    if (!r.ok) throw r.error;
    return r.value;
  }

  /** One create in its own transaction (with its idempotency key, group lock, pinned node). */
  private createAlone(req: CreateRequest): Promise<PartitionOperationView | PartitionBatchView> {
    const { projectId, input, opts, names } = req;
    return this.tx.run(
      { scope: `project:${projectId}`, name: 'partitions.create', input, key: opts.idempotencyKey },
      async (db) => {
        const taken = await this.partitions.namesTaken(db, projectId, names);
        if (taken.length) throw new AlreadyExistsError('partition', taken[0]!);
        const terms = await this.imagePolicy.admit(db, projectId, input.image, names.length);
        const nodeIds = await this.placement.place(db, projectId, demandsOf(req, terms));
        const rowsIn = await this.partitions.insertRows(db, newPartitions(req, nodeIds, terms));
        const ops = await this.ops.insertRows(db, rowsIn.map((r) => newCreateOperation(req, r)));
        return answerOf(req, rowsIn.map(partitionView), ops.map(operationView));
      },
      (r) => this.announce('partition' in r ? [r.partition] : r.partitions, 'partition' in r ? [r.operation] : r.operations),
    );
  }

  /**
   * Creates arriving at the same moment, in one transaction: names checked in one statement, image
   * policy once per image, placement of each in turn on one snapshot and one reservation statement
   * for all, one insert of all partitions and one of all operations. A create refused by what the
   * batch cannot judge exactly for it alone (a shared image limit, a name asked twice, nodes read
   * before it came) is redone by itself afterwards. If the transaction fails as a whole (a name
   * taken meanwhile by another replica, a deadlock), each create is tried again in a batch of its
   * own. Never rejects: every create gets its own outcome.
   */
  private async createBatch(reqs: CreateRequest[]): Promise<CreateOutcome[]> {
    const outcomes: CreateOutcome[] = new Array(reqs.length);
    const alone: number[] = [];
    try {
      await this.batchTransaction(reqs, outcomes, alone);
    } catch (error) {
      if (reqs.length === 1) return [{ ok: false, error }];
      return (await Promise.all(reqs.map((r) => this.createBatch([r])))).map((o) => o[0]!);
    }
    await Promise.all(alone.map(async (k) => {
      outcomes[k] = await this.createAlone(reqs[k]!).then((value): CreateOutcome => ({ ok: true, value }), (error: unknown): CreateOutcome => ({ ok: false, error }));
    }));
    return outcomes;
  }

  /**
   * The transaction of {@link createBatch}: fills `outcomes`, and `alone` with the creates to redo
   * by themselves. As many of the operations as this replica has room for are recorded running
   * under its lease and started here after the commit (with the partition rows as committed), the
   * others queued (see OperationRunner.leaseHere).
   */
  private async batchTransaction(reqs: CreateRequest[], outcomes: CreateOutcome[], alone: number[]): Promise<void> {
    /** Leases of the operations recorded running, until they start (given back if the transaction fails). */
    let leased: { lease?: OperationLease; count: number } = { count: 0 };
    let inserted: { ops: OperationRow[]; rows: PartitionRow[] } | undefined;
    try {
      await this.tx.run(
        { scope: 'partitions', name: 'partitions.create', input: null },
        async (db) => {
          const taken = await this.partitions.namesTakenIn(db, reqs.flatMap((r) => r.names.map((name) => ({ projectId: r.projectId, name }))));
          const asked = new Set<string>();
          const live: number[] = [];
          reqs.forEach((r, k) => {
            const keys = r.names.map((n) => `${r.projectId}/${n}`);
            const takenName = r.names.find((_, i) => taken.has(keys[i]!));
            if (takenName !== undefined) outcomes[k] = { ok: false, error: new AlreadyExistsError('partition', takenName) };
            else if (keys.some((key) => asked.has(key))) alone.push(k);
            else live.push(k);
            for (const key of keys) asked.add(key);
          });
          const terms = new Map<string, ImageTerms | DomainError>();
          for (const k of live) {
            const r = reqs[k]!;
            const key = `${r.projectId}\0${r.input.image}`;
            if (terms.has(key)) continue;
            const adding = live.reduce((n, j) => n + (reqs[j]!.projectId === r.projectId && reqs[j]!.input.image === r.input.image ? reqs[j]!.names.length : 0), 0);
            terms.set(key, await this.imagePolicy.admit(db, r.projectId, r.input.image, adding).catch((e: unknown) => {
              if (e instanceof DomainError) return e;
              throw e;
            }));
          }
          const placing = live.filter((k) => {
            if (!(terms.get(`${reqs[k]!.projectId}\0${reqs[k]!.input.image}`) instanceof DomainError)) return true;
            alone.push(k);
            return false;
          });
          const placed = await this.placement.placeBatch(db, placing.map((k) => ({ projectId: reqs[k]!.projectId, demands: demandsOf(reqs[k]!, terms.get(`${reqs[k]!.projectId}\0${reqs[k]!.input.image}`) as ImageTerms), asked: reqs[k]!.asked })));
          const made: Array<{ k: number; rows: NewPartition[] }> = [];
          placed.forEach((p, j) => {
            const k = placing[j]!;
            if (p.ok) made.push({ k, rows: newPartitions(reqs[k]!, p.nodeIds, terms.get(`${reqs[k]!.projectId}\0${reqs[k]!.input.image}`) as ImageTerms) });
            else if ('retryAlone' in p) alone.push(k);
            else outcomes[k] = { ok: false, error: p.error };
          });
          if (made.length === 0) return [];
          const rowsIn = await this.partitions.insertRows(db, made.flatMap((m) => m.rows));
          const owner = made.flatMap((m) => m.rows.map(() => reqs[m.k]!));
          leased = this.runner.leaseUpTo('partition.create', rowsIn.length);
          const ops = await this.ops.insertRows(db, rowsIn.map((r, i) => newCreateOperation(owner[i]!, r)), leased.lease, leased.count);
          inserted = { ops, rows: rowsIn };
          let at = 0;
          for (const m of made) {
            const n = m.rows.length;
            outcomes[m.k] = { ok: true, value: answerOf(reqs[m.k]!, rowsIn.slice(at, at + n).map(partitionView), ops.slice(at, at + n).map(operationView)) };
            at += n;
          }
          return [{ partitions: rowsIn.map(partitionView), operations: ops.map(operationView) }];
        },
        // Committed: from here on nothing may fail the batch (its creates exist). The jobs and events
        // go out while the creates are answered (the sweep queues any job Redis missed).
        async (created) => {
          const n = leased.count;
          leased = { count: 0 }; // each runHere takes its lease over
          // Told first (delivered here at once), so no step of an operation run here comes before its creation.
          for (const c of created) void this.announce(c.partitions, c.operations).catch(() => undefined);
          if (!inserted || n === 0) return;
          const rows = new Map(inserted.rows.map((r) => [r.id, r]));
          for (const op of inserted.ops) if (op.lease_owner === this.runner.owner) this.runner.runHere(op, rows.get(op.target_id));
        },
      );
    } finally {
      this.runner.unlease(leased.count);
    }
  }

  /** After commit: tell the event streams, and queue the jobs of the create operations not run here (recorded pending). */
  private async announce(partitions: PartitionView[], operations: OperationView[]): Promise<void> {
    const told = Promise.all(partitions.map((p, i) => Promise.all([this.events.publish(partitionEvent('partition.created', p)), this.operations.publishView(operations[i]!)])));
    const queued = operations.filter((o) => o.status === 'pending');
    if (queued.length) await this.queue.enqueueMany(queued.map((o) => ({ id: o.id, kind: o.kind }))).catch(() => undefined); // the sweep re-queues them if Redis hiccupped
    await told;
  }

  /** Gets a partition in the project. */
  async get(principal: Principal, projectId: string, id: string): Promise<PartitionView> {
    requireRole(principal, 'viewer', 'read partitions');
    return partitionView(await this.find(projectId, id));
  }

  /** Lists a project's partitions with filters (`state`, `label=k:v`, `node`). */
  async list(principal: Principal, projectId: string, q: { pageSize?: unknown; pageToken?: unknown; state?: unknown; label?: unknown; node?: unknown }): Promise<Page<PartitionView>> {
    requireRole(principal, 'viewer', 'list partitions');
    const page = parsePage(q.pageSize, q.pageToken);
    const state = q.state === undefined || q.state === '' ? undefined : String(q.state);
    if (state !== undefined && !(PARTITION_STATES as readonly string[]).includes(state)) {
      throw ValidationError.field('state', `must be one of ${PARTITION_STATES.join(', ')}`);
    }
    const nodeId = q.node === undefined || q.node === '' ? undefined : String(q.node);
    if (nodeId !== undefined && !UUID_RE.test(nodeId)) throw ValidationError.field('node', 'must be a node id');
    const rows = await this.partitions.list(projectId, page, { state, labels: parseLabelSelectors(q.label), nodeId });
    return toPage(rows, page, partitionView);
  }

  /** Changes labels and description; honours If-Match. */
  async update(principal: Principal, projectId: string, id: string, input: UpdatePartitionInput, opts: MutationOptions = {}): Promise<PartitionView> {
    requireRole(principal, 'operator', 'update partitions');
    const view = await this.tx.run({ scope: `project:${projectId}`, name: 'partitions.update', input: { id, input } }, async (db) => {
      const row = await this.lock(id, () => this.partitions.lock(db, projectId, id));
      checkIfMatch('partition', id, opts.ifMatch, row.version);
      assertCanPerform('update', row);
      let labels: Record<string, string> | undefined;
      if (input.labels) {
        const merged: Record<string, string | null> = input.replaceLabels ? { ...input.labels } : { ...row.labels, ...input.labels };
        labels = Object.fromEntries(Object.entries(merged).filter((e): e is [string, string] => e[1] !== null));
        const problem = labelsProblem(labels);
        if (problem) throw ValidationError.field('labels', problem);
      } else if (input.replaceLabels) {
        labels = {};
      }
      return partitionView(await this.partitions.updateMeta(db, id, { labels, description: input.description }));
    });
    await this.events.publish(partitionEvent('partition.updated', view));
    return view;
  }

  /** Starts a stopped or failed partition (placing it again if it has no node). */
  start(principal: Principal, projectId: string, id: string, opts: MutationOptions = {}): Promise<PartitionOperationView> {
    return this.action(principal, projectId, id, 'start', 'partition.start', {}, opts, async (db, row) => {
      if (!row.node_id) {
        const terms = await this.imagePolicy.admit(db, projectId, row.image, 0);
        const [nodeId] = await this.placement.place(db, projectId, [{ requestId: opts.requestId ?? uuidv7(), vcpus: row.vcpus, memoryMiB: Number(row.memory_mib), diskGiB: row.disk_gib, image: row.image, spec: row.placement as PlacementSpec, imageRequirements: terms.requirements, imageInLibrary: terms.inLibrary }]);
        return this.partitions.setDesired(db, row.id, 'running', 'scheduled', '', nodeId);
      }
      return row;
    });
  }

  /** Stops a partition: ACPI power-off with a grace period, or at once with `force`. */
  stop(principal: Principal, projectId: string, id: string, input: StopPartitionInput, opts: MutationOptions = {}): Promise<PartitionOperationView> {
    return this.action(principal, projectId, id, 'stop', 'partition.stop', { force: input.force ?? false, graceSeconds: input.graceSeconds ?? 30 }, opts);
  }

  /** Reboots a running partition (a reset of the guest). */
  reboot(principal: Principal, projectId: string, id: string, opts: MutationOptions = {}): Promise<PartitionOperationView> {
    return this.action(principal, projectId, id, 'reboot', 'partition.reboot', {}, opts);
  }

  /** Deletes a partition: the guest is stopped and its files removed, then the record. Supersedes any operation in flight. */
  delete(principal: Principal, projectId: string, id: string, opts: MutationOptions = {}): Promise<PartitionOperationView> {
    return this.action(principal, projectId, id, 'delete', 'partition.delete', {}, opts, async (db, row) =>
      this.partitions.setDesired(db, row.id, 'absent', 'deleting', 'delete requested'),
    );
  }

  /** The tail of the partition's serial console log. */
  async console(principal: Principal, projectId: string, id: string, tailBytes?: unknown): Promise<{ partitionId: string; data: string; truncated: boolean }> {
    requireRole(principal, 'operator', 'read the console');
    let bytes = 16 * 1024;
    if (tailBytes !== undefined && tailBytes !== '' && tailBytes !== 0) {
      const n = Number(tailBytes);
      if (!Number.isInteger(n) || n < 1 || n > MAX_CONSOLE_BYTES) throw ValidationError.field('tailBytes', `must be an integer between 1 and ${MAX_CONSOLE_BYTES}`);
      bytes = n;
    }
    const row = await this.find(projectId, id);
    assertCanPerform('console', row);
    if (!row.node_id) throw new FailedPreconditionError(`partition ${row.name} has no node yet`);
    const r = await this.sessions.command(row.node_id, { consoleTail: { partitionId: row.id, bytes } }, 10_000);
    if (!r.ok) throw new FailedPreconditionError(`console of partition ${row.name}: ${r.errorMessage}`);
    const payload = JSON.parse(r.payload || '{}') as { data?: string; truncated?: boolean };
    return { partitionId: row.id, data: payload.data ?? '', truncated: payload.truncated ?? false };
  }

  /** A partition by id within the project; anything else is 404. */
  async find(projectId: string, id: string): Promise<PartitionRow> {
    if (!UUID_RE.test(id)) throw new NotFoundError('partition', id);
    const row = await this.partitions.get(projectId, id);
    if (!row) throw new NotFoundError('partition', id);
    return row;
  }

  /** What `lock` found for partition `id` (a lock statement of the repository); 404 for a malformed id or nothing found. */
  private async lock<T>(id: string, lock: () => Promise<T | undefined>): Promise<T> {
    const found = UUID_RE.test(id) ? await lock() : undefined;
    if (!found) throw new NotFoundError('partition', id);
    return found;
  }

  /** Common shape of start/stop/reboot/delete: see {@link PartitionsService.act}. */
  private action(
    principal: Principal,
    projectId: string,
    id: string,
    action: PartitionAction,
    kind: string,
    params: Record<string, unknown>,
    opts: MutationOptions,
    prepare?: (db: Db, row: PartitionRow) => Promise<PartitionRow | undefined>,
  ): Promise<PartitionOperationView> {
    return this.act(principal, projectId, id, action, kind, params, opts, prepare && (async (db, row) => ({ row: await prepare(db, row) }))).then(({ partition, operation }) => ({ partition, operation }));
  }

  /**
   * Records an action on a partition as an operation, in one transaction: lock the partition,
   * check If-Match, the state ({@link assertCanPerform}) and that no other operation is in
   * flight (delete supersedes it), let `prepare` check and change more (it gets the id the
   * operation will have; it may return the changed row, the operation's params, the phase it
   * starts in, an `extra` result and the rows the handler reads first, as `read`: run here, the
   * handler gets them instead of reading them), insert the operation; after the commit, start it here
   * (see OperationRunner.leaseHere) or queue its job, and publish. Used by partitions, snapshots
   * and migration.
   */
  act<X = undefined>(
    principal: Principal,
    projectId: string,
    id: string,
    action: PartitionAction,
    kind: string,
    params: Record<string, unknown>,
    opts: MutationOptions,
    prepare?: (db: Db, row: PartitionRow, operationId: string) => Promise<{ row?: PartitionRow; params?: Record<string, unknown>; extra?: X; phase?: { phase: string; progress: number }; read?: unknown }>,
    afterCommit?: (r: { partition: PartitionView; operation: OperationView; extra?: X }) => Promise<void>,
  ): Promise<{ partition: PartitionView; operation: OperationView; extra?: X }> {
    requireRole(principal, 'operator', `${action} partitions`);
    // Run by this replica when it can: recorded running under its lease, started after the commit
    // without a trip through the queue; else recorded pending with a queued job.
    const lease = this.runner.leaseHere(kind);
    let inserted: OperationRow | undefined;
    /** What `prepare` says the handler would read first, as committed (not kept with an idempotency key's result). */
    let read: unknown;
    let leaseUsed = false;
    return this.tx.run(
      { scope: `project:${projectId}`, name: `partitions.${action}`, input: { id, params }, key: opts.idempotencyKey },
      async (db) => {
        const locked = await this.lock(id, () => this.partitions.lockWithLiveOperation(db, projectId, id));
        let row = locked.row;
        const live = locked.live;
        checkIfMatch('partition', id, opts.ifMatch, row.version);
        assertCanPerform(action, row);
        if (live && action !== 'delete') {
          throw new FailedPreconditionError(`cannot ${action} partition ${row.name}: operation ${live.id} (${live.kind}) is in progress; ${inProgressHint(cancelSubjectOf(live))}`);
        }
        const operationId = uuidv7();
        const prepared = prepare ? await prepare(db, row, operationId) : {};
        row = prepared.row ?? row;
        // Run here, it starts in the phase its handler would record first (a pending one has none yet).
        const start = lease ? prepared.phase : undefined;
        inserted = await this.ops.insert(db, { id: operationId, projectId, kind, targetType: 'partition', targetId: row.id, params: prepared.params ?? params, requestId: opts.requestId, ...start }, lease);
        read = prepared.read;
        return { partition: partitionView(row), operation: operationView(inserted), superseded: live?.id, extra: prepared.extra };
      },
      async (r) => {
        try {
          if (r.superseded) await this.ops.requestCancel(r.superseded).then((o) => o && this.events.publish({ type: 'operation.cancel-requested', resourceType: 'operation', resourceId: o.id, projectId, data: operationView(o) }));
        } finally {
          // Started whatever happens above: committed running, it would otherwise wait for its lease to run out.
          if (lease && inserted) {
            leaseUsed = true;
            this.runner.runHere(inserted, read);
          }
        }
        // afterCommit does not wait for the job and the events (a migration's destination starts getting ready).
        await Promise.all([this.launched(r, 'partition.updated', !lease), afterCommit?.(r)]);
      },
    ).then(({ partition, operation, extra }) => ({ partition, operation, extra })).finally(() => {
      if (lease && !leaseUsed) this.runner.unlease(); // refused, failed, or an idempotent replay (which starts nothing)
    });
  }

  /** After commit: queue the operation's job (unless this replica runs it) and tell the event streams. */
  private async launched(r: { partition: PartitionView; operation: OperationView }, type: string, queue = true): Promise<void> {
    await Promise.all([
      queue ? this.queue.enqueue(r.operation.id, r.operation.kind).catch(() => undefined) : undefined, // the sweep re-queues it if Redis hiccupped
      this.events.publish(partitionEvent(type, r.partition)),
      this.operations.publishView(r.operation),
    ]);
  }
}
