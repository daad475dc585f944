import { createHash, randomBytes } from 'node:crypto';
import { Inject, Injectable, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import { NotFoundError, Principal, UnauthenticatedError, ValidationError } from '@hyperplane/domain';
import { Redis } from 'ioredis';
import { Config, CONFIG } from '../config';
import { REDIS, REDIS_SUB } from '../common/tokens';
import { ProjectRepository } from './project.repository';
import { TokenRepository } from './token.repository';

/** How long a resolved token stays cached; a revocation reaches every replica at once through Redis. */
const CACHE_MS = 30_000;
const TOKEN_PREFIX = 'hp_';

/**
 * Resolves bearer tokens into principals and project scopes. Tokens are random 256-bit secrets
 * stored as SHA-256 hashes; lookups are cached per replica and invalidated over Redis pub/sub
 * when a token is deleted.
 */
@Injectable()
export class AuthService implements OnModuleInit, OnModuleDestroy {
  private readonly cache = new Map<string, { principal: Principal; until: number }>();
  private readonly channel: string;
  private readonly onMessage = (channel: string, tokenId: string) => {
    if (channel === this.channel) this.forgetToken(tokenId);
  };

  constructor(
    private readonly tokens: TokenRepository,
    private readonly projects: ProjectRepository,
    @Inject(REDIS) private readonly redis: Redis,
    @Inject(REDIS_SUB) private readonly sub: Redis,
    @Inject(CONFIG) config: Config,
  ) {
    this.channel = `${config.redisPrefix}:token-revoked`;
  }

  async onModuleInit(): Promise<void> {
    this.sub.on('message', this.onMessage);
    await this.sub.subscribe(this.channel);
  }

  async onModuleDestroy(): Promise<void> {
    this.sub.off('message', this.onMessage);
  }

  /** A new token secret and the hash stored for it. */
  static newSecret(): { secret: string; hash: Buffer; prefix: string } {
    const secret = TOKEN_PREFIX + randomBytes(32).toString('base64url');
    return { secret, hash: AuthService.hash(secret), prefix: secret.slice(0, TOKEN_PREFIX.length + 6) };
  }

  /** SHA-256 of a token secret. */
  static hash(secret: string): Buffer {
    return createHash('sha256').update(secret).digest();
  }

  /** Resolves an `Authorization` header value; throws {@link UnauthenticatedError} for anything but a live token. */
  async authenticate(authorization: string | undefined): Promise<Principal> {
    if (!authorization) throw new UnauthenticatedError('missing Authorization header: send "Authorization: Bearer <token>"');
    const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
    if (!m) throw new UnauthenticatedError('Authorization header must be "Bearer <token>"');
    const secret = m[1]!;
    const now = Date.now();
    const hit = this.cache.get(secret);
    if (hit && hit.until > now) return hit.principal;
    const row = secret.startsWith(TOKEN_PREFIX) ? await this.tokens.findByHash(AuthService.hash(secret)) : undefined;
    if (!row) throw new UnauthenticatedError('the bearer token is not valid');
    const principal: Principal = { tokenId: row.id, role: row.role, projectId: row.project_id };
    if (this.cache.size > 10_000) this.cache.clear();
    this.cache.set(secret, { principal, until: now + CACHE_MS });
    void this.tokens.touch(row.id).catch(() => undefined);
    return principal;
  }

  /** Tells every replica that a token is gone. */
  async revoked(tokenId: string): Promise<void> {
    this.forgetToken(tokenId);
    await this.redis.publish(this.channel, tokenId);
  }

  private forgetToken(tokenId: string): void {
    for (const [k, v] of this.cache) if (v.principal.tokenId === tokenId) this.cache.delete(k);
  }

  /** Like {@link projectScope}, but a cluster admin naming no project acts across all of them (null). */
  async projectOrAll(principal: Principal, requested?: string): Promise<string | null> {
    if (!principal.projectId && !requested) return null;
    return this.projectScope(principal, requested);
  }

  /**
   * The project a request acts in. A project token acts in its own project (naming another one is
   * a 404); a cluster-admin token must name one (`?project=` or the path).
   */
  async projectScope(principal: Principal, requested?: string): Promise<string> {
    if (principal.projectId) {
      if (!requested || requested === principal.projectId) return principal.projectId;
      const named = await this.projects.findByIdOrName(requested);
      if (named?.id !== principal.projectId) throw new NotFoundError('project', requested);
      return named.id;
    }
    if (!requested) {
      throw ValidationError.field('project', 'a cluster-admin token must name the project (query parameter "project")');
    }
    const p = await this.projects.findByIdOrName(requested);
    if (!p) throw new NotFoundError('project', requested);
    return p.id;
  }
}
