import { Inject, Injectable } from '@nestjs/common';
import { AlreadyExistsError, PartitionState } from '@hyperplane/domain';
import { DataSource } from 'typeorm';
import { Db, inOrder, rows, rowsByIdBatcher, isUniqueViolation, outsideTransaction } from '../database/database';
import { PageRequest } from '../common/pagination';
import { Where } from '../database/where';
import { DATA_SOURCE } from '../common/tokens';
import { Batcher } from '../common/batcher';
import type { OperationRow } from '../operations/operation.repository';

/** The operation in flight on a partition, as a request that finds one needs it (its id, and whether it can be cancelled now: cancelSubjectOf). */
export type LiveOperation = Pick<OperationRow, 'id' | 'kind' | 'status' | 'params' | 'metadata'>;

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

/** A node's report, as {@link PartitionRepository.observe} records it. */
interface Observation {
  id: string;
  observed: string;
  generation: number;
  state: PartitionState | null;
  reason: string;
  /** The reporting node; null: any. */
  nodeId: string | null;
}

/** A desired-state change outside a transaction, as {@link PartitionRepository.setDesired} makes it. */
interface DesiredChange {
  id: string;
  desired: Desired;
  state: PartitionState | null;
  reason: string;
  setNode: boolean;
  nodeId: string | null;
}

/**
 * SQL for partitions. Reads by id, node reports and desired-state changes made outside a
 * transaction are coalesced with those made at the same moment into one statement each (the
 * operations and agent streams of a fleet make thousands a second).
 */
@Injectable()
export class PartitionRepository {
  private readonly byId = rowsByIdBatcher<PartitionRow>(() => this.ds, 'partitions');

  private readonly observations = new Batcher<Observation, PartitionRow | undefined>(
    async (obs) => {
      const found = await rows<PartitionRow>(this.ds,
        `UPDATE partitions p SET observed_state = u.observed, observed_generation = u.generation, observed_reason = u.reason,
           state = COALESCE(u.state, p.state), state_reason = CASE WHEN u.state IS NULL THEN p.state_reason ELSE u.reason END,
           version = p.version + 1, updated_at = now()
         FROM (SELECT id FROM partitions WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE) l,
              unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::uuid[]) AS u(id, observed, generation, state, reason, node_id)
         WHERE p.id = l.id AND p.id = u.id AND (u.node_id IS NULL OR p.node_id = u.node_id)
           AND (p.observed_state <> u.observed OR p.observed_generation <> u.generation OR p.observed_reason <> u.reason
                OR (u.state IS NOT NULL AND (p.state <> u.state OR p.state_reason <> u.reason)))
         RETURNING p.*`,
        [obs.map((o) => o.id), obs.map((o) => o.observed), obs.map((o) => o.generation), obs.map((o) => o.state), obs.map((o) => o.reason), obs.map((o) => o.nodeId)],
      );
      return inOrder(found, obs.map((o) => o.id));
    },
    { key: (o) => o.id },
  );

  private readonly desiredChanges = new Batcher<DesiredChange, PartitionRow | undefined>(
    async (cs) => {
      const found = await rows<PartitionRow>(this.ds,
        `UPDATE partitions p SET desired = u.desired, generation = p.generation + 1, state = COALESCE(u.state, p.state),
           state_reason = CASE WHEN u.state IS NULL THEN p.state_reason ELSE u.reason END,
           node_id = CASE WHEN u.set_node THEN u.node_id ELSE p.node_id END,
           version = p.version + 1, updated_at = now()
         FROM (SELECT id FROM partitions WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE) l,
              unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::boolean[], $6::uuid[]) AS u(id, desired, state, reason, set_node, node_id)
         WHERE p.id = l.id AND p.id = u.id
         RETURNING p.*`,
        [cs.map((c) => c.id), cs.map((c) => c.desired), cs.map((c) => c.state), cs.map((c) => c.reason), cs.map((c) => c.setNode), cs.map((c) => c.nodeId)],
      );
      return inOrder(found, cs.map((c) => c.id));
    },
    { key: (c) => c.id },
  );

  constructor(@Inject(DATA_SOURCE) private readonly ds: DataSource) {}

  /** Inserts any partitions in one statement, in order; a taken name is {@link AlreadyExistsError}. */
  async insertRows(tx: Db, ps: NewPartition[]): Promise<PartitionRow[]> {
    const col = <T>(f: (p: NewPartition) => T) => ps.map(f);
    try {
      return await rows<PartitionRow>(tx,
        `INSERT INTO partitions (id, project_id, name, description, state, node_id, vcpus, memory_mib, disk_gib, image, labels, placement, placement_group, image_id)
         SELECT u.id, u.project_id, u.name, u.description, u.state, u.node_id, u.vcpus, u.memory_mib, u.disk_gib, u.image, u.labels, u.placement, u.placement_group, u.image_id
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::uuid[], $7::int[], $8::bigint[], $9::int[], $10::text[], $11::jsonb[], $12::jsonb[], $13::text[], $14::uuid[])
           WITH ORDINALITY AS u(id, project_id, name, description, state, node_id, vcpus, memory_mib, disk_gib, image, labels, placement, placement_group, image_id, ord)
         ORDER BY u.ord RETURNING *`,
        [col((p) => p.id), col((p) => p.projectId), col((p) => p.name), col((p) => p.description), col((p) => p.state), col((p) => p.nodeId), col((p) => p.vcpus), col((p) => p.memoryMiB),
          col((p) => p.diskGiB), col((p) => p.image), col((p) => JSON.stringify(p.labels)), col((p) => JSON.stringify(p.placement ?? {})), col((p) => p.placement?.group ?? null), col((p) => p.imageId ?? null)],
      );
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExistsError('partition', ps.length === 1 ? ps[0]!.name : takenName(e) ?? ps[0]?.name ?? '');
      throw e;
    }
  }

  /** Which of the (project, name) pairs are taken, as `projectId/name` keys. */
  async namesTakenIn(db: Db, pairs: Array<{ projectId: string; name: string }>): Promise<Set<string>> {
    const found = await rows<{ project_id: string; name: string }>(db,
      `SELECT p.project_id, p.name FROM partitions p JOIN unnest($1::uuid[], $2::text[]) AS u(project_id, name) ON p.project_id = u.project_id AND p.name = u.name`,
      [pairs.map((x) => x.projectId), pairs.map((x) => x.name)],
    );
    return new Set(found.map((r) => `${r.project_id}/${r.name}`));
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
    if (db === this.ds) return this.byId.call(id);
    const found = await rows<PartitionRow>(db, `SELECT * FROM partitions WHERE id = $1`, [id]);
    return found[0];
  }

  /** The partition an operation targets, read by the operation's id. */
  async ofOperation(operationId: string): Promise<PartitionRow | undefined> {
    const found = await rows<PartitionRow>(this.ds, `SELECT p.* FROM operations o JOIN partitions p ON p.id = o.target_id WHERE o.id = $1`, [operationId], 'partitions.ofOperation');
    return found[0];
  }

  /** A partition locked for the rest of the transaction. */
  async lock(tx: Db, projectId: string, id: string): Promise<PartitionRow | undefined> {
    const found = await rows<PartitionRow>(tx, `SELECT * FROM partitions WHERE id = $1 AND project_id = $2 FOR UPDATE`, [id, projectId]);
    return found[0];
  }

  /**
   * Locks the partition (as {@link lock}) and, in the same statement, finds the operation in
   * flight on it (the oldest pending or running one), if any.
   */
  async lockWithLiveOperation(tx: Db, projectId: string, id: string): Promise<{ row: PartitionRow; live?: LiveOperation } | undefined> {
    const found = await rows<PartitionRow & { live_op: LiveOperation | null }>(tx,
      `SELECT p.*, CASE WHEN o.id IS NULL THEN NULL ELSE jsonb_build_object('id', o.id, 'kind', o.kind, 'status', o.status, 'params', o.params, 'metadata', o.metadata) END AS live_op FROM partitions p
         LEFT JOIN LATERAL (SELECT id, kind, status, params, metadata FROM operations WHERE target_id = p.id AND status IN ('pending', 'running') ORDER BY id LIMIT 1) o ON true
       WHERE p.id = $1 AND p.project_id = $2 FOR UPDATE OF p`, [id, projectId]);
    const r = found[0];
    if (!r) return undefined;
    const { live_op: live, ...row } = r;
    return { row, ...(live ? { live } : {}) };
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
    if (outsideTransaction(db, this.ds)) return this.desiredChanges.call({ id, desired, state: state ?? null, reason, setNode: nodeId !== undefined, nodeId: nodeId ?? null });
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
    return this.observations.call({ id, observed, generation, state, reason, nodeId: nodeId ?? null });
  }

  /** Sets the snapshot the partition's state now descends from. */
  async setCurrentSnapshot(db: Db, id: string, snapshotId: string | null): Promise<PartitionRow | undefined> {
    const found = await rows<PartitionRow>(db,
      `UPDATE partitions SET current_snapshot_id = $2, version = version + 1, updated_at = now() WHERE id = $1 RETURNING *`, [id, snapshotId], 'partitions.setCurrentSnapshot');
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
   * Ends a migration, in one statement. `moved`: the partition is now on the target (node_id
   * switches; what the source reported is forgotten). Otherwise it stays on the source. Either way
   * it goes back to `state`, has no target any more, and the capacity of `freedNodeId` (the node
   * the guest is not on) is given back. Only a partition still migrating changes (nothing is
   * released otherwise); with `onlyOf` (a migration operation's id), only while no other
   * migration operation of it is live: an undo that ran late leaves a newer migration alone.
   */
  async endMigrationReleasing(db: Db, id: string, moved: boolean, state: PartitionState, reason: string, freedNodeId: string, onlyOf?: string): Promise<PartitionRow | undefined> {
    const found = await rows<PartitionRow>(db,
      `WITH p AS (
         UPDATE partitions SET state = $3, state_reason = $4,
           node_id = CASE WHEN $2 THEN target_node_id ELSE node_id END,
           observed_state = CASE WHEN $2 THEN '' ELSE observed_state END,
           observed_reason = CASE WHEN $2 THEN '' ELSE observed_reason END,
           target_node_id = NULL, version = version + 1, updated_at = now()
         WHERE id = $1 AND state = 'migrating'
           AND ($6::uuid IS NULL OR NOT EXISTS (SELECT 1 FROM operations o WHERE o.target_id = $1 AND o.kind = 'partition.migrate' AND o.status IN ('pending', 'running') AND o.id <> $6))
         RETURNING *
       ), freed AS (
         UPDATE nodes n SET allocated_vcpus = GREATEST(0, n.allocated_vcpus - p.vcpus),
           allocated_memory_mib = GREATEST(0, n.allocated_memory_mib - p.memory_mib),
           allocated_disk_bytes = GREATEST(0, n.allocated_disk_bytes - p.disk_gib::bigint * 1073741824),
           version = n.version + 1, updated_at = now()
         FROM p WHERE n.id = $5
       )
       SELECT * FROM p`, [id, moved, state, reason, freedNodeId, onlyOf ?? null], 'partitions.endMigrationReleasing');
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

/** The name in a unique violation on (project_id, name), from PostgreSQL's detail. */
function takenName(e: unknown): string | undefined {
  const err = e as { detail?: string; driverError?: { detail?: string } };
  const m = /\(project_id, name\)=\([^,]+, (.+)\) already exists/.exec(err?.driverError?.detail ?? err?.detail ?? '');
  return m?.[1];
}
