import { Inject, Injectable } from '@nestjs/common';
import { AlreadyExistsError, UUID_RE } from '@hyperplane/domain';
import { DataSource } from 'typeorm';
import { Db, rows, isUniqueViolation } from '../database/database';
import { PageRequest } from '../common/pagination';
import { Where } from '../database/where';
import { DATA_SOURCE } from '../common/tokens';

/** A projects row. */
export interface ProjectRow {
  id: string;
  name: string;
  description: string;
  quota: Record<string, number>;
  version: number;
  created_at: Date;
  updated_at: Date;
}

/** SQL for projects. */
@Injectable()
export class ProjectRepository {
  constructor(@Inject(DATA_SOURCE) private readonly ds: DataSource) {}

  /** Inserts a project; a taken name is {@link AlreadyExistsError}. */
  async insert(tx: Db, p: { id: string; name: string; description: string }): Promise<ProjectRow> {
    try {
      const found = await rows<ProjectRow>(tx, 
        `INSERT INTO projects (id, name, description) VALUES ($1, $2, $3) RETURNING *`,
        [p.id, p.name, p.description],
      );
      return found[0]!;
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExistsError('project', p.name, 'the cluster');
      throw e;
    }
  }

  /** Finds a project by id or name. */
  async findByIdOrName(ref: string, db: Db = this.ds): Promise<ProjectRow | undefined> {
    const found = await rows<ProjectRow>(db, `SELECT * FROM projects WHERE ${UUID_RE.test(ref) ? 'id' : 'name'} = $1`, [ref]);
    return found[0];
  }

  /** Updates description and/or quota, bumping the version. */
  async update(tx: Db, id: string, patch: { description?: string; quota?: Record<string, number> }): Promise<ProjectRow> {
    const found = await rows<ProjectRow>(tx,
      `UPDATE projects SET description = COALESCE($2, description), quota = COALESCE($3::jsonb, quota), version = version + 1, updated_at = now()
       WHERE id = $1 RETURNING *`,
      [id, patch.description ?? null, patch.quota ? JSON.stringify(patch.quota) : null],
    );
    return found[0]!;
  }

  /** A locked project row. */
  async lock(tx: Db, id: string): Promise<ProjectRow | undefined> {
    const found = await rows<ProjectRow>(tx, `SELECT * FROM projects WHERE id = $1 FOR UPDATE`, [id]);
    return found[0];
  }

  /** A project's quota (empty when unlimited). */
  async quota(db: Db, id: string): Promise<Record<string, number>> {
    const found = await rows<{ quota: Record<string, number> }>(db, `SELECT quota FROM projects WHERE id = $1`, [id]);
    return found[0]?.quota ?? {};
  }

  /** A keyset page of projects, optionally only one (for project-scoped callers). */
  async list(page: PageRequest, onlyId?: string): Promise<ProjectRow[]> {
    const w = new Where().add('id > ?', page.afterId).add('id = ?', onlyId);
    return rows(this.ds, `SELECT * FROM projects ${w} ORDER BY id LIMIT ${w.bind(page.pageSize + 1)}`, w.params);
  }
}
