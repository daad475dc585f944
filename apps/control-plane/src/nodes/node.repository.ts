import { Inject, Injectable } from '@nestjs/common';
import { UUID_RE } from '@hyperplane/domain';
import { DataSource } from 'typeorm';
import { Db, rows } from '../database/database';
import { PageRequest } from '../common/pagination';
import { Where } from '../database/where';
import { DATA_SOURCE } from '../common/tokens';

/** An image a node reported in its store. */
export interface NodeImage {
  name: string;
  format: string;
  sizeBytes: number;
  virtualSizeBytes: number;
}

/** A nodes row. */
export interface NodeRow {
  id: string;
  name: string;
  address: string;
  status: 'ready' | 'unreachable';
  cordoned: boolean;
  draining: boolean;
  driver: string;
  accelerator: string;
  qemu_version: string;
  cpu_flags: string[];
  machine_types: string[];
  labels: Record<string, string>;
  images: NodeImage[];
  vcpus: number;
  memory_mib: string | number;
  disk_bytes: string | number;
  allocated_vcpus: number;
  allocated_memory_mib: string | number;
  allocated_disk_bytes: string | number;
  cpu_allocation_ratio: number;
  memory_allocation_ratio: number;
  connected_to: string | null;
  /** Absolute path of the node's image store, as its agent reported it ('' when unknown). */
  image_store_dir?: string;
  last_heartbeat_at: Date | null;
  /** The node has TLS credentials: it can take part in encrypted migrations. */
  tls: boolean;
  version: number;
  created_at: Date;
  updated_at: Date;
}

/** What a registering agent tells about its node. */
export interface NodeRegistration {
  id: string;
  name: string;
  address: string;
  driver: string;
  accelerator: string;
  qemuVersion: string;
  cpuFlags: string[];
  machineTypes: string[];
  labels: Record<string, string>;
  images: NodeImage[];
  vcpus: number;
  memoryMiB: number;
  diskBytes: number;
  connectedTo: string;
}

/** SQL for nodes, including capacity reservations. */
@Injectable()
export class NodeRepository {
  constructor(@Inject(DATA_SOURCE) private readonly ds: DataSource) {}

  /** Finds a node by id or name. */
  async findByIdOrName(ref: string, db: Db = this.ds): Promise<NodeRow | undefined> {
    const found = await rows<NodeRow>(db, `SELECT * FROM nodes WHERE ${UUID_RE.test(ref) ? 'id' : 'name'} = $1`, [ref]);
    return found[0];
  }

  /** A node by id, and another by id or name (when `ref` is given), in one read. */
  async findWithRef(id: string, ref: string | undefined, db: Db = this.ds): Promise<[NodeRow | undefined, NodeRow | undefined]> {
    if (ref === undefined) return [await this.findByIdOrName(id, db), undefined];
    const found = await rows<NodeRow>(db, `SELECT * FROM nodes WHERE id = $1 OR ${UUID_RE.test(ref) ? 'id' : 'name'} = $2`, [id, ref]);
    return [found.find((n) => n.id === id), found.find((n) => n.id === ref || n.name === ref)];
  }

  /** A node by name, for registration. */
  async findByName(name: string): Promise<NodeRow | undefined> {
    const found = await rows<NodeRow>(this.ds, `SELECT * FROM nodes WHERE name = $1`, [name]);
    return found[0];
  }

  /** Inserts or refreshes a node from its agent's registration; keeps cordon/drain and allocations. */
  async upsertRegistration(r: NodeRegistration): Promise<NodeRow> {
    const found = await rows<NodeRow>(this.ds, 
      `INSERT INTO nodes (id, name, address, status, driver, accelerator, qemu_version, cpu_flags, machine_types, labels, images,
                          vcpus, memory_mib, disk_bytes, connected_to, last_heartbeat_at)
       VALUES ($1, $2, $3, 'ready', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, now())
       ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, address = EXCLUDED.address, status = 'ready', driver = EXCLUDED.driver,
         accelerator = EXCLUDED.accelerator, qemu_version = EXCLUDED.qemu_version, cpu_flags = EXCLUDED.cpu_flags,
         machine_types = EXCLUDED.machine_types, labels = EXCLUDED.labels, images = EXCLUDED.images, vcpus = EXCLUDED.vcpus,
         memory_mib = EXCLUDED.memory_mib, disk_bytes = EXCLUDED.disk_bytes, connected_to = EXCLUDED.connected_to,
         last_heartbeat_at = now(), version = nodes.version + 1, updated_at = now()
       RETURNING *`,
      [r.id, r.name, r.address, r.driver, r.accelerator, r.qemuVersion, r.cpuFlags, r.machineTypes, JSON.stringify(r.labels), JSON.stringify(r.images), r.vcpus, r.memoryMiB, r.diskBytes, r.connectedTo],
    );
    return found[0]!;
  }

  /** Records whether the node has TLS credentials (from its inventory). */
  async setTls(id: string, tls: boolean): Promise<NodeRow | undefined> {
    const found = await rows<NodeRow>(this.ds, `UPDATE nodes SET tls = $2, version = version + 1, updated_at = now() WHERE id = $1 AND tls <> $2 RETURNING *`, [id, tls]);
    return found[0];
  }

  /**
   * Records heartbeats of many nodes in one statement; nodes that were unreachable become ready
   * again. A node row locked at that moment (a placement reserving on it) is skipped rather than
   * waited for: it is in `missed`, for the next flush, and no placement ever queues behind a
   * heartbeat. Returns the rows whose status changed, and the ids missed.
   */
  async heartbeats(ids: string[], replica: string): Promise<{ changed: NodeRow[]; missed: string[] }> {
    const done = await rows<{ id: string; changed: boolean }>(this.ds,
      `UPDATE nodes n SET last_heartbeat_at = now(), status = 'ready', connected_to = $2,
         version = CASE WHEN o.status = 'ready' THEN n.version ELSE n.version + 1 END,
         updated_at = CASE WHEN o.status = 'ready' THEN n.updated_at ELSE now() END
       FROM (SELECT id, status FROM nodes WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE SKIP LOCKED) o
       WHERE n.id = o.id RETURNING n.id, (o.status <> 'ready') AS changed`,
      [ids, replica],
    );
    const got = new Set(done.map((d) => d.id));
    const changedIds = done.filter((d) => d.changed).map((d) => d.id);
    const changed = changedIds.length ? await rows<NodeRow>(this.ds, `SELECT * FROM nodes WHERE id = ANY($1::uuid[])`, [changedIds]) : [];
    return { changed, missed: ids.filter((id) => !got.has(id)) };
  }

  /** Marks nodes whose last heartbeat is older than `timeoutMs` unreachable; returns them. */
  async markStale(timeoutMs: number): Promise<NodeRow[]> {
    return rows(this.ds, 
      `UPDATE nodes SET status = 'unreachable', connected_to = NULL, version = version + 1, updated_at = now()
       WHERE status = 'ready' AND (last_heartbeat_at IS NULL OR last_heartbeat_at < now() - make_interval(secs => $1::float / 1000))
       RETURNING *`,
      [timeoutMs],
    );
  }

  /** Marks a node unreachable at once (its stream closed). */
  async markDisconnected(id: string, replica: string): Promise<NodeRow | undefined> {
    const found = await rows<NodeRow>(this.ds, 
      `UPDATE nodes SET status = 'unreachable', connected_to = NULL, version = version + 1, updated_at = now()
       WHERE id = $1 AND connected_to = $2 RETURNING *`,
      [id, replica],
    );
    return found[0];
  }

  /** Sets the cordon flag (uncordon also ends a drain); returns the updated row. */
  async setCordoned(id: string, cordoned: boolean): Promise<NodeRow | undefined> {
    const found = await rows<NodeRow>(this.ds, 
      `UPDATE nodes SET cordoned = $2, draining = CASE WHEN $2 THEN draining ELSE false END, version = version + 1, updated_at = now()
       WHERE id = $1 RETURNING *`,
      [id, cordoned],
    );
    return found[0];
  }

  /** Marks a node draining (and cordoned) in the caller's transaction. */
  async setDraining(db: Db, id: string): Promise<NodeRow | undefined> {
    const found = await rows<NodeRow>(db, 
      `UPDATE nodes SET cordoned = true, draining = true, version = version + 1, updated_at = now() WHERE id = $1 RETURNING *`,
      [id],
    );
    return found[0];
  }

  /** A keyset page of nodes. */
  list(page: PageRequest, filter: { state?: string }): Promise<NodeRow[]> {
    const w = new Where()
      .add('id > ?', page.afterId)
      .add(`? = CASE WHEN status = 'unreachable' THEN 'unreachable' WHEN draining THEN 'draining' WHEN cordoned THEN 'cordoned' ELSE 'ready' END`, filter.state);
    return rows(this.ds, `SELECT * FROM nodes ${w} ORDER BY id LIMIT ${w.bind(page.pageSize + 1)}`, w.params);
  }

  /**
   * Reserves capacity on a node only if it is still schedulable and still has room: the
   * compare-and-swap that makes concurrent placements (on any replica) safe. Returns the updated
   * row, or undefined when the node no longer qualifies.
   */
  async tryReserve(db: Db, nodeId: string, d: { vcpus: number; memoryMiB: number; diskBytes: number }): Promise<NodeRow | undefined> {
    const found = await rows<NodeRow>(db,
      `UPDATE nodes SET allocated_vcpus = allocated_vcpus + $2, allocated_memory_mib = allocated_memory_mib + $3,
         allocated_disk_bytes = allocated_disk_bytes + $4, version = version + 1, updated_at = now()
       WHERE id = $1 AND status = 'ready' AND NOT cordoned AND NOT draining
         AND allocated_vcpus + $2 <= floor(vcpus * cpu_allocation_ratio)
         AND allocated_memory_mib + $3 <= floor(memory_mib * memory_allocation_ratio)
         AND allocated_disk_bytes + $4 <= disk_bytes
       RETURNING *`,
      [nodeId, d.vcpus, d.memoryMiB, d.diskBytes],
    );
    return found[0];
  }

  /**
   * {@link tryReserve} for several nodes in one statement: the rows are locked in id order (so
   * concurrent batches cannot deadlock), and each is reserved only if it still qualifies. Returns
   * the rows reserved; fewer than asked means some node no longer had room, and the caller must
   * undo the others (a savepoint).
   */
  async tryReserveMany(db: Db, demands: Array<{ id: string; vcpus: number; memoryMiB: number; diskBytes: number }>): Promise<NodeRow[]> {
    return rows<NodeRow>(db,
      `UPDATE nodes n SET allocated_vcpus = n.allocated_vcpus + d.vcpus, allocated_memory_mib = n.allocated_memory_mib + d.memory_mib,
         allocated_disk_bytes = n.allocated_disk_bytes + d.disk_bytes, version = n.version + 1, updated_at = now()
       FROM (SELECT id FROM nodes WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE) l,
            unnest($1::uuid[], $2::int[], $3::bigint[], $4::bigint[]) AS d(id, vcpus, memory_mib, disk_bytes)
       WHERE n.id = l.id AND n.id = d.id AND n.status = 'ready' AND NOT n.cordoned AND NOT n.draining
         AND n.allocated_vcpus + d.vcpus <= floor(n.vcpus * n.cpu_allocation_ratio)
         AND n.allocated_memory_mib + d.memory_mib <= floor(n.memory_mib * n.memory_allocation_ratio)
         AND n.allocated_disk_bytes + d.disk_bytes <= n.disk_bytes
       RETURNING n.*`,
      [demands.map((d) => d.id), demands.map((d) => d.vcpus), demands.map((d) => d.memoryMiB), demands.map((d) => d.diskBytes)],
    );
  }

  /** Savepoints around a batch of reservations, so a lost compare-and-swap undoes the ones before it. */
  async savepoint(db: Db, name: string): Promise<void> {
    await db.query(`SAVEPOINT ${name}`);
  }

  /** Keeps the reservations made since the savepoint. */
  async releaseSavepoint(db: Db, name: string): Promise<void> {
    await db.query(`RELEASE SAVEPOINT ${name}`);
  }

  /** Undoes the reservations made since the savepoint. */
  async rollbackToSavepoint(db: Db, name: string): Promise<void> {
    await db.query(`ROLLBACK TO SAVEPOINT ${name}`);
  }

  /** Partitions of a placement group per node (read under the group's lock). */
  async groupCounts(db: Db, projectId: string, group: string): Promise<Map<string, number>> {
    const found = await rows<{ node_id: string; n: string }>(db,
      `SELECT node_id, count(*) AS n FROM partitions WHERE project_id = $1 AND placement_group = $2 AND node_id IS NOT NULL GROUP BY node_id`,
      [projectId, group],
    );
    return new Map(found.map((r) => [r.node_id, Number(r.n)]));
  }

  /** Adds (or with a negative demand, releases) a reservation on a node. */
  async reserve(tx: Db, nodeId: string, d: { vcpus: number; memoryMiB: number; diskBytes: number }): Promise<void> {
    await tx.query(
      `UPDATE nodes SET allocated_vcpus = GREATEST(0, allocated_vcpus + $2), allocated_memory_mib = GREATEST(0, allocated_memory_mib + $3),
         allocated_disk_bytes = GREATEST(0, allocated_disk_bytes + $4), version = version + 1, updated_at = now() WHERE id = $1`,
      [nodeId, d.vcpus, d.memoryMiB, d.diskBytes],
    );
  }
}
