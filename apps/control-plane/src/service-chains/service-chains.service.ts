import { Injectable } from '@nestjs/common';
import { FailedPreconditionError, NotFoundError, Principal, UUID_RE, ValidationError, requireRole, uuidv7 } from '@hyperplane/domain';
import { agentFailure } from '../agents/agent-errors';
import { AgentSessions } from '../agents/agent-sessions';
import { checkIfMatch } from '../common/etag';
import { Page, parsePage, toPage } from '../common/pagination';
import { MutationOptions, TransactionRunner } from '../common/transactions';
import { Db, lockForTransaction } from '../database/database';
import { EventBus } from '../events/event-bus';
import { OperationQueueRepository } from '../operations/operation-queue.repository';
import { OperationRepository } from '../operations/operation.repository';
import { OperationView, OperationsService, cancelSubjectOf, inProgressHint, operationView } from '../operations/operations.service';
import { PartitionRepository, PartitionRow } from '../partitions/partition.repository';
import { ChainKeys } from './chain-keys';
import { ChainPlacement } from './chain-placement';
import { attachMode, CHAIN_LIMITS, freeDeviceIndex, STATEFUL_KINDS, validateLinks, type LinkDefinition, type ValidLink } from './chain-rules';
import { keyAad } from './chain-runtime';
import { AttachmentView, ChainStatusView, ServiceChainView, attachmentEvent, attachmentView, chainEvent, chainView } from './chain-view';
import { ChainRow, NewLink, NewReplica, ReplicaRow, ServiceChainRepository } from './service-chain.repository';
import { AddReplicaInput, AttachInput, CreateServiceChainInput, LinkInput } from './service-chains.dto';

/** The answer to every state-changing chain call: the chain and the operation doing the work. */
export interface ChainOperationView {
  serviceChain: ServiceChainView;
  operation: OperationView;
}

/** The answer to attach and detach: the attachment and the operation doing the work. */
export interface AttachmentOperationView {
  attachment: AttachmentView;
  operation: OperationView;
}

/**
 * Service chains and the partitions attached to them. Requests are checked whole and recorded
 * synchronously — placement included, so "no node fits" is a 422 that creates nothing — and the
 * work runs in operations (chain-operations.ts). One operation at a time per chain, and per
 * partition, as for partitions.
 */
@Injectable()
export class ServiceChainsService {
  constructor(
    private readonly repo: ServiceChainRepository,
    private readonly partitions: PartitionRepository,
    private readonly placement: ChainPlacement,
    private readonly keys: ChainKeys,
    private readonly ops: OperationRepository,
    private readonly queue: OperationQueueRepository,
    private readonly operations: OperationsService,
    private readonly events: EventBus,
    private readonly tx: TransactionRunner,
    private readonly sessions: AgentSessions,
  ) {}

  /** Creates a chain: validates every link, places every replica, records it all, and starts the operation that brings it up. */
  async create(principal: Principal, projectId: string, input: CreateServiceChainInput, opts: MutationOptions = {}): Promise<ChainOperationView> {
    requireRole(principal, 'operator', 'create service chains');
    const links = validateLinks(input.links.map(definition), []);
    const chainId = uuidv7();
    const sealed = await this.sealKeys(chainId, links);
    return this.tx.run(
      { scope: `project:${projectId}`, name: 'service-chains.create', input, key: opts.idempotencyKey },
      async (db) => {
        const chain = await this.repo.insertChain(db, { id: chainId, projectId, name: input.name, description: input.description ?? '' });
        const rows = await this.repo.insertLinks(db, chainId, links.map((l, i) => newLink(l, i, sealed.get(l.name) ?? null)));
        const replicas = await this.placeLinks(db, projectId, chainId, links, opts, (i) => `links[${i}]`);
        const op = await this.ops.insert(db, { id: uuidv7(), projectId, kind: 'service-chain.create', targetType: 'service-chain', targetId: chainId, params: {}, requestId: opts.requestId });
        return { serviceChain: chainView(chain, rows, replicas), operation: operationView(op) };
      },
      (r) => this.launched(r, 'service-chain.created'),
    );
  }

  /** Gets a chain with its health. */
  async get(principal: Principal, projectId: string, id: string): Promise<ServiceChainView> {
    requireRole(principal, 'viewer', 'read service chains');
    const c = await this.find(projectId, id);
    return chainView(c, await this.repo.links(c.id), await this.repo.replicas(c.id));
  }

  /** A chain's health: per link and per replica. */
  async status(principal: Principal, projectId: string, id: string): Promise<ChainStatusView> {
    const v = await this.get(principal, projectId, id);
    return { id: v.id, state: v.state, stateReason: v.stateReason, links: v.links };
  }

  /** Lists a project's chains (keyset pages). */
  async list(principal: Principal, projectId: string, q: { pageSize?: unknown; pageToken?: unknown }): Promise<Page<ServiceChainView>> {
    requireRole(principal, 'viewer', 'list service chains');
    const page = parsePage(q.pageSize, q.pageToken);
    const chains = await this.repo.list(projectId, page);
    const ids = chains.map((c) => c.id);
    const [links, replicas] = ids.length ? await Promise.all([this.repo.linksOfMany(ids), this.repo.replicasOfMany(ids)]) : [[], []];
    return toPage(chains, page, (c) => chainView(c, links.filter((l) => l.chain_id === c.id), replicas.filter((r) => r.chain_id === c.id)));
  }

  /** Deletes a chain; a chain a partition uses is a 409 naming the partition. */
  delete(principal: Principal, projectId: string, id: string, opts: MutationOptions = {}): Promise<ChainOperationView> {
    return this.chainAction(principal, projectId, id, 'delete', 'service-chain.delete', {}, opts, async (db, c) => {
      const users = await this.repo.attachmentsToChain(c.id, db);
      if (users.length) {
        const p = await this.partitions.getById(users[0]!.partition_id, db);
        throw new FailedPreconditionError(`cannot delete service chain ${c.name}: partition ${p?.name ?? users[0]!.partition_id} uses it (link ${users[0]!.link_name}); detach it first`);
      }
      return (await this.repo.setState(c.id, 'deleting', 'delete requested', db)) ?? c;
    }, true);
  }

  /** Adds a link on top of the chain (the new head). */
  addLink(principal: Principal, projectId: string, id: string, input: LinkInput, opts: MutationOptions = {}): Promise<ChainOperationView> {
    return this.chainAction(principal, projectId, id, 'add a link to', 'service-chain.add-link', { link: input.name }, opts, async (db, c) => {
      const existing = await this.repo.links(c.id, db);
      const [link] = validateLinks([definition(input)], existing, 'link');
      const head = existing[existing.length - 1]!;
      const writer = (await this.repo.attachmentsToChain(c.id, db)).find((a) => a.link_name === head.name && !a.read_only);
      if (writer) {
        const p = await this.partitions.getById(writer.partition_id, db);
        throw new FailedPreconditionError(`cannot add a link on top of ${head.name}: partition ${p?.name ?? writer.partition_id} writes to it (attachment ${writer.id}); detach it or attach it read-only first`);
      }
      const sealed = await this.sealKeys(c.id, [link!]);
      await this.repo.insertLinks(db, c.id, [newLink(link!, existing.length, sealed.get(link!.name) ?? null)]);
      await this.placeLinks(db, projectId, c.id, [link!], opts, () => 'link');
      return (await this.repo.touch(c.id, db)) ?? c;
    });
  }

  /** Removes the head link (its layer's data goes with it). */
  removeLink(principal: Principal, projectId: string, id: string, linkName: string, opts: MutationOptions = {}): Promise<ChainOperationView> {
    return this.chainAction(principal, projectId, id, 'remove a link of', 'service-chain.remove-link', { link: linkName }, opts, async (db, c) => {
      const links = await this.repo.links(c.id, db);
      const link = links.find((l) => l.name === linkName);
      if (!link) throw new NotFoundError('link', linkName);
      if (links.length === 1) throw new FailedPreconditionError(`cannot remove link ${linkName}: it is the only link of chain ${c.name} (delete the chain instead)`);
      const head = links[links.length - 1]!;
      if (link !== head) throw new FailedPreconditionError(`cannot remove link ${linkName}: link ${links.find((l) => l.position === link.position + 1)!.name} consumes it; only the head (${head.name}) can be removed`);
      const user = (await this.repo.attachmentsToChain(c.id, db)).find((a) => a.link_name === linkName);
      if (user) {
        const p = await this.partitions.getById(user.partition_id, db);
        throw new FailedPreconditionError(`cannot remove link ${linkName}: partition ${p?.name ?? user.partition_id} uses it; detach it first`);
      }
      await this.repo.setLinkState(c.id, linkName, 'removing', db);
      return (await this.repo.touch(c.id, db)) ?? c;
    });
  }

  /** Adds a replica to a link (placed on a node without one; copied from a healthy replica for links that hold data). */
  addReplica(principal: Principal, projectId: string, id: string, linkName: string, input: AddReplicaInput, opts: MutationOptions = {}): Promise<ChainOperationView> {
    let replicaId = '';
    return this.chainAction(principal, projectId, id, 'add a replica to', 'service-chain.add-replica', { link: linkName }, opts, async (db, c) => {
      const link = (await this.repo.links(c.id, db)).find((l) => l.name === linkName);
      if (!link) throw new NotFoundError('link', linkName);
      if (link.state !== 'ready') throw new FailedPreconditionError(`cannot add a replica to link ${linkName}: it is ${link.state}`);
      if (link.replicas >= CHAIN_LIMITS.maxReplicas) throw new FailedPreconditionError(`link ${linkName} has ${link.replicas} replicas, the most a link can have`);
      const replicas = await this.repo.replicas(c.id, db);
      const live = replicas.filter((r) => r.link_name === linkName && r.desired === 'running' && r.state !== 'failed' && r.state !== 'removing');
      const healthy = live.find((r) => r.state === 'healthy');
      const stateful = STATEFUL_KINDS.includes(link.kind);
      if (stateful && !healthy) throw new FailedPreconditionError(`cannot add a replica to link ${linkName}: no healthy replica to copy its data from`);
      const [nodeId] = await this.placement.place(db, { projectId, chainId: c.id, link: linkName, field: '', image: link.image, count: 1, pinned: input.node ? [input.node] : [], taken: new Set(live.map((r) => r.node_id)), requestId: opts.idempotencyKey ?? opts.requestId ?? uuidv7() });
      replicaId = uuidv7();
      await this.repo.insertReplicas(db, [{ id: replicaId, chainId: c.id, linkName, nodeId: nodeId!, syncFrom: stateful ? healthy!.id : null, joined: false }]);
      await this.repo.setLinkReplicas(db, c.id, linkName, link.replicas + 1);
      return (await this.repo.touch(c.id, db)) ?? c;
    }, false, () => ({ replicaId }));
  }

  /** Removes one replica of a link (consumers stop using it first); a link keeps at least one. */
  removeReplica(principal: Principal, projectId: string, id: string, linkName: string, replicaId: string, opts: MutationOptions = {}): Promise<ChainOperationView> {
    return this.chainAction(principal, projectId, id, 'remove a replica of', 'service-chain.remove-replica', { link: linkName, replicaId }, opts, async (db, c) => {
      const link = (await this.repo.links(c.id, db)).find((l) => l.name === linkName);
      if (!link) throw new NotFoundError('link', linkName);
      const replicas = await this.repo.replicas(c.id, db);
      const r = replicas.find((x) => x.id === replicaId && x.link_name === linkName);
      if (!r) throw new NotFoundError('replica', replicaId);
      const otherHealthy = replicas.filter((x) => x.link_name === linkName && x.id !== replicaId && x.state === 'healthy');
      if (link.replicas <= 1 || otherHealthy.length === 0) throw new FailedPreconditionError(`cannot remove replica ${replicaId}: it is the last ${r.state === 'healthy' ? 'healthy ' : ''}replica of link ${linkName}`);
      await this.repo.updateReplica(r.id, { state: 'removing', reason: 'removal requested' }, db);
      await this.repo.setLinkReplicas(db, c.id, linkName, link.replicas - 1);
      return (await this.repo.touch(c.id, db)) ?? c;
    });
  }

  /** The end of a replica's log, read from its node. */
  async replicaLog(principal: Principal, projectId: string, id: string, linkName: string, replicaId: string, tailBytes?: unknown): Promise<{ replicaId: string; data: string; truncated: boolean }> {
    requireRole(principal, 'operator', 'read provider logs');
    let bytes = 16 * 1024;
    if (tailBytes !== undefined && tailBytes !== '' && tailBytes !== 0) {
      const n = Number(tailBytes);
      if (!Number.isInteger(n) || n < 1 || n > 1024 * 1024) throw ValidationError.field('tailBytes', 'must be an integer between 1 and 1048576');
      bytes = n;
    }
    const c = await this.find(projectId, id);
    const r = UUID_RE.test(replicaId) ? (await this.repo.replicas(c.id)).find((x) => x.id === replicaId && x.link_name === linkName) : undefined;
    if (!r) throw new NotFoundError('replica', replicaId);
    const res = await this.sessions.command(r.node_id, { providerLog: { providerId: r.id, bytes } }, 10_000);
    if (!res.ok) throw agentFailure(res, `log of replica ${r.id}`);
    const tail = JSON.parse(res.payload || '{}') as { data?: string; truncated?: boolean };
    return { replicaId: r.id, data: tail.data ?? '', truncated: tail.truncated ?? false };
  }

  /** Attaches a chain (its head, or an earlier link read-only) to a partition as a disk. */
  attach(principal: Principal, projectId: string, partitionId: string, input: AttachInput, opts: MutationOptions = {}): Promise<AttachmentOperationView> {
    requireRole(principal, 'operator', 'attach service chains');
    return this.tx.run(
      { scope: `project:${projectId}`, name: 'partitions.attach', input: { partitionId, input }, key: opts.idempotencyKey },
      async (db) => {
        const p = await this.lockPartition(db, projectId, partitionId);
        if (!UUID_RE.test(input.chainId)) throw new NotFoundError('service chain', input.chainId);
        const c = await this.repo.lock(db, projectId, input.chainId);
        if (!c) throw new NotFoundError('service chain', input.chainId);
        if (c.state === 'creating' || c.state === 'deleting') throw new FailedPreconditionError(`cannot attach service chain ${c.name}: it is ${c.state}`);
        if (p.state !== 'running' && p.state !== 'stopped') throw new FailedPreconditionError(`cannot attach to partition ${p.name}: it is ${p.state} (it must be running or stopped)`);
        await this.noLiveOperation(db, p);
        const links = await this.repo.links(c.id, db);
        const linkName = input.link ?? links[links.length - 1]!.name;
        const link = links.find((l) => l.name === linkName);
        if (!link) throw ValidationError.field('link', `chain ${c.name} has no link ${linkName} (links: ${links.map((l) => l.name).join(', ')})`);
        if (link.state !== 'ready') throw new FailedPreconditionError(`cannot attach link ${linkName} of chain ${c.name}: it is ${link.state}`);
        const mode = attachMode(links, linkName, input.readOnly);
        if ('refused' in mode) throw new FailedPreconditionError(`cannot attach link ${linkName} writable: ${mode.refused}`);
        const all = await this.repo.attachmentsToChain(c.id, db);
        if (all.some((a) => a.partition_id === p.id && a.link_name === linkName)) throw new FailedPreconditionError(`partition ${p.name} already has link ${linkName} of chain ${c.name} attached`);
        const writer = all.find((a) => a.link_name === linkName && !a.read_only);
        if (!mode.readOnly && writer) {
          const holder = await this.partitions.getById(writer.partition_id, db);
          throw new FailedPreconditionError(`cannot attach chain ${c.name} writable to partition ${p.name}: partition ${holder?.name ?? writer.partition_id} writes to it already (one writer at a time); attach read-only`);
        }
        const index = freeDeviceIndex((await this.repo.attachmentsOf(p.id, db)).map((a) => a.device_index));
        if (index === undefined) throw new FailedPreconditionError(`partition ${p.name} has ${CHAIN_LIMITS.maxAttachmentsPerPartition} chain disks, the most it can have`);
        const a = await this.repo.insertAttachment(db, { id: uuidv7(), projectId, partitionId: p.id, chainId: c.id, linkName, readOnly: mode.readOnly, deviceIndex: index });
        const op = await this.ops.insert(db, { id: uuidv7(), projectId, kind: 'partition.attach', targetType: 'partition', targetId: p.id, params: { attachmentId: a.id, chainId: c.id }, requestId: opts.requestId });
        return { attachment: attachmentView(a), operation: operationView(op) };
      },
      (r) => this.launchedAttachment(r, projectId, 'attachment.created'),
    );
  }

  /** Lists a partition's attachments. */
  async attachments(principal: Principal, projectId: string, partitionId: string, q: { pageSize?: unknown; pageToken?: unknown }): Promise<Page<AttachmentView>> {
    requireRole(principal, 'viewer', 'list attachments');
    const p = await this.findPartition(projectId, partitionId);
    const page = parsePage(q.pageSize, q.pageToken);
    return toPage(await this.repo.attachmentsPage(p.id, page), page, attachmentView);
  }

  /** Detaches a chain from a partition (the running guest releases the disk first). */
  detach(principal: Principal, projectId: string, partitionId: string, attachmentId: string, opts: MutationOptions = {}): Promise<AttachmentOperationView> {
    requireRole(principal, 'operator', 'detach service chains');
    return this.tx.run(
      { scope: `project:${projectId}`, name: 'partitions.detach', input: { partitionId, attachmentId }, key: opts.idempotencyKey },
      async (db) => {
        const p = await this.lockPartition(db, projectId, partitionId);
        if (!UUID_RE.test(attachmentId)) throw new NotFoundError('attachment', attachmentId);
        const a = await this.repo.attachment(p.id, attachmentId, db);
        if (!a) throw new NotFoundError('attachment', attachmentId);
        checkIfMatch('attachment', a.id, opts.ifMatch, a.version);
        if (a.state === 'detaching') throw new FailedPreconditionError(`attachment ${a.id} is being detached already`);
        if (p.state !== 'running' && p.state !== 'stopped' && p.state !== 'failed') throw new FailedPreconditionError(`cannot detach from partition ${p.name}: it is ${p.state}`);
        await this.noLiveOperation(db, p);
        const updated = (await this.repo.setAttachmentState(a.id, 'detaching', 'detach requested', db))!;
        const op = await this.ops.insert(db, { id: uuidv7(), projectId, kind: 'partition.detach', targetType: 'partition', targetId: p.id, params: { attachmentId: a.id, chainId: a.chain_id }, requestId: opts.requestId });
        return { attachment: attachmentView(updated), operation: operationView(op) };
      },
      (r) => this.launchedAttachment(r, projectId, 'attachment.updated'),
    );
  }

  /** A chain by id within the project; anything else is 404. */
  private async find(projectId: string, id: string): Promise<ChainRow> {
    if (!UUID_RE.test(id)) throw new NotFoundError('service chain', id);
    const c = await this.repo.get(projectId, id);
    if (!c) throw new NotFoundError('service chain', id);
    return c;
  }

  private async findPartition(projectId: string, id: string): Promise<PartitionRow> {
    if (!UUID_RE.test(id)) throw new NotFoundError('partition', id);
    const p = await this.partitions.get(projectId, id);
    if (!p) throw new NotFoundError('partition', id);
    return p;
  }

  private async lockPartition(db: Db, projectId: string, id: string): Promise<PartitionRow> {
    if (!UUID_RE.test(id)) throw new NotFoundError('partition', id);
    const p = await this.partitions.lock(db, projectId, id);
    if (!p) throw new NotFoundError('partition', id);
    return p;
  }

  private async noLiveOperation(db: Db, p: PartitionRow): Promise<void> {
    const live = await this.ops.liveForTarget(db, p.id);
    if (live) throw new FailedPreconditionError(`partition ${p.name}: operation ${live.id} (${live.kind}) is in progress; ${inProgressHint(cancelSubjectOf(live))}`);
  }

  /** Seals the keys of encrypt links (made here when the request gives none). */
  private async sealKeys(chainId: string, links: ValidLink[]): Promise<Map<string, Buffer>> {
    const out = new Map<string, Buffer>();
    for (const l of links) if (l.kind === 'encrypt') out.set(l.name, await this.keys.seal(l.key ?? ChainKeys.generate(), keyAad(chainId, l.name)));
    return out;
  }

  /** Places the replicas of new links and records them; `field(i)` names links[i] in errors. */
  private async placeLinks(db: Db, projectId: string, chainId: string, links: ValidLink[], opts: MutationOptions, field: (i: number) => string): Promise<ReplicaRow[]> {
    const seed = opts.idempotencyKey ?? opts.requestId ?? uuidv7();
    const out: NewReplica[] = [];
    for (const [i, l] of links.entries()) {
      const nodeIds = await this.placement.place(db, { projectId, chainId, link: l.name, field: field(i), image: l.image, count: l.replicas, pinned: l.nodes, taken: new Set(), requestId: seed });
      // The first replica of a new encrypt link writes its LUKS header; the others open it.
      nodeIds.forEach((nodeId, k) => out.push({ id: uuidv7(), chainId, linkName: l.name, nodeId, format: l.kind === 'encrypt' && k === 0 }));
    }
    await lockForTransaction(db, `service-chain:${chainId}`);
    return this.repo.insertReplicas(db, out);
  }

  /** Common shape of chain actions: lock, If-Match, one operation at a time, record the operation. */
  private chainAction(
    principal: Principal,
    projectId: string,
    id: string,
    action: string,
    kind: string,
    params: Record<string, unknown>,
    opts: MutationOptions,
    prepare: (db: Db, c: ChainRow) => Promise<ChainRow>,
    supersede = false,
    extraParams: () => Record<string, unknown> = () => ({}),
  ): Promise<ChainOperationView> {
    requireRole(principal, 'operator', `${action} service chains`);
    return this.tx.run(
      { scope: `project:${projectId}`, name: `service-chains.${kind}`, input: { id, params }, key: opts.idempotencyKey },
      async (db) => {
        if (!UUID_RE.test(id)) throw new NotFoundError('service chain', id);
        let c = await this.repo.lock(db, projectId, id);
        if (!c) throw new NotFoundError('service chain', id);
        checkIfMatch('service chain', id, opts.ifMatch, c.version);
        if (c.state === 'deleting') throw new FailedPreconditionError(`cannot ${action} service chain ${c.name}: it is being deleted`);
        const live = await this.ops.liveForTarget(db, c.id);
        if (live && !(supersede && live.kind === 'service-chain.repair')) {
          throw new FailedPreconditionError(`cannot ${action} service chain ${c.name}: operation ${live.id} (${live.kind}) is in progress; ${inProgressHint(cancelSubjectOf(live))}`);
        }
        c = await prepare(db, c);
        const op = await this.ops.insert(db, { id: uuidv7(), projectId, kind, targetType: 'service-chain', targetId: c.id, params: { ...params, ...extraParams() }, requestId: opts.requestId });
        const view = chainView(c, await this.repo.links(c.id, db), await this.repo.replicas(c.id, db));
        return { serviceChain: view, operation: operationView(op), superseded: live?.id };
      },
      async (r) => {
        if (r.superseded) await this.ops.requestCancel(r.superseded).then((o) => o && this.events.publish({ type: 'operation.cancel-requested', resourceType: 'operation', resourceId: o.id, projectId, data: operationView(o) }));
        await this.launched(r, 'service-chain.updated');
      },
    ).then(({ serviceChain, operation }) => ({ serviceChain, operation }));
  }

  private async launched(r: ChainOperationView, type: string): Promise<void> {
    await this.queue.enqueue(r.operation.id, r.operation.kind).catch(() => undefined); // the sweep re-queues it if Redis hiccupped
    await this.events.publish(chainEvent(type, r.serviceChain));
    await this.operations.publishView(r.operation);
  }

  private async launchedAttachment(r: AttachmentOperationView, projectId: string, type: string): Promise<void> {
    await this.queue.enqueue(r.operation.id, r.operation.kind).catch(() => undefined);
    await this.events.publish(attachmentEvent(type, r.attachment, projectId));
    await this.operations.publishView(r.operation);
  }
}

/** A request's link as the rules see it. */
function definition(l: LinkInput): LinkDefinition {
  return { name: l.name, kind: l.kind, consumes: l.consumes, replicas: l.replicas, image: l.image, sizeBytes: l.sizeBytes, key: l.key, throttle: l.throttle, nodes: l.nodes };
}

function newLink(l: ValidLink, position: number, keySealed: Buffer | null): NewLink {
  return { name: l.name, position, kind: l.kind, replicas: l.replicas, image: l.image, sizeBytes: l.sizeBytes, throttle: l.throttle, keySealed, nodes: l.nodes, state: 'creating' };
}
