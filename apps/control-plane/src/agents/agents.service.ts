import { Inject, Injectable, OnApplicationBootstrap, OnModuleDestroy } from '@nestjs/common';
import { INCOMING_MIGRATION_REASON, PartitionState, UUID_RE, uuidv7 } from '@hyperplane/domain';
import { agentV1 } from '@hyperplane/proto';
import { Logger } from 'pino';
import { Config, CONFIG } from '../config';
import { LOGGER } from '../common/tokens';
import { EventBus } from '../events/event-bus';
import { NodeRepository, NodeRow } from '../nodes/node.repository';
import { nodeView } from '../nodes/nodes.service';
import { PartitionRepository, PartitionRow } from '../partitions/partition.repository';
import { partitionEvent, partitionView } from '../partitions/partition-view';
import { NodeImageInventory, parseImageReports, usableByName } from '../images/node-image-inventory';
import { OperationRepository } from '../operations/operation.repository';
import { OperationsService } from '../operations/operations.service';
import { ChainRuntime } from '../service-chains/chain-runtime';
import { AgentSessions, AgentStreamWriter } from './agent-sessions';
import { ConsoleSessions } from './console-sessions';

/** How often this replica writes the heartbeats it received (one statement for all nodes). */
const HEARTBEAT_FLUSH_MS = 1000;

/** Heartbeat period asked of agents. */
export const HEARTBEAT_INTERVAL_MS = 3000;

/** Thrown to refuse an agent; the adapter sends `Rejected` and closes the stream. */
export class AgentRejectedError extends Error {}

/** The spec of a partition as its node receives it. */
export function specOf(r: PartitionRow): agentV1.PartitionSpec {
  return {
    id: r.id,
    name: r.name,
    projectId: r.project_id,
    vcpus: r.vcpus,
    memoryMib: Number(r.memory_mib),
    diskGib: r.disk_gib,
    image: r.image,
    desired: r.desired,
    generation: Number(r.generation),
    libraryImageId: r.image_id ?? '',
  };
}

/**
 * The control plane's side of the agent protocol: registration, heartbeats, and reconciling what
 * nodes report with what the database says should run. Agents report; the database decides.
 */
@Injectable()
export class AgentsService implements OnApplicationBootstrap, OnModuleDestroy {
  private staleTimer: NodeJS.Timeout | undefined;
  private beatTimer: NodeJS.Timeout | undefined;
  private readonly beats = new Set<string>();
  private retried = new Set<string>();

  constructor(
    private readonly nodes: NodeRepository,
    private readonly partitions: PartitionRepository,
    private readonly sessions: AgentSessions,
    private readonly consoles: ConsoleSessions,
    private readonly events: EventBus,
    private readonly ops: OperationRepository,
    private readonly operations: OperationsService,
    /** Adds each partition's service-chain disks to the spec its node gets. */
    private readonly chainDisks: ChainRuntime,
    @Inject(CONFIG) private readonly config: Config,
    @Inject(LOGGER) private readonly log: Logger,
    private readonly nodeImages: NodeImageInventory,
  ) {}

  onApplicationBootstrap(): void {
    this.sessions.setSpecPusher((nodeId, partitionId, known) => this.pushSpec(nodeId, partitionId, known));
    const every = Math.max(500, Math.floor(this.config.nodeHeartbeatTimeoutMs / 3));
    this.staleTimer = setInterval(() => void this.markStale(), every);
    this.staleTimer.unref();
    this.beatTimer = setInterval(() => void this.flushHeartbeats(), HEARTBEAT_FLUSH_MS);
    this.beatTimer.unref();
  }

  onModuleDestroy(): void {
    if (this.staleTimer) clearInterval(this.staleTimer);
    if (this.beatTimer) clearInterval(this.beatTimer);
  }

  /** Registers (or re-registers) a node and sends it the full desired state. Returns the node id. */
  async register(msg: agentV1.Register__Output, writer: AgentStreamWriter): Promise<string> {
    if (this.config.joinToken && msg.joinToken !== this.config.joinToken) throw new AgentRejectedError('join token is not valid');
    if (!msg.nodeName || !/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(msg.nodeName)) {
      throw new AgentRejectedError(`node name ${JSON.stringify(msg.nodeName)} must be a DNS label`);
    }
    const inv = msg.inventory;
    if (!inv) throw new AgentRejectedError('register without inventory');
    const byName = await this.nodes.findByName(msg.nodeName);
    let id = msg.nodeId || byName?.id || uuidv7();
    if (byName && byName.id !== id) {
      const fresh = byName.status === 'ready' && byName.last_heartbeat_at && Date.now() - byName.last_heartbeat_at.getTime() < this.config.nodeHeartbeatTimeoutMs;
      if (fresh) throw new AgentRejectedError(`node name ${msg.nodeName} is in use by another connected node`);
      id = byName.id;
    }
    const imageReports = parseImageReports(inv.images);
    const row = await this.nodes.upsertRegistration({
      id,
      name: msg.nodeName,
      address: msg.address ?? '',
      driver: inv.driver || 'qemu',
      accelerator: inv.accelerator ?? '',
      qemuVersion: inv.qemuVersion ?? '',
      cpuFlags: inv.cpuFlags ?? [],
      machineTypes: inv.machineTypes ?? [],
      labels: inv.labels ?? {},
      images: usableByName(imageReports),
      vcpus: inv.cpus ?? 0,
      memoryMiB: Number(inv.memoryMib),
      diskBytes: Number(inv.diskBytes),
      connectedTo: this.sessions.replicaId,
    });
    await this.nodeImages.recordRegistration(id, imageReports, inv.imageStoreDir ?? '');
    if (Boolean(inv.tls) !== row.tls) await this.nodes.setTls(id, Boolean(inv.tls));
    await this.sessions.attach(id, writer);
    writer.write({ registered: { nodeId: id, heartbeatIntervalMs: HEARTBEAT_INTERVAL_MS } });
    for (const s of msg.partitions ?? []) await this.onStatus(id, s);
    // A migrating partition the source no longer lists has moved away: never start it here again.
    const listed = new Set((msg.partitions ?? []).map((p) => p.id));
    const desired = (await this.partitions.forNode(id)).filter((p) => p.state !== 'migrating' || listed.has(p.id));
    writer.write({ desired: { partitions: await this.chainDisks.withDisks(desired.map(specOf), id) } });
    await this.publishNode(row);
    this.log.info({ nodeId: id, node: msg.nodeName, address: msg.address, running: msg.partitions?.length ?? 0 }, 'node registered');
    return id;
  }

  /** A heartbeat: the node is alive. Recorded with the others in one statement a second. */
  async onHeartbeat(nodeId: string): Promise<void> {
    this.beats.add(nodeId);
  }

  private async flushHeartbeats(): Promise<void> {
    if (this.beats.size === 0) return;
    const ids = [...this.beats];
    this.beats.clear();
    try {
      const { changed, missed } = await this.nodes.heartbeats(ids, this.sessions.replicaId);
      // A row a placement held is tried once more at the next flush (a node that does not exist
      // any more is not tried forever); its next heartbeat brings it back anyway.
      const retried = this.retried;
      this.retried = new Set(missed.filter((id) => !retried.has(id)));
      for (const id of this.retried) this.beats.add(id);
      for (const r of changed) await this.publishNode(r);
    } catch (err) {
      for (const id of ids) this.beats.add(id);
      this.log.warn({ err }, 'could not record heartbeats');
    }
  }

  /** A node reports a partition's real state; the record follows unless the control plane has decided otherwise. */
  async onStatus(nodeId: string, s: agentV1.PartitionStatus__Output): Promise<void> {
    if (!s.id || !UUID_RE.test(s.id)) return;
    const observed = s.state ?? '';
    const row = await this.partitions.getById(s.id);
    // The destination of a migration reports the partition it receives: that is the migration's
    // business (also once the record moved there, while the node resumes the guest). An incoming
    // partition of a migration that ended without this node is dropped below: nodes report one
    // again every minute (Reconciler.recheckIncoming), so it goes even if the abort never arrived.
    if (row && (row.target_node_id === nodeId || (row.node_id === nodeId && s.reason === INCOMING_MIGRATION_REASON))) return;
    if (!row || row.node_id !== nodeId) {
      // Unknown here (deleted while the node was away, or placed elsewhere): the node must drop it.
      if (observed !== 'absent') this.sessions.send(nodeId, { upsert: { id: s.id, desired: 'absent', generation: Number(s.generation) + 1 } });
      return;
    }
    const state = impliedState(row, observed);
    const updated = await this.partitions.observe(row.id, observed, Number(s.generation ?? 0), state, s.reason ?? '', nodeId);
    if (updated) void this.publishPartition(updated); // heard here at once; the node's next message does not wait for Redis
  }

  /** The node's image store changed (ImageInventory): its record and placement follow. */
  onImages(nodeId: string, m: agentV1.ImageInventory__Output): Promise<void> {
    return this.nodeImages.recordChange(nodeId, m.images);
  }

  /** True when a result may be handed over ahead of the node's earlier messages (AgentSessions.answersAtOnce). */
  answersAtOnce(r: agentV1.CommandResult__Output): boolean {
    return this.sessions.answersAtOnce(r.commandId ?? '');
  }

  /** A command's result, for whoever waits on it. */
  onResult(r: agentV1.CommandResult__Output): Promise<void> {
    return this.sessions.resolveResult(r);
  }

  /** Serial console bytes from a node, for an open session. */
  async onConsoleOutput(m: agentV1.ConsoleOutput__Output): Promise<void> {
    this.consoles.deliver(m);
  }

  /**
   * Guest events (QMP) from a node, passed on to the event stream: those of a partition the node
   * holds. Events that came together (a burst kept back during a migration) share one read of each partition.
   */
  async onGuestEvents(nodeId: string, events: agentV1.GuestEvent__Output[]): Promise<void> {
    const ids = [...new Set(events.map((e) => e.partitionId ?? '').filter((id) => UUID_RE.test(id)))];
    const rows = new Map(await Promise.all(ids.map(async (id) => [id, await this.partitions.getById(id)] as const)));
    // Published in the order they came (delivery keeps the order of the calls); the node's next
    // message does not wait for Redis.
    for (const e of events) {
      const row = rows.get(e.partitionId ?? '');
      if (!row || row.node_id !== nodeId) continue;
      let data: unknown = null;
      try {
        data = e.dataJson ? JSON.parse(e.dataJson) : null;
      } catch {
        data = e.dataJson;
      }
      void this.events.publish({ type: 'partition.guest-event', resourceType: 'partition', resourceId: row.id, projectId: row.project_id, data: { event: e.event, data, at: e.at } });
    }
  }

  /**
   * A source node's progress of a live migration: recorded on the operation (its id is the
   * migration id) and so shown on it and in the event stream, whichever replica runs the handler.
   */
  async onMigrationProgress(nodeId: string, m: agentV1.MigrationProgress__Output): Promise<void> {
    if (!m.migrationId || !UUID_RE.test(m.migrationId)) return;
    const phase = m.phase ?? '';
    const total = Number(m.bytesTotal ?? 0);
    const transferred = Number(m.bytesTransferred ?? 0);
    const remaining = Number(m.bytesRemaining ?? 0);
    const share = phase === 'storage' ? (total > 0 ? transferred / total : 0) : transferred + remaining > 0 ? transferred / (transferred + remaining) : 0;
    const progress = phase === 'storage' ? 10 + 30 * share : phase === 'memory' ? 40 + 50 * share : phase === 'postcopy' || phase === 'switchover' ? 90 : undefined;
    const label: Record<string, string> = { storage: 'copying the disk', memory: 'copying memory', postcopy: 'post-copy', switchover: 'switching over' };
    if (!label[phase]) return; // completed, failed, cancelled: the handler records the end
    const r = await this.ops.mergeMetadata(
      m.migrationId,
      {
        migration: {
          phase,
          bytesRemaining: remaining,
          bytesTransferred: transferred,
          bytesTotal: total,
          dirtyRateBytesPerSec: Number(m.dirtyRateBytesPerSec ?? 0),
          expectedDowntimeMs: Number(m.expectedDowntimeMs ?? 0),
          cpuThrottlePercent: Number(m.cpuThrottlePercent ?? 0),
        },
      },
      label[phase],
      progress,
    );
    if (r) void this.operations.publish(r); // the node's next message does not wait for Redis
    else this.log.debug({ nodeId, migrationId: m.migrationId }, 'progress of a migration that is not running');
  }

  /** The stream closed: the node is unreachable until it reconnects. Its guests keep running. */
  async disconnected(nodeId: string, writer: AgentStreamWriter): Promise<void> {
    await this.sessions.detach(nodeId, writer);
    const r = await this.nodes.markDisconnected(nodeId, this.sessions.replicaId);
    if (r) {
      await this.publishNode(r);
      this.log.warn({ nodeId, node: r.name }, 'node disconnected');
    }
  }

  /** Sends one partition's current spec down a local stream; `known`: its row as the caller just read or wrote it (else read here). */
  async pushSpec(nodeId: string, partitionId: string, known?: PartitionRow): Promise<void> {
    const row = known ?? (await this.partitions.getById(partitionId));
    if (!row || row.node_id !== nodeId) {
      this.sessions.send(nodeId, { upsert: { id: partitionId, desired: 'absent', generation: Date.now() } });
      return;
    }
    this.sessions.send(nodeId, { upsert: (await this.chainDisks.withDisks([specOf(row)], nodeId))[0]! });
  }

  private async markStale(): Promise<void> {
    try {
      for (const r of await this.nodes.markStale(this.config.nodeHeartbeatTimeoutMs)) {
        this.log.warn({ nodeId: r.id, node: r.name }, 'node missed its heartbeats: unreachable');
        await this.publishNode(r);
      }
    } catch (err) {
      this.log.warn({ err }, 'stale-node sweep failed');
    }
  }

  private async publishNode(r: NodeRow): Promise<void> {
    await this.events.publish({ type: 'node.updated', resourceType: 'node', resourceId: r.id, projectId: null, data: nodeView(r) });
  }

  private async publishPartition(r: PartitionRow): Promise<void> {
    await this.events.publish(partitionEvent('partition.updated', partitionView(r)), r);
  }
}

/**
 * The partition state a node's report implies, or null to leave the state alone. A partition
 * being deleted stays `deleting` and a migrating one `migrating`; a stop in progress stays
 * `stopping` while the guest still runs.
 */
export function impliedState(row: Pick<PartitionRow, 'state' | 'desired'>, observed: string): PartitionState | null {
  // A migration decides the state of a migrating partition; its reports are only recorded.
  if (row.state === 'deleting' || row.state === 'migrating') return null;
  switch (observed) {
    case 'starting':
      return row.desired === 'running' ? 'starting' : null;
    case 'running':
      return row.desired === 'stopped' ? 'stopping' : 'running';
    case 'stopping':
      return 'stopping';
    case 'stopped':
      return row.desired === 'running' && (row.state === 'scheduled' || row.state === 'starting') ? null : 'stopped';
    case 'failed':
      return 'failed';
    case 'absent':
      return row.desired === 'running' && (row.state === 'running' || row.state === 'stopping') ? 'failed' : null;
    default:
      return null;
  }
}
