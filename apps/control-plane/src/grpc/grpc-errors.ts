/** The one place domain errors become gRPC statuses (API.md, Errors): same code, same message. */
import { Metadata, status, StatusObject } from '@grpc/grpc-js';
import { DomainError, ErrorCode } from '@hyperplane/domain';

/** gRPC status for each error code. */
export const GRPC_STATUS: Record<ErrorCode, status> = {
  INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  UNAUTHENTICATED: status.UNAUTHENTICATED,
  PERMISSION_DENIED: status.PERMISSION_DENIED,
  NOT_FOUND: status.NOT_FOUND,
  ALREADY_EXISTS: status.ALREADY_EXISTS,
  FAILED_PRECONDITION: status.FAILED_PRECONDITION,
  ABORTED: status.ABORTED,
  PAYLOAD_TOO_LARGE: status.RESOURCE_EXHAUSTED,
  RESOURCE_EXHAUSTED: status.RESOURCE_EXHAUSTED,
  UNAVAILABLE: status.UNAVAILABLE,
  CANCELLED: status.CANCELLED,
  DEADLINE_EXCEEDED: status.DEADLINE_EXCEEDED,
  INTERNAL: status.INTERNAL,
};

/**
 * A gRPC error for any thrown value. Field errors and reasons travel as JSON in the
 * `hp-error-details` trailer, the same list REST puts in `errors[]` / `reasons[]`.
 */
export function toGrpcError(e: unknown): Partial<StatusObject> {
  const metadata = new Metadata();
  if (e instanceof DomainError) {
    metadata.set('hp-error-code', e.code);
    if (e.fieldErrors.length || e.reasons.length) metadata.set('hp-error-details', JSON.stringify({ errors: e.fieldErrors, reasons: e.reasons }));
    return { code: GRPC_STATUS[e.code], details: e.message, metadata };
  }
  return { code: status.INTERNAL, details: 'internal error', metadata };
}
