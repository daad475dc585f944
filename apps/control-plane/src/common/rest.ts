import { createParamDecorator, ExecutionContext } from '@nestjs/common';
import { ValidationError } from '@hyperplane/domain';
import type { FastifyRequest } from 'fastify';
import { parseIfMatch } from './etag';
import { MutationOptions } from './transactions';

/** Reads Idempotency-Key, If-Match and the request id into {@link MutationOptions}. */
export function mutationOptions(idempotencyKey?: string, ifMatch?: string, requestId?: string): MutationOptions {
  const parsed = parseIfMatch(ifMatch);
  if (parsed === -1) throw ValidationError.field('If-Match', `must be an etag such as "3" (got ${JSON.stringify(ifMatch)})`);
  return { idempotencyKey: idempotencyKey || undefined, ifMatch: parsed, requestId };
}

/** REST: the {@link MutationOptions} of the current request. */
export const Mutation = createParamDecorator((_: unknown, ctx: ExecutionContext): MutationOptions => {
  const req = ctx.switchToHttp().getRequest<FastifyRequest>();
  const header = (name: string) => {
    const v = req.headers[name];
    return Array.isArray(v) ? v[0] : v;
  };
  return mutationOptions(header('idempotency-key'), header('if-match'), String(req.id));
});
