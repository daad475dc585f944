import { Injectable } from '@nestjs/common';
import { FailedPreconditionError, NotFoundError, Principal, ValidationError, requireRole, uuidv7 } from '@hyperplane/domain';
import { MutationOptions, TransactionRunner } from '../common/transactions';
import { OperationQueueRepository } from '../operations/operation-queue.repository';
import { OperationRepository } from '../operations/operation.repository';
import { DrainNodeInput } from './nodes.dto';
import { OperationView, operationView } from '../operations/operations.service';
import { etagOf } from '../common/etag';
import { Page, parsePage, toPage } from '../common/pagination';
import { EventBus } from '../events/event-bus';
import { NodeImage, NodeRepository, NodeRow } from './node.repository';

/** A node as both APIs show it. */
export interface NodeView {
  id: string;
  name: string;
  address: string;
  /** ready | cordoned | draining | unreachable */
  state: string;
  cordoned: boolean;
  driver: string;
  accelerator: string;
  qemuVersion: string;
  cpuFlags: string[];
  machineTypes: string[];
  labels: Record<string, string>;
  capacity: { vcpus: number; memoryMiB: number; diskBytes: number };
  allocatable: { vcpus: number; memoryMiB: number; diskBytes: number };
  allocated: { vcpus: number; memoryMiB: number; diskBytes: number };
  images: NodeImage[];
  lastHeartbeatAt: string | null;
  etag: string;
  createdAt: string;
  updatedAt: string;
}

/** States a node can be listed by. */
export const NODE_STATES = ['ready', 'cordoned', 'draining', 'unreachable'];

/** The single state an operator reads off a node: unreachable wins, then draining, then cordoned. */
export function nodeState(r: Pick<NodeRow, 'status' | 'cordoned' | 'draining'>): string {
  if (r.status === 'unreachable') return 'unreachable';
  if (r.draining) return 'draining';
  if (r.cordoned) return 'cordoned';
  return 'ready';
}

/** Maps a node row to its view. */
export function nodeView(r: NodeRow): NodeView {
  return {
    id: r.id,
    name: r.name,
    address: r.address,
    state: nodeState(r),
    cordoned: r.cordoned,
    driver: r.driver,
    accelerator: r.accelerator,
    qemuVersion: r.qemu_version,
    cpuFlags: r.cpu_flags,
    machineTypes: r.machine_types,
    labels: r.labels,
    capacity: { vcpus: r.vcpus, memoryMiB: Number(r.memory_mib), diskBytes: Number(r.disk_bytes) },
    allocatable: {
      vcpus: Math.floor(r.vcpus * r.cpu_allocation_ratio),
      memoryMiB: Math.floor(Number(r.memory_mib) * r.memory_allocation_ratio),
      diskBytes: Number(r.disk_bytes),
    },
    allocated: { vcpus: r.allocated_vcpus, memoryMiB: Number(r.allocated_memory_mib), diskBytes: Number(r.allocated_disk_bytes) },
    images: r.images,
    lastHeartbeatAt: r.last_heartbeat_at ? r.last_heartbeat_at.toISOString() : null,
    etag: etagOf(r.version),
    createdAt: r.created_at.toISOString(),
    updatedAt: r.updated_at.toISOString(),
  };
}

/** Nodes: read by cluster admins, cordoned and uncordoned by them. */
@Injectable()
export class NodesService {
  constructor(
    private readonly nodes: NodeRepository,
    private readonly ops: OperationRepository,
    private readonly queue: OperationQueueRepository,
    private readonly events: EventBus,
    private readonly tx: TransactionRunner,
  ) {}

  /** Lists nodes, optionally by state. */
  async list(principal: Principal, q: { pageSize?: unknown; pageToken?: unknown; state?: string }): Promise<Page<NodeView>> {
    requireRole(principal, 'cluster-admin', 'list nodes');
    const page = parsePage(q.pageSize, q.pageToken);
    if (q.state !== undefined && q.state !== '' && !NODE_STATES.includes(q.state)) {
      throw ValidationError.field('state', `must be one of ${NODE_STATES.join(', ')}`);
    }
    return toPage(await this.nodes.list(page, { state: q.state || undefined }), page, nodeView);
  }

  /** Gets a node by id or name. */
  async get(principal: Principal, ref: string): Promise<NodeView> {
    requireRole(principal, 'cluster-admin', 'read nodes');
    const r = await this.nodes.findByIdOrName(ref);
    if (!r) throw new NotFoundError('node', ref);
    return nodeView(r);
  }

  /**
   * Drains a node, as an operation: it takes no new partitions, and its partitions move to other
   * nodes (running ones live, stopped ones cold), or with mode `stop` are stopped where they are.
   */
  async drain(principal: Principal, ref: string, input: DrainNodeInput = {}, opts: MutationOptions = {}): Promise<{ node: NodeView; operation: OperationView }> {
    requireRole(principal, 'cluster-admin', 'drain nodes');
    const found = await this.nodes.findByIdOrName(ref);
    if (!found) throw new NotFoundError('node', ref);
    const mode = input.mode ?? 'migrate';
    const out = await this.tx.run({ scope: principal.tokenId, name: 'nodes.drain', input: { node: found.id, mode }, key: opts.idempotencyKey }, async (db) => {
      const live = await this.ops.liveForTarget(db, found.id);
      if (live) throw new FailedPreconditionError(`cannot drain node ${found.name}: operation ${live.id} (${live.kind}) is in progress`);
      const row = await this.nodes.setDraining(db, found.id);
      const op = await this.ops.insert(db, { id: uuidv7(), projectId: null, kind: 'node.drain', targetType: 'node', targetId: found.id, params: { mode }, requestId: opts.requestId });
      return { node: nodeView(row!), operation: operationView(op) };
    });
    await this.queue.enqueue(out.operation.id, out.operation.kind).catch(() => undefined);
    await this.events.publish({ type: 'node.updated', resourceType: 'node', resourceId: found.id, projectId: null, data: out.node });
    return out;
  }

  /** Cordons (true) or uncordons (false) a node: a cordoned node takes no new partitions. */
  async setCordoned(principal: Principal, ref: string, cordoned: boolean): Promise<NodeView> {
    requireRole(principal, 'cluster-admin', cordoned ? 'cordon nodes' : 'uncordon nodes');
    const found = await this.nodes.findByIdOrName(ref);
    if (!found) throw new NotFoundError('node', ref);
    const r = await this.nodes.setCordoned(found.id, cordoned);
    if (!r) throw new NotFoundError('node', ref);
    const view = nodeView(r);
    await this.events.publish({ type: 'node.updated', resourceType: 'node', resourceId: r.id, projectId: null, data: view });
    return view;
  }
}
