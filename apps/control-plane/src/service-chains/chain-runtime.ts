import { Inject, Injectable, OnApplicationBootstrap } from '@nestjs/common';
import { agentV1 } from '@hyperplane/proto';
import { Logger } from 'pino';
import { DataSource } from 'typeorm';
import { AgentSessions } from '../agents/agent-sessions';
import { DATA_SOURCE, LOGGER } from '../common/tokens';
import { Config, CONFIG } from '../config';
import { EventBus } from '../events/event-bus';
import { NodeCache } from '../nodes/node-cache';
import type { NodeRow } from '../nodes/node.repository';
import { OperationContext } from '../operations/operation-runner';
import { waitFor } from '../operations/wait-for';
import { PartitionRepository, PartitionRow } from '../partitions/partition.repository';
import { ChainKeys } from './chain-keys';
import { chainHealth, STATEFUL_KINDS } from './chain-rules';
import { chainEvent, chainView } from './chain-view';
import { AttachmentRow, ChainRow, LinkRow, ReplicaRow, ServiceChainRepository } from './service-chain.repository';

/** How often a waiting handler re-reads, in case an event was missed. */
const POLL_MS = 500;
/** Time a node has to act on a disk command. */
const DISK_COMMAND_MS = 60_000;
/** Time a provider has to confirm it uses a changed set of replicas below it. */
const CONSUMER_UPDATE_MS = 30_000;

/** Everything about one chain, read together. */
export interface ChainState {
  chain: ChainRow;
  /** Base first. */
  links: LinkRow[];
  /** Oldest first. */
  replicas: ReplicaRow[];
  attachments: AttachmentRow[];
}

/** Replicas that serve: healthy and meant to run, oldest first (the order consumers read them in). */
export function healthyOf(s: ChainState, link: string): ReplicaRow[] {
  return s.replicas.filter((r) => r.link_name === link && r.state === 'healthy' && r.desired === 'running');
}

/** Replicas that count towards a link's number: alive or on their way (not failed, not being removed). */
export function liveOf(s: ChainState, link: string): ReplicaRow[] {
  return s.replicas.filter((r) => r.link_name === link && r.desired === 'running' && r.state !== 'failed' && r.state !== 'removing');
}

/** The link right below `link`, if any. */
export function linkBelow(s: ChainState, link: string): LinkRow | undefined {
  const l = s.links.find((x) => x.name === link);
  return l ? s.links.find((x) => x.position === l.position - 1) : undefined;
}

/** The link right above `link`, if any. */
export function linkAbove(s: ChainState, link: string): LinkRow | undefined {
  const l = s.links.find((x) => x.name === link);
  return l ? s.links.find((x) => x.position === l.position + 1) : undefined;
}

/**
 * The machinery shared by every chain operation: the provider specs nodes get (with the upstream
 * replicas each one reads, relative to its node), pushing them, waiting for what nodes report,
 * TCP exposure of replicas with consumers on other nodes, and telling consumers (providers above,
 * partitions attached) which replicas to use. Specs are computed from the database each time
 * they are sent, so every push converges on the current truth.
 */
@Injectable()
export class ChainRuntime implements OnApplicationBootstrap {
  constructor(
    private readonly repo: ServiceChainRepository,
    private readonly partitions: PartitionRepository,
    private readonly nodes: NodeCache,
    private readonly sessions: AgentSessions,
    private readonly events: EventBus,
    private readonly keys: ChainKeys,
    @Inject(DATA_SOURCE) private readonly ds: DataSource,
    @Inject(CONFIG) private readonly config: Config,
    @Inject(LOGGER) private readonly log: Logger,
  ) {}

  onApplicationBootstrap(): void {
    this.sessions.setProviderPusher((nodeId, replicaId) => this.pushProvider(nodeId, replicaId));
  }

  /** Reads a chain with its links, replicas and attachments. */
  async load(chainId: string): Promise<ChainState | undefined> {
    const chain = await this.repo.getById(chainId);
    if (!chain) return undefined;
    const [links, replicas, attachments] = await Promise.all([this.repo.links(chainId), this.repo.replicas(chainId), this.repo.attachmentsToChain(chainId)]);
    return { chain, links, replicas, attachments };
  }

  /** The nodes snapshot by id. */
  async nodeMap(fresh = false): Promise<Map<string, NodeRow>> {
    return new Map((await this.nodes.all(this.ds.manager, fresh)).map((n) => [n.id, n]));
  }

  /** How a consumer on `consumerNode` reaches replica `r`, or undefined when it cannot (yet). */
  endpointFor(r: ReplicaRow, consumerNode: string): agentV1.ProviderEndpoint | undefined {
    if (r.node_id === consumerNode) return r.unix_path ? { replicaId: r.id, unixPath: r.unix_path } : undefined;
    if (!r.tcp_port) return undefined;
    return { replicaId: r.id, host: r.tcp_host, port: r.tcp_port, tls: r.tls, tlsHostname: r.tls_hostname };
  }

  /** Endpoints of a link's healthy replicas for a consumer on `node`, oldest first. */
  endpointsOf(s: ChainState, link: string, node: string): agentV1.ProviderEndpoint[] {
    return healthyOf(s, link)
      .map((r) => this.endpointFor(r, node))
      .filter((e): e is agentV1.ProviderEndpoint => e !== undefined);
  }

  /** The spec a node gets for replica `r`. The key travels only until the replica has started. */
  async specFor(s: ChainState, r: ReplicaRow): Promise<agentV1.ProviderSpec> {
    const link = s.links.find((l) => l.name === r.link_name)!;
    const below = linkBelow(s, link.name);
    const source = r.sync_from ? s.replicas.find((x) => x.id === r.sync_from) : undefined;
    const starting = r.state === 'pending' || r.state === 'starting';
    const key = link.kind === 'encrypt' && link.key_sealed && starting && r.desired === 'running' ? await this.keys.unseal(link.key_sealed, keyAad(s.chain.id, link.name)) : undefined;
    return {
      id: r.id,
      chainId: s.chain.id,
      link: link.name,
      kind: link.kind,
      desired: r.desired,
      generation: Number(r.generation),
      sizeBytes: Number(link.size_bytes),
      image: link.image,
      upstream: below ? this.endpointsOf(s, below.name, r.node_id) : [],
      throttle: link.throttle,
      ...(key ? { key } : {}),
      format: r.format,
      ...(source && STATEFUL_KINDS.includes(link.kind) && r.state !== 'healthy' ? { syncFrom: this.endpointFor(source, r.node_id) } : {}),
      exposeTcp: r.expose_tcp,
    };
  }

  /** Sends a provider's current spec down a local stream (AgentSessions routes to here). */
  async pushProvider(nodeId: string, replicaId: string): Promise<void> {
    const r = await this.repo.replica(replicaId);
    if (!r || r.node_id !== nodeId) {
      this.sessions.send(nodeId, { providerUpsert: { id: replicaId, desired: 'absent', generation: Date.now() } });
      return;
    }
    const s = await this.load(r.chain_id);
    if (!s) return;
    this.sessions.send(nodeId, { providerUpsert: await this.specFor(s, r) });
  }

  /** The full set of providers a node should run (sent after it registers). */
  async desiredFor(nodeId: string): Promise<agentV1.ProviderSpec[]> {
    const mine = (await this.repo.replicasForNode(nodeId)).filter((r) => r.desired === 'running');
    const out: agentV1.ProviderSpec[] = [];
    const states = new Map<string, ChainState | undefined>();
    for (const r of mine) {
      if (!states.has(r.chain_id)) states.set(r.chain_id, await this.load(r.chain_id));
      const s = states.get(r.chain_id);
      const fresh = s?.replicas.find((x) => x.id === r.id);
      if (s && fresh) out.push(await this.specFor(s, fresh));
    }
    return out;
  }

  /** Sends a replica's spec to its node; false when no control-plane replica holds the node's stream. */
  async push(r: ReplicaRow): Promise<boolean> {
    return this.sessions.syncProvider(r.node_id, r.id);
  }

  /**
   * The disk a partition on `node` gets for attachment `a`: the healthy replicas of the attached
   * link it can reach. Undefined when it can reach none.
   */
  diskFor(s: ChainState, a: AttachmentRow, node: string): agentV1.ChainDisk | undefined {
    const replicas = this.endpointsOf(s, a.link_name, node);
    if (replicas.length === 0) return undefined;
    return { attachmentId: a.id, index: a.device_index, readOnly: a.read_only, replicas };
  }

  /** Adds the chain disks of each partition to its spec (the agent gets them with every spec). */
  async withDisks(specs: agentV1.PartitionSpec[], nodeId: string): Promise<agentV1.PartitionSpec[]> {
    const ids = specs.map((p) => p.id!).filter(Boolean);
    if (ids.length === 0) return specs;
    const attachments = await this.repo.attachmentsOfPartitions(ids);
    if (attachments.length === 0) return specs;
    const states = new Map<string, ChainState | undefined>();
    for (const a of attachments) if (!states.has(a.chain_id)) states.set(a.chain_id, await this.load(a.chain_id));
    return specs.map((p) => {
      const disks = attachments
        .filter((a) => a.partition_id === p.id && a.state !== 'detaching')
        .map((a) => {
          const s = states.get(a.chain_id);
          const disk = s ? this.diskFor(s, a, nodeId) : undefined;
          if (!disk) this.log.warn({ partition: p.id, attachment: a.id }, 'no reachable replica for a chain disk: the guest starts without it');
          return disk;
        })
        .filter((d): d is agentV1.ChainDisk => d !== undefined);
      return disks.length ? { ...p, disks } : p;
    });
  }

  /** Nodes that consume replica `r`: replicas of the link above, partitions attached to its link, replicas copying from it. */
  async consumerNodes(s: ChainState, r: ReplicaRow): Promise<Set<string>> {
    const out = new Set<string>();
    const above = linkAbove(s, r.link_name);
    if (above) for (const x of liveOf(s, above.name)) out.add(x.node_id);
    for (const x of s.replicas) if (x.sync_from === r.id && x.state !== 'healthy' && x.desired === 'running') out.add(x.node_id);
    for (const a of s.attachments) {
      if (a.link_name !== r.link_name) continue;
      const p = await this.partitions.getById(a.partition_id);
      if (p?.node_id) out.add(p.node_id);
    }
    return out;
  }

  /**
   * Every live replica with a consumer on another node gets its TCP export (asked once, kept),
   * and this waits until those replicas report their port.
   */
  async ensureExposed(chainId: string, ctx: OperationContext): Promise<void> {
    const s = await this.load(chainId);
    if (!s) return;
    const waitFor: string[] = [];
    for (const r of s.replicas) {
      if (r.desired !== 'running' || r.state === 'failed' || r.state === 'removing') continue;
      const remote = [...(await this.consumerNodes(s, r))].some((n) => n !== r.node_id);
      if (!remote) continue;
      if (!r.expose_tcp) {
        const updated = await this.repo.updateReplica(r.id, { exposeTcp: true });
        if (updated) await this.push(updated);
      }
      if (r.state !== 'pending') waitFor.push(r.id);
    }
    if (waitFor.length) {
      await this.waitReplicas(chainId, ctx, (rs) => waitFor.every((id) => {
        const r = rs.find((x) => x.id === id);
        if (!r || r.state === 'failed' || r.state === 'removing') return true; // gone: its consumers will not get it
        return r.tcp_port > 0;
      }), 'replicas to listen on TCP');
    }
  }

  /**
   * Tells every consumer of `link` to use exactly its healthy replicas: the link above's providers
   * get their spec again (its upstream is recomputed), running partitions attached at the link
   * get a disk_attach with the replicas. Failures to reach a consumer are logged, not thrown: the
   * next change or the node's next registration brings it up to date.
   */
  async updateConsumers(chainId: string, link: string): Promise<void> {
    const s = await this.load(chainId);
    if (!s) return;
    const above = linkAbove(s, link);
    const told = new Map<string, number>();
    if (above) {
      for (const r of liveOf(s, above.name)) {
        const bumped = await this.repo.bump(r.id);
        if (bumped && (await this.push(bumped))) told.set(r.id, Number(bumped.generation));
        else this.log.warn({ replica: r.id }, 'provider not reachable to update its upstream; its node gets it when it registers again');
      }
    }
    if (told.size) {
      // Done only once each provider acted on its new spec (it reports the generation it applied).
      const never = new AbortController();
      await this.waitReplicas(chainId, { signal: never.signal, progress: async () => undefined, succeedWith: () => undefined }, (rs) => [...told].every(([id, gen]) => {
        const r = rs.find((x) => x.id === id);
        return !r || r.state === 'failed' || r.state === 'removing' || Number(r.observed_generation) >= gen;
      }), 'providers to use the new replicas', CONSUMER_UPDATE_MS).catch((err: unknown) => this.log.warn({ err, chain: chainId }, 'a provider did not confirm its new upstream replicas'));
    }
    for (const a of s.attachments) {
      if (a.link_name !== link || a.state !== 'attached') continue;
      const p = await this.partitions.getById(a.partition_id);
      if (!p?.node_id || p.observed_state !== 'running') continue;
      const disk = this.diskFor(s, a, p.node_id);
      if (!disk) continue;
      try {
        const res = await this.sessions.command(p.node_id, { diskAttach: { partitionId: p.id, disk } }, DISK_COMMAND_MS);
        if (!res.ok) this.log.warn({ attachment: a.id, error: res.errorMessage }, 'could not update the replicas of a chain disk');
      } catch (err) {
        this.log.warn({ attachment: a.id, err }, 'could not update the replicas of a chain disk');
      }
    }
  }

  /** Waits until `done(replicas of the chain)` holds (or throws), the operation is cancelled, or the timeout passes. */
  waitReplicas(chainId: string, ctx: OperationContext, done: (rs: ReplicaRow[]) => boolean, what: string, timeoutMs = this.config.operationTimeoutMs): Promise<void> {
    return waitFor(this.events, ctx, async () => done(await this.repo.replicas(chainId)), {
      resourceId: chainId,
      resourceType: 'service-chain',
      pollMs: POLL_MS,
      timeoutMs,
      timeoutMessage: `timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${what}`,
    });
  }

  /** Recomputes the chain's health, stores it (unless it is being created or deleted) and tells the event stream. */
  async refresh(chainId: string, type = 'service-chain.updated'): Promise<void> {
    const s = await this.load(chainId);
    if (!s) return;
    if (s.chain.state !== 'creating' && s.chain.state !== 'deleting') {
      const h = chainHealth(s.links, s.replicas.map((r) => ({ linkName: r.link_name, state: r.joined ? r.state : 'syncing' })));
      s.chain = (await this.repo.setState(chainId, h.state, h.reason)) ?? s.chain;
    }
    await this.events.publish(chainEvent(type, chainView(s.chain, s.links, s.replicas)));
  }

  /** The partition row of an attachment. */
  partitionOf(a: AttachmentRow): Promise<PartitionRow | undefined> {
    return this.partitions.getById(a.partition_id);
  }
}

/** The associated data that binds a sealed key to its chain and link. */
export function keyAad(chainId: string, link: string): string {
  return `service-chain:${chainId}:${link}`;
}
