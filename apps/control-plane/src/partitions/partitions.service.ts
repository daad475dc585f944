import { Injectable } from '@nestjs/common';
import {
  AlreadyExistsError,
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
import { PlacementService, PlacementSpec } from './placement.service';
import { OperationQueueRepository } from '../operations/operation-queue.repository';
import { OperationRepository } from '../operations/operation.repository';
import { OperationView, OperationsService, operationView } from '../operations/operations.service';
import { AgentSessions } from '../agents/agent-sessions';
import { ImagePolicy } from '../images/image-policy';
import { PartitionRepository, PartitionRow, PlacementSpecRow } from './partition.repository';
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

/** Default disk when the request names none. */
const DEFAULT_DISK_GIB = 1;
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
  ) {}

  /**
   * Creates a partition (or `count` of them, named NAME-1..NAME-N, all or nothing), places it, and
   * starts an operation per partition that boots it. Placement happens here, so "no node fits" is
   * a 422 that creates nothing.
   */
  async create(principal: Principal, projectId: string, input: CreatePartitionInput, opts: MutationOptions = {}): Promise<PartitionOperationView | PartitionBatchView> {
    requireRole(principal, 'operator', 'create partitions');
    const diskGiB = input.diskGiB ?? DEFAULT_DISK_GIB;
    const count = input.count;
    const names = count === undefined ? [input.name] : Array.from({ length: count }, (_, i) => `${input.name}-${i + 1}`);
    const longest = names[names.length - 1]!;
    if (longest.length > 63) throw ValidationError.field('name', `with count ${count} the names run up to ${longest}, longer than 63 characters`);
    const spec: PlacementSpec = { ...(input.placement ?? {}) };
    const seed = opts.idempotencyKey ?? opts.requestId ?? uuidv7();
    return this.tx.run(
      { scope: `project:${projectId}`, name: 'partitions.create', input, key: opts.idempotencyKey },
      async (db) => {
        const taken = await this.partitions.namesTaken(db, projectId, names);
        if (taken.length) throw new AlreadyExistsError('partition', taken[0]!);
        const terms = await this.imagePolicy.admit(db, projectId, input.image, names.length);
        const nodeIds = await this.placement.place(
          db,
          projectId,
          names.map((n, i) => ({ requestId: `${seed}/${i}`, vcpus: input.vcpus, memoryMiB: input.memoryMiB, diskGiB, image: input.image, spec, imageRequirements: terms.requirements, imageInLibrary: terms.inLibrary })),
        );
        const rowsIn = await this.partitions.insertMany(
          db,
          { projectId, description: input.description ?? '', state: 'scheduled', vcpus: input.vcpus, memoryMiB: input.memoryMiB, diskGiB, image: input.image, imageId: terms.imageId ?? null, labels: input.labels ?? {}, placement: spec as PlacementSpecRow },
          names.map((name, i) => ({ id: uuidv7(), name, nodeId: nodeIds[i]! })),
        );
        const ops = await this.ops.insertMany(
          db,
          { projectId, kind: 'partition.create', targetType: 'partition', requestId: opts.requestId },
          rowsIn.map((r) => ({ id: uuidv7(), targetId: r.id })),
        );
        const partitions = rowsIn.map(partitionView);
        const operations = ops.map(operationView);
        const out: PartitionOperationView | PartitionBatchView = count === undefined ? { partition: partitions[0]!, operation: operations[0]! } : { partitions, operations };
        return out;
      },
      async (r) => {
        if ('partition' in r) return this.launched(r, 'partition.created');
        await this.queue.enqueueMany(r.operations.map((o) => ({ id: o.id, kind: o.kind }))).catch(() => undefined);
        await Promise.all(
          r.partitions.map((p, i) =>
            Promise.all([
              this.events.publish(partitionEvent('partition.created', p)),
              this.operations.publishView(r.operations[i]!),
            ]),
          ),
        );
      },
    );
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
      const row = await this.lock(db, projectId, id);
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

  private async lock(db: Db, projectId: string, id: string): Promise<PartitionRow> {
    if (!UUID_RE.test(id)) throw new NotFoundError('partition', id);
    const row = await this.partitions.lock(db, projectId, id);
    if (!row) throw new NotFoundError('partition', id);
    return row;
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
   * flight (delete supersedes it), let `prepare` check and change more (it may return the
   * changed row, the operation's params and an `extra` result), insert the operation; after the
   * commit, queue its job and publish. Used by partitions, snapshots and migration.
   */
  act<X = undefined>(
    principal: Principal,
    projectId: string,
    id: string,
    action: PartitionAction,
    kind: string,
    params: Record<string, unknown>,
    opts: MutationOptions,
    prepare?: (db: Db, row: PartitionRow) => Promise<{ row?: PartitionRow; params?: Record<string, unknown>; extra?: X }>,
    afterCommit?: (r: { partition: PartitionView; operation: OperationView; extra?: X }) => Promise<void>,
  ): Promise<{ partition: PartitionView; operation: OperationView; extra?: X }> {
    requireRole(principal, 'operator', `${action} partitions`);
    return this.tx.run(
      { scope: `project:${projectId}`, name: `partitions.${action}`, input: { id, params }, key: opts.idempotencyKey },
      async (db) => {
        let row = await this.lock(db, projectId, id);
        checkIfMatch('partition', id, opts.ifMatch, row.version);
        assertCanPerform(action, row);
        const live = await this.ops.liveForTarget(db, row.id);
        if (live && action !== 'delete') {
          throw new FailedPreconditionError(`cannot ${action} partition ${row.name}: operation ${live.id} (${live.kind}) is in progress; wait for it or cancel it`);
        }
        const prepared = prepare ? await prepare(db, row) : {};
        row = prepared.row ?? row;
        const op = await this.ops.insert(db, { id: uuidv7(), projectId, kind, targetType: 'partition', targetId: row.id, params: prepared.params ?? params, requestId: opts.requestId });
        return { partition: partitionView(row), operation: operationView(op), superseded: live?.id, extra: prepared.extra };
      },
      async (r) => {
        if (r.superseded) await this.ops.requestCancel(r.superseded).then((o) => o && this.events.publish({ type: 'operation.cancel-requested', resourceType: 'operation', resourceId: o.id, projectId, data: operationView(o) }));
        await this.launched(r, 'partition.updated');
        if (afterCommit) await afterCommit(r);
      },
    ).then(({ partition, operation, extra }) => ({ partition, operation, extra }));
  }

  /** After commit: queue the operation's job and tell the event streams. */
  private async launched(r: { partition: PartitionView; operation: OperationView }, type: string): Promise<void> {
    await this.queue.enqueue(r.operation.id, r.operation.kind).catch(() => undefined); // the sweep re-queues it if Redis hiccupped
    await this.events.publish(partitionEvent(type, r.partition));
    await this.operations.publishView(r.operation);
  }
}
