/**
 * The one place domain errors become HTTP answers: RFC 9457 problem+json, naming the field where
 * there is one (API.md, Errors).
 */
import { DomainError, ErrorCode } from '@hyperplane/domain';

/** HTTP status for each error code. */
export const HTTP_STATUS: Record<ErrorCode, number> = {
  INVALID_ARGUMENT: 400,
  UNAUTHENTICATED: 401,
  PERMISSION_DENIED: 403,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  FAILED_PRECONDITION: 409,
  ABORTED: 412,
  PAYLOAD_TOO_LARGE: 413,
  RESOURCE_EXHAUSTED: 422,
  UNAVAILABLE: 503,
  CANCELLED: 499,
  DEADLINE_EXCEEDED: 504,
  INTERNAL: 500,
};

const TITLES: Record<number, string> = {
  400: 'Bad Request', 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed', 406: 'Not Acceptable',
  409: 'Conflict', 412: 'Precondition Failed', 413: 'Content Too Large', 415: 'Unsupported Media Type', 422: 'Unprocessable Content',
  499: 'Client Closed Request', 500: 'Internal Server Error', 503: 'Service Unavailable', 504: 'Gateway Timeout',
};

/** An RFC 9457 problem document. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: string;
  errors?: Array<{ field: string; message: string }>;
  reasons?: Array<{ reason: string; count: number; message: string }>;
  instance?: string;
}

/** Builds a problem document for any thrown value. Non-domain errors become a 500 without internals. */
export function toProblem(e: unknown, instance?: string): Problem {
  if (e instanceof DomainError) {
    const status = HTTP_STATUS[e.code];
    const p: Problem = { type: `https://hyperplane.dev/problems/${e.code.toLowerCase().replace(/_/g, '-')}`, title: TITLES[status] ?? 'Error', status, detail: e.message, code: e.code };
    if (e.fieldErrors.length) p.errors = e.fieldErrors;
    if (e.reasons.length) p.reasons = e.reasons;
    if (instance) p.instance = instance;
    return p;
  }
  return { type: 'about:blank', title: TITLES[500]!, status: 500, detail: 'internal error', code: 'INTERNAL', instance };
}

/** A problem for a plain HTTP status raised by the web stack (bad JSON, 413, 404 route, 415). */
export function httpProblem(status: number, detail: string, code: string, errors?: Problem['errors']): Problem {
  const p: Problem = { type: 'about:blank', title: TITLES[status] ?? 'Error', status, detail, code };
  if (errors) p.errors = errors;
  return p;
}
