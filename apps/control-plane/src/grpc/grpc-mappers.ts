/** Maps service views (the REST JSON) to proto messages where names differ (`memoryMiB` → `memoryMib`). */
import type { SnapshotView } from '../snapshots/snapshot-view';
import { v1 } from '@hyperplane/proto';
import { NodeView } from '../nodes/nodes.service';
import { OperationView } from '../operations/operations.service';
import { PartitionView } from '../partitions/partition-view';
import { ProjectView, TokenView } from '../projects/projects.service';
import { HpEvent } from '../events/event-bus';
import { ImageView } from '../images/image-view';
import { NodeStoreImageView } from '../images/node-image-inventory';

const res = (r: { vcpus: number; memoryMiB: number; diskBytes: number }): v1.NodeResources => ({ vcpus: r.vcpus, memoryMib: r.memoryMiB, diskBytes: r.diskBytes });

/** Partition view → proto. */
export function partitionMsg(p: PartitionView): v1.Partition {
  return { ...p, node: p.node ?? '', memoryMib: p.memoryMiB, diskGib: p.diskGiB };
}

/** Operation view → proto. */
export function operationMsg(o: OperationView): v1.Operation {
  return {
    ...o,
    projectId: o.projectId ?? '',
    startedAt: o.startedAt ?? '',
    finishedAt: o.finishedAt ?? '',
    error: o.error ? { code: o.error.code, message: o.error.message, details: (o.error.details ?? []).map((d) => ({ field: d.field ?? '', reason: d.reason ?? '', message: d.message, count: d.count ?? 0 })) } : undefined,
  };
}

/** Node view → proto. */
export function nodeMsg(n: NodeView): v1.Node {
  return {
    ...n,
    capacity: res(n.capacity),
    allocatable: res(n.allocatable),
    allocated: res(n.allocated),
    images: n.images.map((i) => i.name),
    lastHeartbeatAt: n.lastHeartbeatAt ?? '',
  };
}

/** Project view → proto. */
export function projectMsg(p: ProjectView): v1.Project {
  const q = p.quota ?? {};
  return { ...p, quota: { maxPartitions: q.maxPartitions, maxVcpus: q.maxVcpus, maxMemoryMib: q.maxMemoryMiB } };
}

/** Token view → proto. */
export function tokenMsg(t: TokenView): v1.Token {
  return { ...t, projectId: t.projectId ?? '', lastUsedAt: t.lastUsedAt ?? '', token: t.token ?? '' };
}

/** Event → proto. */
export function eventMsg(e: HpEvent): v1.Event {
  return { id: e.id, type: e.type, resourceType: e.resourceType, resourceId: e.resourceId, projectId: e.projectId ?? '', at: e.at, dataJson: JSON.stringify(e.data) };
}

/** A file of a node's image store → proto. */
export function nodeStoreImageMsg(i: NodeStoreImageView): v1.NodeStoreImage {
  const { metadata, rejected, libraryImageId, ...rest } = i;
  return { ...rest, metadataJson: metadata ? JSON.stringify(metadata) : '', rejectedReason: rejected?.reason ?? '', rejectedMessage: rejected?.message ?? '', libraryImageId: libraryImageId ?? '' };
}

/** Image view → proto (metadata as its JSON text). */
export function imageMsg(i: ImageView): v1.Image {
  const { metadata, expiresAt, digest, ...rest } = i;
  return { ...rest, metadataJson: JSON.stringify(metadata), expiresAt: expiresAt ?? '', digest: digest ?? '' };
}

/** Snapshot view → proto. */
export function snapshotMsg(s: SnapshotView): v1.Snapshot {
  return { ...s, parentId: s.parentId ?? '' };
}
