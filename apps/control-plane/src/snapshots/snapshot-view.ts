import { etagOf } from '../common/etag';
import type { HpEvent } from '../events/event-bus';
import { SnapshotRow } from './snapshot.repository';

/** A snapshot as both APIs show it. */
export interface SnapshotView {
  id: string;
  projectId: string;
  partitionId: string;
  /** The snapshot it was taken after, or null for a root of the tree. */
  parentId: string | null;
  name: string;
  description: string;
  state: string;
  /** Memory and device state too: reverting a running partition resumes the guest from it. */
  withMemory: boolean;
  vmStateBytes: number;
  vmClockMs: number;
  /** The partition's current state descends from this one (it is the parent of the next). */
  current: boolean;
  etag: string;
  createdAt: string;
  updatedAt: string;
}

/** Maps a snapshot row to its view; `currentId` is its partition's current snapshot. */
export function snapshotView(r: SnapshotRow, currentId: string | null): SnapshotView {
  return {
    id: r.id,
    projectId: r.project_id,
    partitionId: r.partition_id,
    parentId: r.parent_id,
    name: r.name,
    description: r.description,
    state: r.state,
    withMemory: r.with_memory,
    vmStateBytes: Number(r.vm_state_bytes),
    vmClockMs: Number(r.vm_clock_ms),
    current: r.id === currentId,
    etag: etagOf(r.version),
    createdAt: r.created_at.toISOString(),
    updatedAt: r.updated_at.toISOString(),
  };
}

/** The event stream's record of a change to a snapshot (`snapshot.created`, `.updated`, `.deleted`). */
export function snapshotEvent(type: string, v: SnapshotView): Omit<HpEvent, 'id' | 'at'> {
  return { type, resourceType: 'snapshot', resourceId: v.id, projectId: v.projectId, data: v };
}

/**
 * The phase a revert of a partition in `state` works in while its node loads the snapshot: the
 * handler records it, or a revert run by the replica that accepted it starts in it.
 */
export function revertPhase(state: string): { phase: string; progress: number } {
  return { phase: state === 'running' ? 'loading memory and disk' : 'reverting disk', progress: 30 };
}
