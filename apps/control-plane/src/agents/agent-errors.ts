import { CancelledError, DeadlineExceededError, DomainError, FailedPreconditionError, InternalError, UnavailableError } from '@hyperplane/domain';
import { agentV1 } from '@hyperplane/proto';

/** Thrown for a node's answer `NOT_FOUND` (the node does not have what the command names). */
export class NotOnNodeError extends FailedPreconditionError {}

/**
 * The domain error for a command a node answered with a failure: `what` says what was asked
 * ("snapshot s1 of partition web-1"), the node's message says why. The node's error code picks
 * the class, so the API answers with the status the node meant.
 */
export function agentFailure(r: agentV1.CommandResult__Output, what: string): DomainError {
  const message = `${what}: ${r.errorMessage || r.errorCode || 'the node gave no reason'}`;
  switch (r.errorCode) {
    case 'FAILED_PRECONDITION':
    case 'INVALID_ARGUMENT':
      return new FailedPreconditionError(message);
    case 'NOT_FOUND':
      return new NotOnNodeError(message);
    case 'CANCELLED':
      return new CancelledError(message);
    case 'UNAVAILABLE':
      return new UnavailableError(message);
    case 'DEADLINE_EXCEEDED':
      return new DeadlineExceededError(message);
    default:
      return new InternalError(message);
  }
}
