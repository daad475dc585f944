import { ResourceExhaustedError } from '@hyperplane/domain';
import type { Rejected } from './stack';

/** No node can take the partition; `reasons` counts nodes per first failing filter (422). */
export class NoNodeFitsError extends ResourceExhaustedError {}

/** The project's quota does not allow the partition; one reason per exceeded limit (422). */
export class QuotaExceededError extends ResourceExhaustedError {}

/** The domain error for a refused placement, for a service to throw. */
export function rejectionError(r: Rejected): ResourceExhaustedError {
  return r.kind === 'quota' ? new QuotaExceededError(r.message, r.reasons) : new NoNodeFitsError(r.message, r.reasons);
}
