import { parseIfMatch } from './etag';
import { MutationOptions } from './transactions';
import { ValidationError } from '@hyperplane/domain';

/** Reads Idempotency-Key and If-Match into {@link MutationOptions}. */
export function mutationOptions(idempotencyKey?: string, ifMatch?: string): MutationOptions {
  const parsed = parseIfMatch(ifMatch);
  if (parsed === -1) throw ValidationError.field('If-Match', `must be an etag such as "3" (got ${JSON.stringify(ifMatch)})`);
  return { idempotencyKey: idempotencyKey || undefined, ifMatch: parsed };
}
