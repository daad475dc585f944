import { Inject, Injectable } from '@nestjs/common';
import { AlreadyExistsError, PartitionState } from '@hyperplane/domain';
import { DataSource } from 'typeorm';
import { Db, rows, isUniqueViolation } from '../database/database';
import { PageRequest } from '../common/pagination';
import { Where } from '../database/where';
import { DATA_SOURCE } from '../common/tokens';

/** What the control plane wants a node to do with a partition. */
export type Desired = 'running' | 'stopped' | 'absent';

/** A partitions row. */
export interface PartitionRow {
  id: string;
  project_id: string;
  name: string;
  description: string;
  state: PartitionState;
  state_reason: string;
  desired: Desired;
  generation: string | number;
  observed_state: string;
  observed_generation: string | number;
  node_id: string | null;
  vcpus: number;
  memory_mib: string | number;
  disk_gib: number;
  image: string;
  /** The library image the disk is based on; null for a file of the node's own store. */
  image_id: string | null;
  labels: Record<string, string>;
  placement: PlacementSpecRow;
  placement_group: string | null;
  /** The destination while the partition is `migrating`. */
  target_node_id: string | null;
  /** The reason its node last reported with its state ("migrating to ...", "migrated away"). */
  observed_reason: string;
  /** The snapshot its current state descends from: the parent of the next snapshot. */
  current_snapshot_id: string | null;
  version: number;
  created_at: Date;
  updated_at: Date;
}

/** The placement request stored with a partition (see PlacementSpec). */
export type PlacementSpecRow = { group?: string; [key: string]: unknown };

/** A new partition. */
export interface NewPartition {
  id: string;
  projectId: string;
  name: string;
  description: string;
  state: PartitionState;
  nodeId: string | null;
  vcpus: number;
  memoryMiB: number;
  diskGiB: number;
  image: string;
  /** The library image's id when `image` names one (see ImagePolicy.admit). */
  imageId?: string | null;
  labels: Record<string, string>;
  placement?: PlacementSpecRow;
}

/** List filters. */
export interface PartitionFilter {
  state?: string;
  labels?: Record<string, string>;
  nodeId?: string;
}

/** SQL for partitions. */
@Injectable()
export class PartitionRepository {
  constructor(@Inject(DATA_SOURCE) private readonly ds: DataSource) {}

  /**
   * Inserts partitions that differ only in id, name and node (a create with `count`) in one
   * statement; a taken name is {@link AlreadyExistsError}.
   */
  async insertMany(tx: Db, base: Omit<NewPartition, 'id' | 'name' | 'nodeId'>, each: Array<{ id: string; name: string; nodeId: string }>): Promise<PartitionRow[]> {
    try {
      return await rows<PartitionRow>(tx,
        `INSERT INTO partitions (id, project_id, name, description, state, node_id, vcpus, memory_mib, disk_gib, image, labels, placement, placement_group, image_id)
         SELECT u.id, $4, u.name, $5, $6, u.node_id, $7, $8, $9, $10, $11, $12, $13, $14
         FROM unnest($1::uuid[], $2::text[], $3::uuid[]) WITH ORDINALITY AS u(id, name, node_id, ord)
         ORDER BY u.ord RETURNING *`,
        [each.map((e) => e.id), each.map((e) => e.name), each.map((e) => e.nodeId), base.projectId, base.description, base.state, base.vcpus, base.memoryMiB, base.diskGiB, base.image,
          JSON.stringify(base.labels), JSON.stringify(base.placement ?? {}), base.placement?.group ?? null, base.imageId ?? null],
      );
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExistsError('partition', each[0]?.name ?? '');
      throw e;
    }
  }

  /** Which of `names` the project already uses. */
  async namesTaken(db: Db, projectId: string, names: string[]): Promise<string[]> {
    const found = await rows<{ name: string }>(db, `SELECT name FROM partitions WHERE project_id = $1 AND name = ANY($2::text[])`, [projectId, names]);
    return found.map((r) => r.name);
  }

  /** A partition in a project (the API's read path: one index lookup). */
  async get(projectId: string, id: string): Promise<PartitionRow | undefined> {
    const found = await rows<PartitionRow>(this.ds, `SELECT * FROM partitions WHERE id = $1 AND project_id = $2`, [id, projectId]);
    return found[0];
  }

  /** A partition by id alone (internal: operations, agents). */
  async getById(id: string, db: Db = this.ds): Promise<PartitionRow | undefined> {
    const found = await rows<PartitionRow>(db, `SELECT * FROM partitions WHERE id = $1`, [id]);
    return found[0];
  }

  /** A partition locked for the rest of the transaction. */
  async lock(tx: Db, projectId: string, id: string): Promise<PartitionRow | undefined> {
    const found = await rows<PartitionRow>(tx, `SELECT * FROM partitions WHERE id = $1 AND project_id = $2 FOR UPDATE`, [id, projectId]);
    return found[0];
  }

  /** A keyset page of a project's partitions. */
  list(projectId: string, page: PageRequest, f: PartitionFilter): Promise<PartitionRow[]> {
    const w = new Where()
      .add('project_id = ?', projectId)
      .add('id > ?', page.afterId)
      .add('state = ?', f.state)
      .add('labels @> ?::jsonb', f.labels && Object.keys(f.labels).length ? JSON.stringify(f.labels) : undefined)
      .add('node_id = ?', f.nodeId);
    return rows(this.ds, `SELECT * FROM partitions ${w} ORDER BY id LIMIT ${w.bind(page.pageSize + 1)}`, w.params);
  }

  /** Updates labels and/or description, bumping the version. */
  async updateMeta(tx: Db, id: string, patch: { labels?: Record<string, string>; description?: string }): Promise<PartitionRow> {
    const found = await rows<PartitionRow>(tx, 
      `UPDATE partitions SET labels = COALESCE($2::jsonb, labels), description = COALESCE($3, description),
         version = version + 1, updated_at = now() WHERE id = $1 RETURNING *`,
      [id, patch.labels ? JSON.stringify(patch.labels) : null, patch.description ?? null],
    );
    return found[0]!;
  }

  /**
   * Sets what the node should do (and optionally the state), bumping the generation so the agent
   * can tell a new order from an old one.
   */
  async setDesired(db: Db, id: string, desired: Desired, state?: PartitionState, reason = '', nodeId?: string | null): Promise<PartitionRow | undefined> {
    const found = await rows<PartitionRow>(db, 
      `UPDATE partitions SET desired = $2, generation = generation + 1, state = COALESCE($3, state),
         state_reason = CASE WHEN $3::text IS NULL THEN state_reason ELSE $4 END,
         node_id = CASE WHEN $5::boolean THEN $6::uuid ELSE node_id END,
         version = version + 1, updated_at = now() WHERE id = $1 RETURNING *`,
      [id, desired, state ?? null, reason, nodeId !== undefined, nodeId ?? null],
    );
    return found[0];
  }

  /** Moves a partition to `state` unless it is in one of `unless`; returns the row when it changed. */
  async setState(db: Db, id: string, state: PartitionState, reason: string, unless: PartitionState[] = []): Promise<PartitionRow | undefined> {
    const found = await rows<PartitionRow>(db, 
      `UPDATE partitions SET state = $2, state_reason = $3, version = version + 1, updated_at = now()
       WHERE id = $1 AND (state <> $2 OR state_reason <> $3) AND NOT (state = ANY($4::text[])) RETURNING *`,
      [id, state, reason, unless],
    );
    return found[0];
  }

  /**
   * Records what the node reports, and the state it implies; returns the row when anything changed.
   * `nodeId` is the reporting node: the report counts only while the partition is placed there.
   */
  async observe(id: string, observed: string, generation: number, state: PartitionState | null, reason: string, nodeId?: string): Promise<PartitionRow | undefined> {
    const found = await rows<PartitionRow>(this.ds, 
      `UPDATE partitions SET observed_state = $2, observed_generation = $3, observed_reason = $5,
         state = COALESCE($4, state), state_reason = CASE WHEN $4::text IS NULL THEN state_reason ELSE $5 END,
         version = version + 1, updated_at = now()
       WHERE id = $1 AND ($6::uuid IS NULL OR node_id = $6)
         AND (observed_state <> $2 OR observed_generation <> $3 OR observed_reason <> $5 OR ($4::text IS NOT NULL AND (state <> $4 OR state_reason <> $5)))
       RETURNING *`,
      [id, observed, generation, state, reason, nodeId ?? null],
    );
    return found[0];
  }

  /** Sets the snapshot the partition's state now descends from. */
  async setCurrentSnapshot(db: Db, id: string, snapshotId: string | null): Promise<PartitionRow | undefined> {
    const found = await rows<PartitionRow>(db,
      `UPDATE partitions SET current_snapshot_id = $2, version = version + 1, updated_at = now() WHERE id = $1 RETURNING *`, [id, snapshotId]);
    return found[0];
  }

  /** Marks a partition `migrating` to `targetNodeId` (its state before is kept in the operation). */
  async beginMigration(db: Db, id: string, targetNodeId: string, reason: string): Promise<PartitionRow | undefined> {
    const found = await rows<PartitionRow>(db,
      `UPDATE partitions SET state = 'migrating', state_reason = $3, target_node_id = $2, version = version + 1, updated_at = now()
       WHERE id = $1 RETURNING *`, [id, targetNodeId, reason]);
    return found[0];
  }

  /**
   * Ends a migration. `moved`: the partition is now on the target (node_id switches; what the
   * source reported is forgotten). Otherwise it stays on the source. Either way it goes back to
   * `state` and has no target any more. Only a partition still migrating changes.
   */
  async endMigration(db: Db, id: string, moved: boolean, state: PartitionState, reason: string): Promise<PartitionRow | undefined> {
    const found = await rows<PartitionRow>(db,
      `UPDATE partitions SET state = $3, state_reason = $4,
         node_id = CASE WHEN $2 THEN target_node_id ELSE node_id END,
         observed_state = CASE WHEN $2 THEN '' ELSE observed_state END,
         observed_reason = CASE WHEN $2 THEN '' ELSE observed_reason END,
         target_node_id = NULL, version = version + 1, updated_at = now()
       WHERE id = $1 AND state = 'migrating' RETURNING *`, [id, moved, state, reason]);
    return found[0];
  }

  /** What a project holds, for its quota. */
  async usage(db: Db, projectId: string): Promise<{ partitions: number; vcpus: number; memoryMiB: number }> {
    const found = await rows<{ n: string; v: string | null; m: string | null }>(db,
      `SELECT count(*) AS n, sum(vcpus) AS v, sum(memory_mib) AS m FROM partitions WHERE project_id = $1`, [projectId]);
    const r = found[0]!;
    return { partitions: Number(r.n), vcpus: Number(r.v ?? 0), memoryMiB: Number(r.m ?? 0) };
  }

  /** Deletes the record. */
  async delete(tx: Db, id: string): Promise<PartitionRow | undefined> {
    const found = await rows<PartitionRow>(tx, `DELETE FROM partitions WHERE id = $1 RETURNING *`, [id]);
    return found[0];
  }

  /** Every partition placed on a node (what the node should know about). */
  forNode(nodeId: string): Promise<PartitionRow[]> {
    return rows(this.ds, `SELECT * FROM partitions WHERE node_id = $1 ORDER BY id`, [nodeId]);
  }

  /** Partitions migrating to a node. */
  incomingTo(nodeId: string): Promise<PartitionRow[]> {
    return rows(this.ds, `SELECT * FROM partitions WHERE target_node_id = $1 ORDER BY id`, [nodeId]);
  }
}
