import { FailedPreconditionError } from './errors';

/**
 * The partition lifecycle. The happy path is
 * pending → scheduled → starting → running → stopping → stopped, with `failed` reachable from any
 * live state and `deleting` the last state before the record goes away. A running or stopped
 * partition is `migrating` while it moves to another node, and goes back to running or stopped.
 */
export const PARTITION_STATES = [
  'pending',
  'scheduled',
  'starting',
  'running',
  'stopping',
  'stopped',
  'failed',
  'deleting',
  'migrating',
] as const;

/** One state of {@link PARTITION_STATES}. */
export type PartitionState = (typeof PARTITION_STATES)[number];

/**
 * The reason a node reports (with state `starting`) for a partition it is receiving by live
 * migration: that report is the migration's business, never a change of the partition's state.
 */
export const INCOMING_MIGRATION_REASON = 'incoming migration';

/** A user-visible action on a partition. */
export type PartitionAction = 'start' | 'stop' | 'reboot' | 'delete' | 'console' | 'update' | 'snapshot' | 'revert' | 'delete snapshots of' | 'export snapshots of' | 'migrate';

/** Which state each action is allowed from; the single source for 409 answers. */
const ALLOWED: Record<PartitionAction, readonly PartitionState[]> = {
  start: ['stopped', 'failed', 'scheduled'],
  stop: ['running', 'starting', 'stopping'],
  reboot: ['running'],
  delete: ['pending', 'scheduled', 'starting', 'running', 'stopping', 'stopped', 'failed'],
  console: ['starting', 'running', 'stopping', 'stopped', 'failed', 'migrating'],
  update: ['pending', 'scheduled', 'starting', 'running', 'stopping', 'stopped', 'failed', 'migrating'],
  snapshot: ['running', 'stopped'],
  revert: ['running', 'stopped'],
  'delete snapshots of': ['running', 'stopped', 'failed'],
  'export snapshots of': ['running', 'stopped', 'failed'],
  migrate: ['running', 'stopped'],
};

/** Internal transitions the control plane itself performs (agent reports, operations). */
const TRANSITIONS: Record<PartitionState, readonly PartitionState[]> = {
  pending: ['scheduled', 'failed', 'deleting'],
  scheduled: ['starting', 'stopped', 'failed', 'deleting'],
  starting: ['running', 'stopping', 'stopped', 'failed', 'deleting'],
  running: ['stopping', 'starting', 'stopped', 'failed', 'deleting', 'migrating'],
  stopping: ['stopped', 'running', 'failed', 'deleting'],
  stopped: ['starting', 'scheduled', 'failed', 'deleting', 'migrating'],
  failed: ['starting', 'stopped', 'scheduled', 'deleting'],
  deleting: ['failed'],
  migrating: ['running', 'stopped', 'failed'],
};

/** True when `action` may be requested while the partition is in `state`. */
export function canPerform(action: PartitionAction, state: PartitionState): boolean {
  return ALLOWED[action].includes(state);
}

/**
 * Throws {@link PartitionStateError} unless `action` is allowed in `state`.
 * The message names the partition and its current state: "cannot start partition web-1: it is running".
 */
export function assertCanPerform(action: PartitionAction, partition: { name: string; state: PartitionState }): void {
  if (!canPerform(action, partition.state)) {
    throw new PartitionStateError(action, partition.name, partition.state);
  }
}

/** True when the control plane may move a partition from `from` to `to`. */
export function canTransition(from: PartitionState, to: PartitionState): boolean {
  return from === to || TRANSITIONS[from].includes(to);
}

/** Throws unless `from → to` is a legal internal transition. */
export function assertTransition(name: string, from: PartitionState, to: PartitionState): void {
  if (!canTransition(from, to)) {
    throw new FailedPreconditionError(`partition ${name} cannot go from ${from} to ${to}`);
  }
}

/** True for states in which a guest process may exist on a node. */
export function isActive(state: PartitionState): boolean {
  return state === 'starting' || state === 'running' || state === 'stopping' || state === 'migrating';
}

/** The action is not allowed in the partition's current state (409 / FAILED_PRECONDITION). */
export class PartitionStateError extends FailedPreconditionError {
  constructor(
    readonly action: PartitionAction,
    readonly partitionName: string,
    readonly state: PartitionState,
  ) {
    super(`cannot ${action} partition ${partitionName}: it is ${state}`);
  }
}
