import { Inject, Injectable } from '@nestjs/common';
import { Role } from '@hyperplane/domain';
import { DataSource } from 'typeorm';
import { Db, affected, rows } from '../database/database';
import { PageRequest } from '../common/pagination';
import { Where } from '../database/where';
import { DATA_SOURCE } from '../common/tokens';

/** An api_tokens row (never the secret itself, only its hash). */
export interface TokenRow {
  id: string;
  project_id: string | null;
  role: Role;
  prefix: string;
  description: string;
  version: number;
  created_at: Date;
  last_used_at: Date | null;
}

/** SQL for API tokens. */
@Injectable()
export class TokenRepository {
  constructor(@Inject(DATA_SOURCE) private readonly ds: DataSource) {}

  /** Stores a token by its hash. */
  async insert(
    tx: Db,
    t: { id: string; projectId: string | null; role: Role; hash: Buffer; prefix: string; description: string },
  ): Promise<TokenRow> {
    const found = await rows<TokenRow>(tx, 
      `INSERT INTO api_tokens (id, project_id, role, token_hash, prefix, description) VALUES ($1, $2, $3, $4, $5, $6)
       RETURNING id, project_id, role, prefix, description, version, created_at, last_used_at`,
      [t.id, t.projectId, t.role, t.hash, t.prefix, t.description],
    );
    return found[0]!;
  }

  /** Looks a token up by the hash of its secret. */
  async findByHash(hash: Buffer): Promise<Pick<TokenRow, 'id' | 'project_id' | 'role'> | undefined> {
    const found = await rows<Pick<TokenRow, 'id' | 'project_id' | 'role'>>(this.ds, `SELECT id, project_id, role FROM api_tokens WHERE token_hash = $1`, [hash]);
    return found[0];
  }

  /** Marks a token used (at most once a minute, to keep reads cheap). */
  async touch(id: string): Promise<void> {
    await this.ds.query(
      `UPDATE api_tokens SET last_used_at = now() WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')`,
      [id],
    );
  }

  /** A keyset page of one project's tokens. */
  list(projectId: string, page: PageRequest): Promise<TokenRow[]> {
    const w = new Where().add('project_id = ?', projectId).add('id > ?', page.afterId);
    return rows(this.ds, `SELECT id, project_id, role, prefix, description, version, created_at, last_used_at FROM api_tokens ${w} ORDER BY id LIMIT ${w.bind(page.pageSize + 1)}`, w.params);
  }

  /** Deletes one project's token; returns false when there was none. */
  async delete(tx: Db, projectId: string, id: string): Promise<boolean> {
    return (await affected(tx, `DELETE FROM api_tokens WHERE project_id = $1 AND id = $2`, [projectId, id])) > 0;
  }

  /** True when any cluster-admin token exists. */
  async hasClusterAdmin(): Promise<boolean> {
    const found = await rows<unknown>(this.ds, `SELECT 1 FROM api_tokens WHERE role = 'cluster-admin' LIMIT 1`);
    return found.length > 0;
  }
}
