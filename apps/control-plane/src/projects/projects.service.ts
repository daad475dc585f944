import { Injectable } from '@nestjs/common';
import { NotFoundError, PROJECT_ROLES, Principal, Role, requireRole, uuidv7 } from '@hyperplane/domain';
import { checkIfMatch, etagOf } from '../common/etag';
import { Page, parsePage, toPage } from '../common/pagination';
import { MutationOptions, TransactionRunner } from '../common/transactions';
import { AuthService } from './auth.service';
import { ProjectRepository, ProjectRow } from './project.repository';
import { TokenRepository, TokenRow } from './token.repository';
import { CreateProjectInput, CreateTokenInput, UpdateProjectInput } from './projects.dto';

/** A project as both APIs show it. */
export interface ProjectView {
  id: string;
  name: string;
  description: string;
  quota: Record<string, number>;
  etag: string;
  createdAt: string;
  updatedAt: string;
}

/** A token as both APIs show it; `token` only in the create response. */
export interface TokenView {
  id: string;
  projectId: string | null;
  role: Role;
  description: string;
  prefix: string;
  createdAt: string;
  lastUsedAt: string | null;
  token?: string;
}

/** Maps a project row to its view. */
export function projectView(r: ProjectRow): ProjectView {
  return { id: r.id, name: r.name, description: r.description, quota: r.quota ?? {}, etag: etagOf(r.version), createdAt: r.created_at.toISOString(), updatedAt: r.updated_at.toISOString() };
}

function tokenView(r: TokenRow, secret?: string): TokenView {
  const v: TokenView = {
    id: r.id,
    projectId: r.project_id,
    role: r.role,
    description: r.description,
    prefix: r.prefix,
    createdAt: r.created_at.toISOString(),
    lastUsedAt: r.last_used_at ? r.last_used_at.toISOString() : null,
  };
  if (secret) v.token = secret;
  return v;
}

/** Projects (tenants) and their API tokens. */
@Injectable()
export class ProjectsService {
  constructor(
    private readonly projects: ProjectRepository,
    private readonly tokens: TokenRepository,
    private readonly auth: AuthService,
    private readonly tx: TransactionRunner,
  ) {}

  /** Creates a project (cluster-admin only). */
  create(principal: Principal, input: CreateProjectInput, opts: MutationOptions = {}): Promise<ProjectView> {
    requireRole(principal, 'cluster-admin', 'create projects');
    return this.tx.run({ scope: principal.tokenId, name: 'projects.create', input, key: opts.idempotencyKey }, async (db) =>
      projectView(await this.projects.insert(db, { id: uuidv7(), name: input.name, description: input.description ?? '' })),
    );
  }

  /** Lists projects: all of them for a cluster admin, only its own for a project token. */
  async list(principal: Principal, pageSize?: unknown, pageToken?: unknown): Promise<Page<ProjectView>> {
    const page = parsePage(pageSize, pageToken);
    const rows = await this.projects.list(page, principal.projectId ?? undefined);
    return toPage(rows, page, projectView);
  }

  /** Gets a project the caller can see. */
  async get(principal: Principal, ref: string): Promise<ProjectView> {
    return projectView(await this.visibleProject(principal, ref));
  }

  /** Changes a project's description or quota (cluster admins); honours If-Match. */
  async update(principal: Principal, ref: string, input: UpdateProjectInput, opts: MutationOptions = {}): Promise<ProjectView> {
    requireRole(principal, 'cluster-admin', 'update projects');
    const p = await this.visibleProject(principal, ref);
    return this.tx.run({ scope: principal.tokenId, name: 'projects.update', input: { ref: p.id, input } }, async (db) => {
      const row = await this.projects.lock(db, p.id);
      if (!row) throw new NotFoundError('project', ref);
      checkIfMatch('project', p.id, opts.ifMatch, row.version);
      const quota = input.quota ? Object.fromEntries(Object.entries(input.quota).filter(([, v]) => v !== undefined)) as Record<string, number> : undefined;
      return projectView(await this.projects.update(db, p.id, { description: input.description, quota }));
    });
  }

  /** Creates a token in a project (its admins or a cluster admin); the secret is returned once. */
  async createToken(principal: Principal, ref: string, input: CreateTokenInput, opts: MutationOptions = {}): Promise<TokenView> {
    const project = await this.visibleProject(principal, ref);
    requireRole(principal, 'admin', 'create tokens');
    return this.tx.run({ scope: principal.tokenId, name: 'tokens.create', input: { ref: project.id, input }, key: opts.idempotencyKey }, async (db) => {
      const { secret, hash, prefix } = AuthService.newSecret();
      const row = await this.tokens.insert(db, { id: uuidv7(), projectId: project.id, role: input.role, hash, prefix, description: input.description ?? '' });
      return tokenView(row, secret);
    });
  }

  /** Lists a project's tokens (never their secrets). */
  async listTokens(principal: Principal, ref: string, pageSize?: unknown, pageToken?: unknown): Promise<Page<TokenView>> {
    const project = await this.visibleProject(principal, ref);
    requireRole(principal, 'admin', 'list tokens');
    const page = parsePage(pageSize, pageToken);
    return toPage(await this.tokens.list(project.id, page), page, (r) => tokenView(r));
  }

  /** Deletes (revokes) a token; every replica stops accepting it at once. */
  async deleteToken(principal: Principal, ref: string, tokenId: string): Promise<void> {
    const project = await this.visibleProject(principal, ref);
    requireRole(principal, 'admin', 'delete tokens');
    const deleted = await this.tx.run({ scope: principal.tokenId, name: 'tokens.delete', input: tokenId }, (db) => this.tokens.delete(db, project.id, tokenId));
    if (!deleted) throw new NotFoundError('token', tokenId);
    await this.auth.revoked(tokenId);
  }

  /** Creates the first cluster-admin token when none exists; returns its secret, or null. */
  async bootstrapClusterAdmin(): Promise<string | null> {
    if (await this.tokens.hasClusterAdmin()) return null;
    const { secret, hash, prefix } = AuthService.newSecret();
    await this.tx.run({ scope: 'bootstrap', name: 'bootstrap', input: null }, (db) =>
      this.tokens.insert(db, { id: uuidv7(), projectId: null, role: 'cluster-admin', hash, prefix, description: 'created by the first start' }),
    );
    return secret;
  }

  /** A project the principal belongs to (or any, for a cluster admin); others are 404. */
  private async visibleProject(principal: Principal, ref: string): Promise<ProjectRow> {
    const p = await this.projects.findByIdOrName(ref);
    if (!p || (principal.projectId !== null && principal.projectId !== p.id)) throw new NotFoundError('project', ref);
    return p;
  }
}

/** Roles accepted for new project tokens. */
export const TOKEN_ROLES = PROJECT_ROLES;
