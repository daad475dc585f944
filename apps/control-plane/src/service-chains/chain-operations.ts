import { Inject, Injectable, OnModuleInit } from '@nestjs/common';
import { CancelledError, DeadlineExceededError, FailedPreconditionError, UnavailableError, uuidv7 } from '@hyperplane/domain';
import { Logger } from 'pino';
import { DataSource } from 'typeorm';
import { agentFailure } from '../agents/agent-errors';
import { AgentSessions } from '../agents/agent-sessions';
import { DATA_SOURCE, LOGGER } from '../common/tokens';
import { EventBus } from '../events/event-bus';
import { OperationContext, OperationRunner } from '../operations/operation-runner';
import { OperationRow } from '../operations/operation.repository';
import { ChainPlacement } from './chain-placement';
import { STATEFUL_KINDS } from './chain-rules';
import { ChainRuntime, ChainState, healthyOf, liveOf } from './chain-runtime';
import { attachmentEvent, attachmentView, chainEvent, chainView } from './chain-view';
import { ReplicaRow, ServiceChainRepository } from './service-chain.repository';

/** How long a removal waits for nodes to confirm a provider is gone before forgetting it anyway. */
const REMOVE_WAIT_MS = 30_000;
/** Time a node has to hot-plug or unplug a disk. */
const DISK_COMMAND_MS = 60_000;

/**
 * The handlers behind service-chain operations. Each is idempotent: after a control-plane crash
 * it runs again and carries on from wherever the chain is (links already up are skipped, replicas
 * already healthy are not started again). Nodes are told through provider specs (desired state);
 * handlers wait for what nodes report. Links come up base first, each one only once the link
 * below serves, and go away head first.
 */
@Injectable()
export class ChainOperations implements OnModuleInit {
  constructor(
    private readonly runner: OperationRunner,
    private readonly repo: ServiceChainRepository,
    private readonly runtime: ChainRuntime,
    private readonly placement: ChainPlacement,
    private readonly sessions: AgentSessions,
    private readonly events: EventBus,
    @Inject(DATA_SOURCE) private readonly ds: DataSource,
    @Inject(LOGGER) private readonly log: Logger,
  ) {}

  onModuleInit(): void {
    this.runner.register('service-chain.create', (op, ctx) => this.handleCreate(op, ctx));
    this.runner.register('service-chain.delete', (op, ctx) => this.handleDelete(op, ctx));
    this.runner.register('service-chain.add-link', (op, ctx) => this.handleAddLink(op, ctx));
    this.runner.register('service-chain.remove-link', (op, ctx) => this.handleRemoveLink(op, ctx));
    this.runner.register('service-chain.add-replica', (op, ctx) => this.handleAddReplica(op, ctx));
    this.runner.register('service-chain.remove-replica', (op, ctx) => this.handleRemoveReplica(op, ctx));
    this.runner.register('service-chain.repair', (op, ctx) => this.handleRepair(op, ctx));
    this.runner.register('partition.attach', (op, ctx) => this.handleAttach(op, ctx));
    this.runner.register('partition.detach', (op, ctx) => this.handleDetach(op, ctx));
  }

  /** create: every link up, base first; the chain is ready when the head serves. */
  async handleCreate(op: OperationRow, ctx: OperationContext): Promise<void> {
    const s = await this.mustLoad(op.target_id);
    try {
      for (const [i, link] of s.links.entries()) {
        await ctx.progress(`starting link ${link.name}`, Math.round((90 * i) / s.links.length));
        if (link.state !== 'ready') await this.bringUp(s.chain.id, link.name, ctx);
      }
    } catch (e) {
      await this.repo.setState(s.chain.id, 'failed', e instanceof CancelledError ? 'creation cancelled' : (e as Error).message);
      await this.runtime.refresh(s.chain.id);
      throw e;
    }
    await this.repo.setState(s.chain.id, 'ready', '');
    await this.runtime.refresh(s.chain.id);
    await ctx.progress('ready', 100);
  }

  /** add-link: the new head comes up over the current one. */
  async handleAddLink(op: OperationRow, ctx: OperationContext): Promise<void> {
    const s = await this.mustLoad(op.target_id);
    const name = String(op.params.link ?? '');
    const link = s.links.find((l) => l.name === name);
    if (!link) throw new CancelledError(`link ${name} is gone`);
    await ctx.progress(`starting link ${name}`, 20);
    if (link.state !== 'ready') {
      try {
        await this.bringUp(s.chain.id, name, ctx);
      } catch (e) {
        await this.runtime.refresh(s.chain.id);
        throw e;
      }
    }
    await this.runtime.refresh(s.chain.id);
  }

  /** remove-link: the head's replicas stop, then the link goes. */
  async handleRemoveLink(op: OperationRow, ctx: OperationContext): Promise<void> {
    const s = await this.mustLoad(op.target_id);
    const name = String(op.params.link ?? '');
    await ctx.progress(`stopping link ${name}`, 20);
    await this.removeReplicas(s.chain.id, s.replicas.filter((r) => r.link_name === name).map((r) => r.id), ctx);
    await this.repo.deleteLink(this.ds.manager, s.chain.id, name);
    await this.repo.touch(s.chain.id);
    await this.runtime.refresh(s.chain.id);
  }

  /** delete: every replica stops, head first, then the chain's records go. */
  async handleDelete(op: OperationRow, ctx: OperationContext): Promise<void> {
    const s = await this.runtime.load(op.target_id);
    if (!s) return; // gone already: a re-run after a crash
    const links = [...s.links].sort((a, b) => b.position - a.position);
    for (const [i, link] of links.entries()) {
      await ctx.progress(`stopping link ${link.name}`, Math.round((90 * i) / links.length));
      await this.removeReplicas(s.chain.id, s.replicas.filter((r) => r.link_name === link.name).map((r) => r.id), ctx);
    }
    const gone = await this.repo.deleteChain(this.ds.manager, s.chain.id);
    if (gone) await this.events.publish(chainEvent('service-chain.deleted', chainView({ ...gone, state: 'deleting' }, [], [])));
  }

  /** add-replica: the new replica (copied from a healthy one for links holding data) comes up, then consumers use it. */
  async handleAddReplica(op: OperationRow, ctx: OperationContext): Promise<void> {
    const s = await this.mustLoad(op.target_id);
    const r = s.replicas.find((x) => x.id === op.params.replicaId);
    if (!r) throw new CancelledError(`replica ${String(op.params.replicaId)} is gone`);
    await ctx.progress('starting the replica', 20);
    await this.startReplicas(s.chain.id, [r.id], ctx);
    await ctx.progress('adding it to its consumers', 80);
    await this.runtime.updateConsumers(s.chain.id, r.link_name);
    await this.repo.join([r.id]);
    await this.runtime.refresh(s.chain.id);
  }

  /** remove-replica: consumers stop using it first, then it stops. */
  async handleRemoveReplica(op: OperationRow, ctx: OperationContext): Promise<void> {
    const s = await this.mustLoad(op.target_id);
    const r = s.replicas.find((x) => x.id === op.params.replicaId);
    if (!r) return;
    await ctx.progress('removing it from its consumers', 30);
    await this.runtime.updateConsumers(s.chain.id, r.link_name);
    await this.removeReplicas(s.chain.id, [r.id], ctx);
    await this.runtime.refresh(s.chain.id);
  }

  /**
   * repair, link by link from the base: failed replicas are dropped by their consumers and told
   * to stop; each link gets back to its number of replicas with new ones on other nodes — copied
   * from a healthy replica for links that hold data, and counted healthy only once the copy is
   * complete — and consumers then use them.
   */
  async handleRepair(op: OperationRow, ctx: OperationContext): Promise<void> {
    let s = await this.mustLoad(op.target_id);
    if (s.chain.state === 'deleting' || s.chain.state === 'creating') return;
    for (const link of s.links) {
      if (link.state !== 'ready') continue;
      s = (await this.runtime.load(s.chain.id))!;
      const failed = s.replicas.filter((r) => r.link_name === link.name && r.state === 'failed' && r.desired === 'running');
      if (failed.length) {
        await ctx.progress(`dropping ${failed.length} failed replica(s) of link ${link.name}`, 10);
        for (const f of failed) await this.repo.updateReplica(f.id, { desired: 'absent', state: 'removing', reason: f.state_reason });
        await this.runtime.updateConsumers(s.chain.id, link.name);
        for (const f of failed) {
          const gone = await this.repo.replica(f.id);
          if (gone && !(await this.runtime.push(gone))) await this.repo.deleteReplica(f.id); // its node drops it when it registers
        }
        s = (await this.runtime.load(s.chain.id))!;
      }
      const live = liveOf(s, link.name);
      const missing = link.replicas - live.length;
      const healthy = healthyOf(s, link.name);
      const stateful = STATEFUL_KINDS.includes(link.kind);
      if (missing > 0) {
        if (stateful && healthy.length === 0) {
          throw new FailedPreconditionError(`link ${link.name} has no healthy replica left to copy its data from: the chain cannot be repaired`);
        }
        await ctx.progress(`placing ${missing} new replica(s) of link ${link.name}`, 30);
        const nodeIds = await this.placement.place(this.ds.manager, {
          projectId: s.chain.project_id,
          chainId: s.chain.id,
          link: link.name,
          field: 'link',
          image: link.image,
          count: missing,
          pinned: [],
          taken: new Set(live.map((r) => r.node_id)),
          avoid: new Set(failed.map((r) => r.node_id)),
          requestId: op.id,
        });
        const fresh = await this.repo.insertReplicas(this.ds.manager, nodeIds.map((nodeId) => ({ id: uuidv7(), chainId: s.chain.id, linkName: link.name, nodeId, syncFrom: stateful ? healthy[0]!.id : null, joined: false })));
        await this.repo.touch(s.chain.id);
        this.log.info({ chain: s.chain.id, link: link.name, replicas: fresh.map((r) => r.id), nodes: nodeIds, from: stateful ? healthy[0]!.id : undefined }, 'replacing failed replicas');
        await this.runtime.refresh(s.chain.id);
        s = (await this.runtime.load(s.chain.id))!;
      }
      // New replicas (this run's, or an earlier run's that a crash interrupted) come up and join.
      const joining = liveOf(s, link.name).filter((r) => r.state !== 'healthy' || !r.joined);
      if (joining.length === 0) continue;
      await ctx.progress(`starting replacement(s) of link ${link.name}`, 50);
      await this.startReplicas(s.chain.id, joining.map((r) => r.id), ctx);
      await ctx.progress(`adding the replacement(s) of link ${link.name} to its consumers`, 80);
      await this.runtime.updateConsumers(s.chain.id, link.name);
      await this.repo.join(joining.map((r) => r.id));
    }
    await this.runtime.refresh(s.chain.id);
  }

  /** attach: a running partition gets the disk hot-plugged; a stopped one gets it at its next start. */
  async handleAttach(op: OperationRow, ctx: OperationContext): Promise<void> {
    const a = await this.repo.attachmentById(String(op.params.attachmentId ?? ''));
    if (!a) throw new CancelledError('the attachment no longer exists');
    if (a.state === 'attached') return;
    await ctx.progress('exposing the replicas', 20);
    await this.runtime.ensureExposed(a.chain_id, ctx);
    const p = await this.runtime.partitionOf(a);
    if (!p) throw new CancelledError(`partition ${a.partition_id} no longer exists`);
    if (p.node_id && p.observed_state === 'running') {
      await ctx.progress('hot-plugging the disk', 50);
      const s = (await this.runtime.load(a.chain_id))!;
      const disk = this.runtime.diskFor(s, a, p.node_id);
      if (!disk) throw new FailedPreconditionError(`no healthy replica of link ${a.link_name} can be reached from node ${p.node_id}`);
      const r = await this.sessions.command(p.node_id, { diskAttach: { partitionId: p.id, disk } }, DISK_COMMAND_MS);
      if (!r.ok) {
        const failed = await this.repo.setAttachmentState(a.id, 'failed', r.errorMessage);
        if (failed) await this.events.publish(attachmentEvent('attachment.updated', attachmentView(failed), failed.project_id));
        throw agentFailure(r, `attaching chain ${s.chain.name} (link ${a.link_name}) to partition ${p.name}`);
      }
    }
    const done = await this.repo.setAttachmentState(a.id, 'attached');
    if (done) await this.events.publish(attachmentEvent('attachment.updated', attachmentView(done), done.project_id));
    // A repair may have changed the replicas meanwhile: send the current set once more.
    await this.runtime.updateConsumers(a.chain_id, a.link_name);
    await ctx.progress('attached', 100);
  }

  /** detach: the running guest lets go of the disk (unplug), then the attachment goes. */
  async handleDetach(op: OperationRow, ctx: OperationContext): Promise<void> {
    const a = await this.repo.attachmentById(String(op.params.attachmentId ?? ''));
    if (!a) return; // gone already
    const p = await this.runtime.partitionOf(a);
    if (p?.node_id && p.observed_state === 'running') {
      await ctx.progress('unplugging the disk', 40);
      const r = await this.sessions.command(p.node_id, { diskDetach: { partitionId: p.id, attachmentId: a.id } }, DISK_COMMAND_MS);
      if (!r.ok) throw agentFailure(r, `detaching ${a.id} from partition ${p.name}`);
    }
    const gone = await this.repo.deleteAttachment(a.id);
    if (gone) await this.events.publish(attachmentEvent('attachment.deleted', attachmentView(gone), gone.project_id));
  }

  private async mustLoad(chainId: string): Promise<ChainState> {
    const s = await this.runtime.load(chainId);
    if (!s) throw new CancelledError(`service chain ${chainId} no longer exists`);
    return s;
  }

  /** Brings up every replica of a link (exposing the link below to them first) and marks the link ready. */
  private async bringUp(chainId: string, link: string, ctx: OperationContext): Promise<void> {
    const s = await this.mustLoad(chainId);
    const live = liveOf(s, link);
    // The replica that writes a LUKS header goes first: the others open the header it wrote.
    const formatting = live.filter((r) => r.format);
    if (formatting.length) await this.startReplicas(chainId, formatting.map((r) => r.id), ctx);
    await this.startReplicas(chainId, live.filter((r) => !r.format).map((r) => r.id), ctx);
    await this.repo.setLinkState(chainId, link, 'ready');
    await this.repo.touch(chainId);
  }

  /** Sends replicas their specs and waits until every one of them is healthy (a failure is this operation's failure). */
  private async startReplicas(chainId: string, ids: string[], ctx: OperationContext): Promise<void> {
    await this.runtime.ensureExposed(chainId, ctx);
    const s = await this.mustLoad(chainId);
    const nodes = await this.runtime.nodeMap();
    for (const id of ids) {
      const r = s.replicas.find((x) => x.id === id);
      if (!r || r.state === 'healthy') continue;
      if (!(await this.runtime.push(r))) throw new UnavailableError(`node ${nodes.get(r.node_id)?.name ?? r.node_id} is unreachable`);
    }
    await this.runtime.waitReplicas(chainId, ctx, (rs) => {
      let ok = true;
      for (const id of ids) {
        const r = rs.find((x) => x.id === id);
        if (!r) throw new CancelledError(`replica ${id} was removed`);
        if (r.state === 'failed') throw new FailedPreconditionError(`replica ${r.id} of link ${r.link_name} on node ${nodes.get(r.node_id)?.name ?? r.node_id} failed: ${r.state_reason || 'no reason given'}`);
        if (r.state !== 'healthy') ok = false;
      }
      return ok;
    }, `replicas ${ids.join(', ')} to serve`);
  }

  /** Tells replicas to stop and waits until their nodes confirm (rows are deleted then); forgets them after a while anyway. */
  private async removeReplicas(chainId: string, ids: string[], ctx: OperationContext): Promise<void> {
    for (const id of ids) {
      const r = await this.repo.updateReplica(id, { desired: 'absent', state: 'removing', reason: 'being removed' });
      if (r && !(await this.runtime.push(r))) await this.repo.deleteReplica(id); // its node drops it when it registers again
    }
    try {
      await this.runtime.waitReplicas(chainId, ctx, (rs) => ids.every((id) => !rs.some((r) => r.id === id)), 'providers to stop', REMOVE_WAIT_MS);
    } catch (e) {
      if (!(e instanceof DeadlineExceededError)) throw e;
      const left: ReplicaRow[] = [];
      for (const id of ids) {
        const r = await this.repo.deleteReplica(id);
        if (r) left.push(r);
      }
      this.log.warn({ chain: chainId, replicas: left.map((r) => r.id) }, 'nodes did not confirm providers stopped; forgotten (the nodes remove them when they register)');
    }
  }
}
