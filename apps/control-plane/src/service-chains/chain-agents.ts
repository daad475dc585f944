import { Inject, Injectable, OnApplicationBootstrap, OnModuleDestroy } from '@nestjs/common';
import { UUID_RE, uuidv7 } from '@hyperplane/domain';
import { agentV1 } from '@hyperplane/proto';
import { Logger } from 'pino';
import { DataSource } from 'typeorm';
import { AgentSessions } from '../agents/agent-sessions';
import { DATA_SOURCE, LOGGER } from '../common/tokens';
import { Config, CONFIG, runsOperations } from '../config';
import { inTransaction, lockForTransaction } from '../database/database';
import { EventBus } from '../events/event-bus';
import type { NodeView } from '../nodes/nodes.service';
import { OperationQueueRepository } from '../operations/operation-queue.repository';
import { OperationRepository } from '../operations/operation.repository';
import { OperationsService, operationView } from '../operations/operations.service';
import type { ReplicaState } from './chain-rules';
import { ChainRuntime, liveOf } from './chain-runtime';
import { ServiceChainRepository } from './service-chain.repository';

/** How often every chain's health is looked at (repairs a lost event would have started). */
const SWEEP_MS = 3_000;
/** After a failed repair, the next one waits this long (no operation storm while no node fits). */
const REPAIR_BACKOFF_MS = 30_000;

/** The replica state a provider's reported state implies. */
export function impliedReplicaState(current: ReplicaState, reported: string): ReplicaState | null {
  if (current === 'failed' || current === 'removing') return null; // a failed replica is never healthy again
  switch (reported) {
    case 'starting':
      return 'starting';
    case 'syncing':
      return 'syncing';
    case 'running':
      return 'healthy';
    case 'failed':
      return 'failed';
    default:
      return null;
  }
}

/**
 * The control plane's side of service-chain providers: what nodes report about them (statuses,
 * replicas their consumers dropped), their full desired set after a node registers, and the
 * health watch: a chain with a failed or missing replica gets a repair operation (one at a time
 * per chain, whichever control-plane replica sees it first).
 */
@Injectable()
export class ChainAgents implements OnApplicationBootstrap, OnModuleDestroy {
  private timer: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;
  private readonly pending = new Set<string>();

  constructor(
    private readonly repo: ServiceChainRepository,
    private readonly runtime: ChainRuntime,
    private readonly sessions: AgentSessions,
    private readonly events: EventBus,
    private readonly ops: OperationRepository,
    private readonly queue: OperationQueueRepository,
    private readonly operations: OperationsService,
    @Inject(DATA_SOURCE) private readonly ds: DataSource,
    @Inject(CONFIG) private readonly config: Config,
    @Inject(LOGGER) private readonly log: Logger,
  ) {}

  onApplicationBootstrap(): void {
    if (process.env.HYPERPLANE_NO_OPERATION_WORKER === '1' || !runsOperations(this.config.role)) return;
    this.unsubscribe = this.events.subscribe((e) => {
      if (e.type === 'node.updated' && (e.data as NodeView).state === 'unreachable') void this.onNodeUnreachable(e.resourceId);
    });
    this.timer = setInterval(() => void this.sweep(), SWEEP_MS);
    this.timer.unref();
  }

  onModuleDestroy(): void {
    clearInterval(this.timer);
    this.unsubscribe?.();
  }

  /** After a node registered: records what it runs, then sends it the full set of providers it should run. */
  async onRegister(nodeId: string, msg: agentV1.Register__Output): Promise<void> {
    for (const s of msg.providers ?? []) await this.onProviderStatus(nodeId, s);
    this.sessions.send(nodeId, { providersDesired: { providers: await this.runtime.desiredFor(nodeId) } });
  }

  /** A node reports a provider: the replica's record follows, unless the control plane has decided otherwise. */
  async onProviderStatus(nodeId: string, s: agentV1.ProviderStatus__Output): Promise<void> {
    if (!s.id || !UUID_RE.test(s.id)) return;
    const reported = s.state ?? '';
    const row = await this.repo.replica(s.id);
    if (!row || row.node_id !== nodeId) {
      if (reported !== 'absent') this.sessions.send(nodeId, { providerUpsert: { id: s.id, desired: 'absent', generation: Number(s.generation ?? 0) + 1 } });
      return;
    }
    if (reported === 'absent') {
      if (row.desired === 'absent') {
        await this.repo.deleteReplica(row.id);
        await this.runtime.refresh(row.chain_id);
        return;
      }
      if (row.state === 'pending') return; // not started yet: the node has not seen it
    }
    const state = reported === 'absent' ? impliedReplicaState(row.state, 'failed') : impliedReplicaState(row.state, reported);
    const reason = reported === 'absent' ? 'the node does not have it' : state === 'healthy' || state === 'starting' ? '' : s.reason ?? '';
    const updated = await this.repo.observe(row.id, {
      observedState: reported,
      observedGeneration: Number(s.generation ?? 0),
      state,
      reason,
      unixPath: s.unixPath ?? '',
      tcpHost: s.tcpHost ?? '',
      tcpPort: Number(s.tcpPort ?? 0),
      tls: Boolean(s.tls),
      tlsHostname: s.tlsHostname ?? '',
      sizeBytes: Number(s.sizeBytes ?? 0),
      syncPercent: Number(s.syncPercent ?? 0),
    });
    if (!updated) return;
    if (updated.state !== row.state) this.log.info({ chain: row.chain_id, link: row.link_name, replica: row.id, from: row.state, state: updated.state, reason: updated.state_reason || undefined }, 'replica state');
    await this.runtime.refresh(row.chain_id);
    if (updated.state === 'failed' && row.state !== 'failed') this.trigger(row.chain_id);
  }

  /** A consumer dropped a replica after an I/O error: it is failed from now on, and gets replaced. */
  async onReplicaLost(nodeId: string, l: agentV1.ReplicaLost__Output): Promise<void> {
    if (!l.replicaId || !UUID_RE.test(l.replicaId)) return;
    const r = await this.repo.fail(l.replicaId, `dropped by ${l.consumer ?? 'a consumer'} on node ${nodeId}: ${l.reason ?? ''}`);
    if (!r) return;
    this.log.warn({ chain: r.chain_id, link: r.link_name, replica: r.id, consumer: l.consumer, reason: l.reason }, 'a consumer dropped a replica');
    await this.runtime.refresh(r.chain_id);
    this.trigger(r.chain_id);
  }

  /** Replicas on a node that stopped answering are failed (consumers may still reach them, but nobody can manage them). */
  private async onNodeUnreachable(nodeId: string): Promise<void> {
    try {
      const failed = await this.repo.failOnNode(nodeId, 'its node is unreachable');
      for (const chainId of new Set(failed.map((r) => r.chain_id))) {
        await this.runtime.refresh(chainId);
        this.trigger(chainId);
      }
    } catch (err) {
      this.log.warn({ err, nodeId }, 'could not fail the replicas of an unreachable node');
    }
  }

  /** Looks at a chain soon (coalesced). */
  trigger(chainId: string): void {
    if (this.pending.has(chainId)) return;
    this.pending.add(chainId);
    setImmediate(() => {
      this.pending.delete(chainId);
      void this.maybeRepair(chainId).catch((err: unknown) => this.log.warn({ err, chain: chainId }, 'chain health check failed'));
    });
  }

  /** Every chain, now and then. */
  async sweep(): Promise<void> {
    try {
      for (const { id } of await this.repo.allIds()) await this.maybeRepair(id);
    } catch (err) {
      this.log.warn({ err }, 'chain health sweep failed');
    }
  }

  /**
   * Starts a repair when a ready link of the chain has a failed replica, fewer live replicas than
   * it should, or a replica left half-added (an operation that failed before its consumers used it).
   */
  async maybeRepair(chainId: string): Promise<void> {
    const s = await this.runtime.load(chainId);
    if (!s || s.chain.state === 'creating' || s.chain.state === 'deleting') return;
    const needs = s.links.some((l) => l.state === 'ready' && (liveOf(s, l.name).length < l.replicas || s.replicas.some((r) => r.link_name === l.name && r.desired === 'running' && (r.state === 'failed' || (!r.joined && r.state !== 'removing')))));
    if (!needs) return;
    const failedAt = await this.repo.lastFailure(chainId, 'service-chain.repair');
    if (failedAt && Date.now() - failedAt.getTime() < REPAIR_BACKOFF_MS) return;
    const op = await inTransaction(this.ds, async (tx) => {
      await lockForTransaction(tx, `service-chain:${chainId}`);
      if (await this.ops.liveForTarget(tx, chainId)) return undefined;
      return this.ops.insert(tx, { id: uuidv7(), projectId: s.chain.project_id, kind: 'service-chain.repair', targetType: 'service-chain', targetId: chainId, params: {} });
    });
    if (!op) return;
    this.log.info({ chain: chainId, operationId: op.id }, 'chain repair started');
    await this.queue.enqueue(op.id, op.kind).catch(() => undefined);
    await this.operations.publishView(operationView(op));
  }
}
