import { FailedPreconditionError } from './errors';

/** Status of a long-running operation (API.md, Operations). */
export const OPERATION_STATUSES = ['pending', 'running', 'succeeded', 'failed', 'cancelled'] as const;

/** One of {@link OPERATION_STATUSES}. */
export type OperationStatus = (typeof OPERATION_STATUSES)[number];

const NEXT: Record<OperationStatus, readonly OperationStatus[]> = {
  pending: ['running', 'failed', 'cancelled'],
  running: ['succeeded', 'failed', 'cancelled'],
  succeeded: [],
  failed: [],
  cancelled: [],
};

/** True once an operation can no longer change. */
export function isFinal(status: OperationStatus): boolean {
  return NEXT[status].length === 0;
}

/** True when `from → to` is a legal operation transition. */
export function canTransitionOperation(from: OperationStatus, to: OperationStatus): boolean {
  return NEXT[from].includes(to);
}

/** Throws unless the operation may move from `from` to `to`. */
export function assertOperationTransition(id: string, from: OperationStatus, to: OperationStatus): void {
  if (!canTransitionOperation(from, to)) {
    throw new FailedPreconditionError(`operation ${id} cannot go from ${from} to ${to}`);
  }
}

/** Statuses a cancel request still has an effect on. */
export function isCancellable(status: OperationStatus): boolean {
  return status === 'pending' || status === 'running';
}
