/**
 * Domain errors: every area throws these, and each transport maps them to its own status in
 * exactly one place (the REST exception filter and the gRPC error mapper). Libraries never throw
 * transport exceptions.
 */

/** A field-level problem in a request, named by its dotted path (`placement.node`). */
export interface FieldError {
  field: string;
  message: string;
}

/** One reason a request could not be satisfied, with how many things it applied to. */
export interface ReasonCount {
  reason: string;
  count: number;
  message: string;
}

/** The machine-readable error codes shared by REST (`code`) and gRPC (status name). */
export type ErrorCode =
  | 'INVALID_ARGUMENT'
  | 'UNAUTHENTICATED'
  | 'PERMISSION_DENIED'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'FAILED_PRECONDITION'
  | 'ABORTED'
  | 'PAYLOAD_TOO_LARGE'
  | 'RESOURCE_EXHAUSTED'
  | 'UNAVAILABLE'
  | 'CANCELLED'
  | 'DEADLINE_EXCEEDED'
  | 'INTERNAL';

/** Base of all errors a client may see; `message` is the detail shown to the user. */
export abstract class DomainError extends Error {
  abstract readonly code: ErrorCode;
  /** Field-level problems (validation) for `errors[]` in problem+json. */
  readonly fieldErrors: FieldError[] = [];
  /** Per-reason counts (capacity) for `reasons[]` in problem+json. */
  readonly reasons: ReasonCount[] = [];

  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** Malformed or invalid input; carries one entry per offending field. */
export class ValidationError extends DomainError {
  readonly code = 'INVALID_ARGUMENT' as const;
  override readonly fieldErrors: FieldError[];

  constructor(fieldErrors: FieldError[], message?: string) {
    super(message ?? fieldErrors.map((e) => `${e.field}: ${e.message}`).join('; '));
    this.fieldErrors = fieldErrors;
  }

  /** A single-field validation error. */
  static field(field: string, message: string): ValidationError {
    return new ValidationError([{ field, message }]);
  }
}

/** No token, or a token that is unknown or revoked. */
export class UnauthenticatedError extends DomainError {
  readonly code = 'UNAUTHENTICATED' as const;
}

/** The caller's role does not allow the action. */
export class PermissionDeniedError extends DomainError {
  readonly code = 'PERMISSION_DENIED' as const;
}

/** Unknown id, or one that belongs to another project (never tell the two apart). */
export class NotFoundError extends DomainError {
  readonly code = 'NOT_FOUND' as const;

  constructor(kind: string, id: string) {
    super(`${kind} '${id}' not found`);
  }
}

/** A name is already taken within its scope. */
export class AlreadyExistsError extends DomainError {
  readonly code = 'ALREADY_EXISTS' as const;

  constructor(kind: string, name: string, scope = 'this project') {
    super(`${kind} named '${name}' already exists in ${scope}`);
  }
}

/** The resource is in the wrong state for the action; the message names the current state. */
export class FailedPreconditionError extends DomainError {
  readonly code = 'FAILED_PRECONDITION' as const;
}

/** `If-Match` did not match the resource's current etag. */
export class EtagMismatchError extends DomainError {
  readonly code = 'ABORTED' as const;

  constructor(kind: string, id: string, current: string) {
    super(`${kind} '${id}' has changed: If-Match does not match the current etag ${current}`);
  }
}

/** A request body over the size limit. */
export class PayloadTooLargeError extends DomainError {
  readonly code = 'PAYLOAD_TOO_LARGE' as const;
}

/** Quota or capacity exhausted; `reasons` says why, with counts. */
export class ResourceExhaustedError extends DomainError {
  readonly code = 'RESOURCE_EXHAUSTED' as const;
  override readonly reasons: ReasonCount[];

  constructor(message: string, reasons: ReasonCount[] = []) {
    super(message);
    this.reasons = reasons;
  }
}

/** A dependency (PostgreSQL, Redis, a node) is unreachable. */
export class UnavailableError extends DomainError {
  readonly code = 'UNAVAILABLE' as const;
}

/** A wait ran out of time. */
export class DeadlineExceededError extends DomainError {
  readonly code = 'DEADLINE_EXCEEDED' as const;
}

/** The work was cancelled on request. */
export class CancelledError extends DomainError {
  readonly code = 'CANCELLED' as const;
}

/** A bug or an unexpected fault; the message is safe to show. */
export class InternalError extends DomainError {
  readonly code = 'INTERNAL' as const;
}
