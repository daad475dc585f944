import { CanActivate, createParamDecorator, ExecutionContext, Injectable, SetMetadata } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { Principal as P } from '@hyperplane/domain';
import type { FastifyRequest } from 'fastify';
import { AuthService } from '../projects/auth.service';

const PUBLIC = 'hp:public';

/** Marks a route that needs no token (health checks, docs). */
export const Public = () => SetMetadata(PUBLIC, true);

/** REST guard: resolves the bearer token on every route not marked {@link Public}. */
@Injectable()
export class AuthGuard implements CanActivate {
  constructor(
    private readonly auth: AuthService,
    private readonly reflector: Reflector,
  ) {}

  async canActivate(ctx: ExecutionContext): Promise<boolean> {
    if (this.reflector.getAllAndOverride<boolean>(PUBLIC, [ctx.getHandler(), ctx.getClass()])) return true;
    const req = ctx.switchToHttp().getRequest<FastifyRequest & { principal?: P }>();
    req.principal = await this.auth.authenticate(req.headers.authorization);
    return true;
  }
}

/** The caller, as resolved by {@link AuthGuard}. */
export const Caller = createParamDecorator((_: unknown, ctx: ExecutionContext): P => {
  return ctx.switchToHttp().getRequest<{ principal: P }>().principal;
});

