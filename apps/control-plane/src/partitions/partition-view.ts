import { etagOf } from '../common/etag';
import type { HpEvent } from '../events/event-bus';
import { PartitionRow } from './partition.repository';

/** A partition as both APIs show it. */
export interface PartitionView {
  id: string;
  projectId: string;
  name: string;
  description: string;
  state: string;
  stateReason: string;
  /** Id of the node it is placed on, or null. */
  node: string | null;
  vcpus: number;
  memoryMiB: number;
  diskGiB: number;
  image: string;
  labels: Record<string, string>;
  etag: string;
  createdAt: string;
  updatedAt: string;
}

/** The event stream's record of a change to a partition (`partition.created`, `.updated`, `.deleted`). */
export function partitionEvent(type: string, v: PartitionView): Omit<HpEvent, 'id' | 'at'> {
  return { type, resourceType: 'partition', resourceId: v.id, projectId: v.projectId, data: v };
}

/** Maps a partition row to its view. */
export function partitionView(r: PartitionRow): PartitionView {
  return {
    id: r.id,
    projectId: r.project_id,
    name: r.name,
    description: r.description,
    state: r.state,
    stateReason: r.state_reason,
    node: r.node_id,
    vcpus: r.vcpus,
    memoryMiB: Number(r.memory_mib),
    diskGiB: r.disk_gib,
    image: r.image,
    labels: r.labels,
    etag: etagOf(r.version),
    createdAt: r.created_at.toISOString(),
    updatedAt: r.updated_at.toISOString(),
  };
}
