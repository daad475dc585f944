import { etagOf } from '../common/etag';
import type { HpEvent } from '../events/event-bus';
import { chainHealth, type ThrottleLimits } from './chain-rules';
import type { AttachmentRow, ChainRow, LinkRow, ReplicaRow } from './service-chain.repository';

/** One replica (provider process) as both APIs show it. */
export interface ReplicaView {
  id: string;
  link: string;
  /** Id of the node it runs on. */
  node: string;
  /** pending | starting | syncing | healthy | failed | removing */
  state: string;
  stateReason: string;
  /** While syncing: how much of the copy from a healthy replica is done. */
  syncPercent: number;
  createdAt: string;
}

/** One link of a chain, with its health. */
export interface LinkView {
  name: string;
  kind: string;
  position: number;
  /** The link it consumes (the one below), null for the base. */
  consumes: string | null;
  /** Replicas it should have. */
  replicas: number;
  healthyReplicas: number;
  /** creating | ready | degraded | failed | removing */
  state: string;
  image: string;
  /** Size of what it exports (0 until a replica reported it). */
  sizeBytes: number;
  throttle: ThrottleLimits | null;
  /** An encrypt link; its key is never shown. */
  encrypted: boolean;
  replicaStatus: ReplicaView[];
}

/** A service chain as both APIs show it. */
export interface ServiceChainView {
  id: string;
  projectId: string;
  name: string;
  description: string;
  /** creating | ready | degraded | failed | deleting */
  state: string;
  stateReason: string;
  /** The top link: what a client attaching without naming a link gets. */
  head: string;
  sizeBytes: number;
  links: LinkView[];
  etag: string;
  createdAt: string;
  updatedAt: string;
}

/** The health part of a chain (GET .../status). */
export interface ChainStatusView {
  id: string;
  state: string;
  stateReason: string;
  links: LinkView[];
}

/** A partition's use of a chain as a disk. */
export interface AttachmentView {
  id: string;
  partitionId: string;
  chainId: string;
  link: string;
  readOnly: boolean;
  /** 0-15: the disk's PCI slot is 0x10 + index; the guest sees it as a virtio disk (vdb for the first). */
  deviceIndex: number;
  /** The disk's serial number in the guest (/dev/disk/by-id/virtio-<serial>). */
  serial: string;
  /** attaching | attached | detaching | failed */
  state: string;
  stateReason: string;
  etag: string;
  createdAt: string;
  updatedAt: string;
}

/**
 * The state a replica shows: a healthy replica its consumers do not use yet is `joining` (it is
 * being added to them), and counts as healthy only once they do.
 */
export function shownState(r: Pick<ReplicaRow, 'state' | 'joined'>): string {
  return r.state === 'healthy' && !r.joined ? 'joining' : r.state;
}

/** Maps a replica row to its view. */
export function replicaView(r: ReplicaRow): ReplicaView {
  return { id: r.id, link: r.link_name, node: r.node_id, state: shownState(r), stateReason: r.state_reason, syncPercent: r.sync_percent, createdAt: r.created_at.toISOString() };
}

/** Maps a chain with its links and replicas to its view; state is the live health unless it is being created or deleted. */
export function chainView(c: ChainRow, links: readonly LinkRow[], replicas: readonly ReplicaRow[]): ServiceChainView {
  const health = chainHealth(links, replicas.map((r) => ({ linkName: r.link_name, state: r.joined ? r.state : 'syncing' })));
  const ordered = [...links].sort((a, b) => a.position - b.position);
  const views: LinkView[] = ordered.map((l, i) => {
    const h = health.links.find((x) => x.name === l.name)!;
    const mine = replicas.filter((r) => r.link_name === l.name);
    const size = mine.map((r) => Number(r.size_bytes)).find((n) => n > 0) ?? 0;
    return {
      name: l.name,
      kind: l.kind,
      position: l.position,
      consumes: i === 0 ? null : ordered[i - 1]!.name,
      replicas: l.replicas,
      healthyReplicas: h.healthy,
      state: h.state,
      image: l.image,
      sizeBytes: size,
      throttle: l.kind === 'throttle' ? l.throttle : null,
      encrypted: l.kind === 'encrypt',
      replicaStatus: mine.map(replicaView),
    };
  });
  const head = views[views.length - 1];
  const state = c.state === 'creating' || c.state === 'deleting' ? c.state : health.state;
  return {
    id: c.id,
    projectId: c.project_id,
    name: c.name,
    description: c.description,
    state,
    stateReason: c.state === 'creating' || c.state === 'deleting' ? c.state_reason : health.reason,
    head: head?.name ?? '',
    sizeBytes: head?.sizeBytes ?? 0,
    links: views,
    etag: etagOf(c.version),
    createdAt: c.created_at.toISOString(),
    updatedAt: c.updated_at.toISOString(),
  };
}

/** The event stream's record of a chain change (`service-chain.created`, `.updated`, `.deleted`). */
export function chainEvent(type: string, v: ServiceChainView): Omit<HpEvent, 'id' | 'at'> {
  return { type, resourceType: 'service-chain', resourceId: v.id, projectId: v.projectId, data: v };
}

/** Maps an attachment row to its view. */
export function attachmentView(a: AttachmentRow): AttachmentView {
  return {
    id: a.id,
    partitionId: a.partition_id,
    chainId: a.chain_id,
    link: a.link_name,
    readOnly: a.read_only,
    deviceIndex: a.device_index,
    serial: a.id.replaceAll('-', '').slice(-20),
    state: a.state,
    stateReason: a.state_reason,
    etag: etagOf(a.version),
    createdAt: a.created_at.toISOString(),
    updatedAt: a.updated_at.toISOString(),
  };
}

/** The event stream's record of an attachment change (`attachment.updated`, `.deleted`). */
export function attachmentEvent(type: string, v: AttachmentView, projectId: string): Omit<HpEvent, 'id' | 'at'> {
  return { type, resourceType: 'attachment', resourceId: v.id, projectId, data: v };
}
