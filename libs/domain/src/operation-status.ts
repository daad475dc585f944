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

/** What decides whether an operation can be cancelled now. */
export interface CancelSubject {
  kind: string;
  status: OperationStatus;
  /** The request's parameters (`live` for a migration). */
  params?: Record<string, unknown>;
  /** A migration's phase and mode, as its operation shows them. */
  migration?: { phase?: string; mode?: string };
}

/** Phases of a live migration in which a cancel still leaves the guest running on the source. */
const PRE_COPY_PHASES = ['preparing', 'storage', 'memory'];
/** Phases a migration's operation shows while it records how the migration ended. */
const ENDING_PHASES = ['completed', 'failed', 'cancelled'];

/**
 * Kinds whose operation can be cancelled while it runs (Incus's `may_cancel`), each with why it
 * cannot be at the moment, if so. A create or start is stopped again; a drain leaves the node
 * cordoned; an import stops its transfer; a live migration in pre-copy, or a cold one before its
 * disk copy, leaves the partition on the source.
 */
const CANCEL_WHILE_RUNNING: Record<string, (op: CancelSubject) => string | undefined> = {
  'partition.create': () => undefined,
  'partition.start': () => undefined,
  'node.drain': () => undefined,
  'image.import': () => undefined,
  'partition.migrate': (op) => {
    const phase = op.migration?.phase;
    if (phase && ENDING_PHASES.includes(phase)) return `the migration is ending (phase ${phase})`;
    if (op.params?.live !== true || op.migration?.mode === 'cold') {
      return phase && phase !== 'preparing' ? 'a cold migration is not stopped halfway through copying its disk' : undefined;
    }
    if (phase && !PRE_COPY_PHASES.includes(phase)) return `the migration is past pre-copy (phase ${phase}): it can only end on the destination now`;
    return undefined;
  },
};

/** Why a running operation of a kind not in CANCEL_WHILE_RUNNING cannot be cancelled. */
const ONCE_STARTED: Record<string, string> = {
  'partition.stop': 'the node is stopping the guest',
  'partition.reboot': 'the node is resetting the guest',
  'partition.delete': 'the node is removing the guest and its files',
  'snapshot.create': "QEMU's snapshot save is not stopped halfway",
  'snapshot.revert': "QEMU's snapshot load is not stopped halfway (the guest's state would be neither the old nor the new)",
  'snapshot.delete': "QEMU's snapshot delete is not stopped halfway",
};

/**
 * Why `op` cannot be cancelled now, or undefined when a cancel request takes effect: any live
 * operation before it started (its request's records are undone), and a running one of a kind
 * that can stop halfway without leaving anything half done.
 */
export function cancelRefusal(op: CancelSubject): string | undefined {
  if (isFinal(op.status)) return `it is ${op.status}`;
  if (op.status === 'pending') return undefined;
  const rule = CANCEL_WHILE_RUNNING[op.kind];
  if (rule) return rule(op);
  return `a ${op.kind} operation cannot be cancelled once it has started: ${ONCE_STARTED[op.kind] ?? 'its steps are not stopped halfway'}`;
}
