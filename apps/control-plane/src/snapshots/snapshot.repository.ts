import { Inject, Injectable } from '@nestjs/common';
import { AlreadyExistsError } from '@hyperplane/domain';
import { DataSource } from 'typeorm';
import { Db, isUniqueViolation, rows } from '../database/database';
import { PageRequest } from '../common/pagination';
import { DATA_SOURCE } from '../common/tokens';

/** Where a snapshot is in its life: `creating` until the node confirmed it, `deleting` while it goes. */
export type SnapshotState = 'creating' | 'ready' | 'deleting';

/** A snapshots row. The node knows the snapshot by its id (the qcow2 tag). */
export interface SnapshotRow {
  id: string;
  project_id: string;
  partition_id: string;
  parent_id: string | null;
  name: string;
  description: string;
  state: SnapshotState;
  with_memory: boolean;
  vm_state_bytes: string | number;
  vm_clock_ms: string | number;
  version: number;
  created_at: Date;
  updated_at: Date;
}

/** A new snapshot. */
export interface NewSnapshot {
  id: string;
  projectId: string;
  partitionId: string;
  parentId: string | null;
  name: string;
  description: string;
  withMemory: boolean;
}

/** SQL for snapshots; the tree is kept by `parent_id`. */
@Injectable()
export class SnapshotRepository {
  constructor(@Inject(DATA_SOURCE) private readonly ds: DataSource) {}

  /** Records a snapshot being created; a name the partition already uses is {@link AlreadyExistsError}. */
  async insert(tx: Db, s: NewSnapshot): Promise<SnapshotRow> {
    try {
      const found = await rows<SnapshotRow>(tx,
        `INSERT INTO snapshots (id, project_id, partition_id, parent_id, name, description, state, with_memory)
         VALUES ($1, $2, $3, $4, $5, $6, 'creating', $7) RETURNING *`,
        [s.id, s.projectId, s.partitionId, s.parentId, s.name, s.description, s.withMemory]);
      return found[0]!;
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExistsError('snapshot', s.name, 'this partition');
      throw e;
    }
  }

  /** A snapshot of a partition. */
  async get(partitionId: string, id: string, db: Db = this.ds): Promise<SnapshotRow | undefined> {
    const found = await rows<SnapshotRow>(db, `SELECT * FROM snapshots WHERE id = $1 AND partition_id = $2`, [id, partitionId]);
    return found[0];
  }

  /** The snapshot an operation on a partition names in its params (`snapshotId`), read by the operation's id. */
  async ofOperation(operationId: string): Promise<SnapshotRow | undefined> {
    const found = await rows<SnapshotRow>(this.ds,
      `SELECT s.* FROM operations o JOIN snapshots s ON s.partition_id = o.target_id AND s.id = (o.params ->> 'snapshotId')::uuid WHERE o.id = $1`, [operationId], 'snapshots.ofOperation');
    return found[0];
  }

  /** A snapshot locked for the rest of the transaction. */
  async lock(tx: Db, partitionId: string, id: string): Promise<SnapshotRow | undefined> {
    const found = await rows<SnapshotRow>(tx, `SELECT * FROM snapshots WHERE id = $1 AND partition_id = $2 FOR UPDATE`, [id, partitionId]);
    return found[0];
  }

  /** A keyset page of a partition's snapshots, oldest first. */
  list(partitionId: string, page: PageRequest): Promise<SnapshotRow[]> {
    return rows(this.ds,
      `SELECT * FROM snapshots WHERE partition_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3`,
      [partitionId, page.afterId, page.pageSize + 1]);
  }

  /** How many snapshots a partition has (any state). */
  async count(db: Db, partitionId: string): Promise<number> {
    const found = await rows<{ n: string }>(db, `SELECT count(*) AS n FROM snapshots WHERE partition_id = $1`, [partitionId]);
    return Number(found[0]!.n);
  }

  /** The node confirmed the snapshot: it is ready, with what the node measured. */
  async markReady(db: Db, id: string, m: { vmStateBytes: number; vmClockMs: number }): Promise<SnapshotRow | undefined> {
    const found = await rows<SnapshotRow>(db,
      `UPDATE snapshots SET state = 'ready', vm_state_bytes = $2, vm_clock_ms = $3, version = version + 1, updated_at = now()
       WHERE id = $1 RETURNING *`, [id, m.vmStateBytes, m.vmClockMs]);
    return found[0];
  }

  /** Moves a snapshot to `state`; returns the row. */
  async setState(db: Db, id: string, state: SnapshotState): Promise<SnapshotRow | undefined> {
    const found = await rows<SnapshotRow>(db,
      `UPDATE snapshots SET state = $2, version = version + 1, updated_at = now() WHERE id = $1 RETURNING *`, [id, state]);
    return found[0];
  }

  /**
   * Removes a snapshot from the tree: its children hang from its parent from now on. Returns the
   * removed row and the children that moved (their versions changed).
   */
  async remove(tx: Db, id: string): Promise<{ removed: SnapshotRow | undefined; reparented: SnapshotRow[] }> {
    const reparented = await rows<SnapshotRow>(tx,
      `UPDATE snapshots c SET parent_id = s.parent_id, version = c.version + 1, updated_at = now()
       FROM snapshots s WHERE s.id = $1 AND c.parent_id = s.id RETURNING c.*`, [id]);
    const removed = await rows<SnapshotRow>(tx, `DELETE FROM snapshots WHERE id = $1 RETURNING *`, [id]);
    return { removed: removed[0], reparented };
  }

  /** Drops every snapshot record of a partition (its disk no longer has them). */
  removeAll(tx: Db, partitionId: string): Promise<SnapshotRow[]> {
    return rows(tx, `DELETE FROM snapshots WHERE partition_id = $1 RETURNING *`, [partitionId]);
  }
}
