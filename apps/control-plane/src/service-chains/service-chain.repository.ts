import { Inject, Injectable } from '@nestjs/common';
import { AlreadyExistsError } from '@hyperplane/domain';
import { DataSource } from 'typeorm';
import { PageRequest } from '../common/pagination';
import { DATA_SOURCE } from '../common/tokens';
import { Batcher } from '../common/batcher';
import { Db, isUniqueViolation, rows } from '../database/database';
import type { LinkKind, ReplicaState, ThrottleLimits } from './chain-rules';

/** A service_chains row. */
export interface ChainRow {
  id: string;
  project_id: string;
  name: string;
  description: string;
  state: 'creating' | 'ready' | 'degraded' | 'failed' | 'deleting';
  state_reason: string;
  version: number;
  created_at: Date;
  updated_at: Date;
}

/** A service_chain_links row. */
export interface LinkRow {
  chain_id: string;
  name: string;
  position: number;
  kind: LinkKind;
  replicas: number;
  image: string;
  size_bytes: string | number;
  throttle: ThrottleLimits;
  key_sealed: Buffer | null;
  placement: { nodes?: string[] };
  state: 'creating' | 'ready' | 'removing';
  created_at: Date;
}

/** A service_chain_replicas row: one provider process. */
export interface ReplicaRow {
  id: string;
  chain_id: string;
  link_name: string;
  node_id: string;
  state: ReplicaState;
  state_reason: string;
  desired: 'running' | 'absent';
  generation: string | number;
  observed_state: string;
  observed_generation: string | number;
  sync_from: string | null;
  format: boolean;
  expose_tcp: boolean;
  unix_path: string;
  tcp_host: string;
  tcp_port: number;
  tls: boolean;
  tls_hostname: string;
  size_bytes: string | number;
  sync_percent: number;
  /** False for a replacement or an added replica until its consumers were told to use it. */
  joined: boolean;
  created_at: Date;
  updated_at: Date;
}

/** A partition_attachments row. */
export interface AttachmentRow {
  id: string;
  project_id: string;
  partition_id: string;
  chain_id: string;
  link_name: string;
  read_only: boolean;
  device_index: number;
  state: 'attaching' | 'attached' | 'detaching' | 'failed';
  state_reason: string;
  version: number;
  created_at: Date;
  updated_at: Date;
}

/** A new link row. */
export interface NewLink {
  name: string;
  position: number;
  kind: LinkKind;
  replicas: number;
  image: string;
  sizeBytes: number;
  throttle: ThrottleLimits;
  keySealed: Buffer | null;
  nodes: string[];
  state: LinkRow['state'];
}

/** A new replica row. */
export interface NewReplica {
  id: string;
  chainId: string;
  linkName: string;
  nodeId: string;
  syncFrom?: string | null;
  format?: boolean;
  exposeTcp?: boolean;
  /** Default true; false for replicas that join a link in service. */
  joined?: boolean;
}

/** What a node reported about a provider, as recorded. */
export interface ReplicaObservation {
  observedState: string;
  observedGeneration: number;
  state: ReplicaState | null;
  reason: string;
  unixPath: string;
  tcpHost: string;
  tcpPort: number;
  tls: boolean;
  tlsHostname: string;
  sizeBytes: number;
  syncPercent: number;
}

/** SQL for service chains, their links, replicas, and the partitions attached to them. */
@Injectable()
export class ServiceChainRepository {
  constructor(@Inject(DATA_SOURCE) private readonly ds: DataSource) {}

  /** Attachment reads of specs sent at the same moment (one per partition a node is told about), as one statement. */
  private readonly attachmentReads = new Batcher<string[], AttachmentRow[]>(
    async (calls) => {
      const all = await rows<AttachmentRow>(this.ds, `SELECT * FROM partition_attachments WHERE partition_id = ANY($1::uuid[]) ORDER BY partition_id, device_index`, [[...new Set(calls.flat())]]);
      if (all.length === 0) return calls.map(() => []);
      return calls.map((ids) => {
        const wanted = new Set(ids);
        return all.filter((a) => wanted.has(a.partition_id));
      });
    },
    { maxBatch: 2000, weight: (ids) => ids.length },
  );

  /** Inserts a chain; a taken name is {@link AlreadyExistsError}. */
  async insertChain(tx: Db, c: { id: string; projectId: string; name: string; description: string }): Promise<ChainRow> {
    try {
      const found = await rows<ChainRow>(tx, `INSERT INTO service_chains (id, project_id, name, description, state) VALUES ($1, $2, $3, $4, 'creating') RETURNING *`, [c.id, c.projectId, c.name, c.description]);
      return found[0]!;
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExistsError('service chain', c.name);
      throw e;
    }
  }

  /** Inserts links of a chain. */
  async insertLinks(tx: Db, chainId: string, links: NewLink[]): Promise<LinkRow[]> {
    const out: LinkRow[] = [];
    for (const l of links) {
      const found = await rows<LinkRow>(tx,
        `INSERT INTO service_chain_links (chain_id, name, position, kind, replicas, image, size_bytes, throttle, key_sealed, placement, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *`,
        [chainId, l.name, l.position, l.kind, l.replicas, l.image, l.sizeBytes, JSON.stringify(l.throttle), l.keySealed, JSON.stringify({ nodes: l.nodes }), l.state]);
      out.push(found[0]!);
    }
    return out;
  }

  /** Inserts replica rows (desired running, pending). */
  async insertReplicas(tx: Db, list: NewReplica[]): Promise<ReplicaRow[]> {
    const out: ReplicaRow[] = [];
    for (const r of list) {
      const found = await rows<ReplicaRow>(tx,
        `INSERT INTO service_chain_replicas (id, chain_id, link_name, node_id, state, desired, sync_from, format, expose_tcp, joined)
         VALUES ($1, $2, $3, $4, 'pending', 'running', $5, $6, $7, $8) RETURNING *`,
        [r.id, r.chainId, r.linkName, r.nodeId, r.syncFrom ?? null, r.format ?? false, r.exposeTcp ?? false, r.joined ?? true]);
      out.push(found[0]!);
    }
    return out;
  }

  /** A chain in a project. */
  async get(projectId: string, id: string, db: Db = this.ds): Promise<ChainRow | undefined> {
    return (await rows<ChainRow>(db, `SELECT * FROM service_chains WHERE id = $1 AND project_id = $2`, [id, projectId]))[0];
  }

  /** A chain by id alone (operations, agents). */
  async getById(id: string, db: Db = this.ds): Promise<ChainRow | undefined> {
    return (await rows<ChainRow>(db, `SELECT * FROM service_chains WHERE id = $1`, [id]))[0];
  }

  /** A chain locked for the rest of the transaction. */
  async lock(tx: Db, projectId: string, id: string): Promise<ChainRow | undefined> {
    return (await rows<ChainRow>(tx, `SELECT * FROM service_chains WHERE id = $1 AND project_id = $2 FOR UPDATE`, [id, projectId]))[0];
  }

  /** A keyset page of a project's chains. */
  list(projectId: string, page: PageRequest): Promise<ChainRow[]> {
    return rows(this.ds, `SELECT * FROM service_chains WHERE project_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3`, [projectId, page.afterId, page.pageSize + 1]);
  }

  /** Every chain (the health sweep). */
  allIds(): Promise<Array<{ id: string }>> {
    return rows(this.ds, `SELECT id FROM service_chains WHERE state <> 'deleting' ORDER BY id`);
  }

  /** Sets the chain's state; returns the row when it changed. */
  async setState(id: string, state: ChainRow['state'], reason: string, db: Db = this.ds): Promise<ChainRow | undefined> {
    return (await rows<ChainRow>(db,
      `UPDATE service_chains SET state = $2, state_reason = $3, version = version + 1, updated_at = now()
       WHERE id = $1 AND (state <> $2 OR state_reason <> $3) AND (state <> 'deleting' OR $2 = 'deleting') RETURNING *`, [id, state, reason]))[0];
  }

  /** Bumps the chain's version (its links or replicas changed), so its etag moves. */
  async touch(id: string, db: Db = this.ds): Promise<ChainRow | undefined> {
    return (await rows<ChainRow>(db, `UPDATE service_chains SET version = version + 1, updated_at = now() WHERE id = $1 RETURNING *`, [id]))[0];
  }

  /** Deletes a chain (links and replicas go with it). */
  async deleteChain(tx: Db, id: string): Promise<ChainRow | undefined> {
    return (await rows<ChainRow>(tx, `DELETE FROM service_chains WHERE id = $1 RETURNING *`, [id]))[0];
  }

  /** The chain's links, base first. */
  links(chainId: string, db: Db = this.ds): Promise<LinkRow[]> {
    return rows(db, `SELECT * FROM service_chain_links WHERE chain_id = $1 ORDER BY position`, [chainId]);
  }

  /** Links of several chains (list views). */
  linksOfMany(chainIds: string[]): Promise<LinkRow[]> {
    return rows(this.ds, `SELECT * FROM service_chain_links WHERE chain_id = ANY($1::uuid[]) ORDER BY chain_id, position`, [chainIds]);
  }

  /** Sets a link's state. */
  async setLinkState(chainId: string, name: string, state: LinkRow['state'], db: Db = this.ds): Promise<void> {
    await db.query(`UPDATE service_chain_links SET state = $3 WHERE chain_id = $1 AND name = $2`, [chainId, name, state]);
  }

  /** Sets how many replicas a link should have. */
  async setLinkReplicas(tx: Db, chainId: string, name: string, replicas: number): Promise<void> {
    await tx.query(`UPDATE service_chain_links SET replicas = $3 WHERE chain_id = $1 AND name = $2`, [chainId, name, replicas]);
  }

  /** Deletes a link (its replica rows go with it). */
  async deleteLink(tx: Db, chainId: string, name: string): Promise<void> {
    await tx.query(`DELETE FROM service_chain_links WHERE chain_id = $1 AND name = $2`, [chainId, name]);
  }

  /** The chain's replicas, oldest first (the order consumers read them in). */
  replicas(chainId: string, db: Db = this.ds): Promise<ReplicaRow[]> {
    return rows(db, `SELECT * FROM service_chain_replicas WHERE chain_id = $1 ORDER BY created_at, id`, [chainId]);
  }

  /** Replicas of several chains (list views). */
  replicasOfMany(chainIds: string[]): Promise<ReplicaRow[]> {
    return rows(this.ds, `SELECT * FROM service_chain_replicas WHERE chain_id = ANY($1::uuid[]) ORDER BY created_at, id`, [chainIds]);
  }

  /** One replica. */
  async replica(id: string, db: Db = this.ds): Promise<ReplicaRow | undefined> {
    return (await rows<ReplicaRow>(db, `SELECT * FROM service_chain_replicas WHERE id = $1`, [id]))[0];
  }

  /** Every replica placed on a node (what the node should run, or remove). */
  replicasForNode(nodeId: string): Promise<ReplicaRow[]> {
    return rows(this.ds, `SELECT * FROM service_chain_replicas WHERE node_id = $1 ORDER BY id`, [nodeId]);
  }

  /** Changes what a replica should be, bumping its generation so the node acts on it. */
  async updateReplica(id: string, patch: { desired?: 'running' | 'absent'; state?: ReplicaState; reason?: string; exposeTcp?: boolean; format?: boolean }, db: Db = this.ds): Promise<ReplicaRow | undefined> {
    return (await rows<ReplicaRow>(db,
      `UPDATE service_chain_replicas SET desired = COALESCE($2, desired), state = COALESCE($3, state),
         state_reason = CASE WHEN $3::text IS NULL THEN state_reason ELSE $4 END,
         expose_tcp = COALESCE($5, expose_tcp), format = COALESCE($6, format),
         generation = generation + 1, updated_at = now() WHERE id = $1 RETURNING *`,
      [id, patch.desired ?? null, patch.state ?? null, patch.reason ?? '', patch.exposeTcp ?? null, patch.format ?? null]))[0];
  }

  /** Marks replicas as used by their consumers (they count as healthy from now on). */
  async join(ids: string[]): Promise<void> {
    await this.ds.query(`UPDATE service_chain_replicas SET joined = true, updated_at = now() WHERE id = ANY($1::uuid[])`, [ids]);
  }

  /** Bumps a replica's generation (its upstream changed): the node gets the new spec. */
  async bump(id: string, db: Db = this.ds): Promise<ReplicaRow | undefined> {
    return (await rows<ReplicaRow>(db, `UPDATE service_chain_replicas SET generation = generation + 1, updated_at = now() WHERE id = $1 RETURNING *`, [id]))[0];
  }

  /** Records what its node reports; returns the row when anything changed. */
  async observe(id: string, o: ReplicaObservation): Promise<ReplicaRow | undefined> {
    return (await rows<ReplicaRow>(this.ds,
      `UPDATE service_chain_replicas SET observed_state = $2, observed_generation = $3,
         state = COALESCE($4, state), state_reason = CASE WHEN $4::text IS NULL THEN state_reason ELSE $5 END,
         unix_path = $6, tcp_host = $7, tcp_port = $8, tls = $9, tls_hostname = $10,
         size_bytes = CASE WHEN $11::bigint > 0 THEN $11 ELSE size_bytes END, sync_percent = $12, updated_at = now()
       WHERE id = $1 AND (observed_state <> $2 OR observed_generation <> $3 OR ($4::text IS NOT NULL AND (state <> $4 OR state_reason <> $5))
         OR unix_path <> $6 OR tcp_host <> $7 OR tcp_port <> $8 OR tls <> $9 OR sync_percent <> $12 OR ($11::bigint > 0 AND size_bytes <> $11))
       RETURNING *`,
      [id, o.observedState, o.observedGeneration, o.state, o.reason, o.unixPath, o.tcpHost, o.tcpPort, o.tls, o.tlsHostname, o.sizeBytes, o.syncPercent]))[0];
  }

  /** Marks a replica failed (unless it is already failed or being removed); returns it when it changed. */
  async fail(id: string, reason: string): Promise<ReplicaRow | undefined> {
    return (await rows<ReplicaRow>(this.ds,
      `UPDATE service_chain_replicas SET state = 'failed', state_reason = $2, updated_at = now()
       WHERE id = $1 AND state NOT IN ('failed', 'removing') RETURNING *`, [id, reason]))[0];
  }

  /** Marks every live replica on a node failed (the node is unreachable); returns them. */
  failOnNode(nodeId: string, reason: string): Promise<ReplicaRow[]> {
    return rows(this.ds,
      `UPDATE service_chain_replicas SET state = 'failed', state_reason = $2, updated_at = now()
       WHERE node_id = $1 AND state NOT IN ('failed', 'removing') RETURNING *`, [nodeId, reason]);
  }

  /** Deletes a replica row. */
  async deleteReplica(id: string, db: Db = this.ds): Promise<ReplicaRow | undefined> {
    return (await rows<ReplicaRow>(db, `DELETE FROM service_chain_replicas WHERE id = $1 RETURNING *`, [id]))[0];
  }

  /** When the chain's last operation of `kind` failed, or null (repairs back off after a failure). */
  async lastFailure(chainId: string, kind: string): Promise<Date | null> {
    const found = await rows<{ status: string; finished_at: Date | null }>(this.ds, `SELECT status, finished_at FROM operations WHERE target_id = $1 AND kind = $2 ORDER BY id DESC LIMIT 1`, [chainId, kind]);
    return found[0]?.status === 'failed' ? found[0].finished_at : null;
  }

  /** Inserts an attachment. */
  async insertAttachment(tx: Db, a: { id: string; projectId: string; partitionId: string; chainId: string; linkName: string; readOnly: boolean; deviceIndex: number }): Promise<AttachmentRow> {
    return (await rows<AttachmentRow>(tx,
      `INSERT INTO partition_attachments (id, project_id, partition_id, chain_id, link_name, read_only, device_index, state)
       VALUES ($1, $2, $3, $4, $5, $6, $7, 'attaching') RETURNING *`,
      [a.id, a.projectId, a.partitionId, a.chainId, a.linkName, a.readOnly, a.deviceIndex]))[0]!;
  }

  /** One attachment of a partition. */
  async attachment(partitionId: string, id: string, db: Db = this.ds): Promise<AttachmentRow | undefined> {
    return (await rows<AttachmentRow>(db, `SELECT * FROM partition_attachments WHERE id = $1 AND partition_id = $2`, [id, partitionId]))[0];
  }

  /** One attachment by id alone (operations). */
  async attachmentById(id: string, db: Db = this.ds): Promise<AttachmentRow | undefined> {
    return (await rows<AttachmentRow>(db, `SELECT * FROM partition_attachments WHERE id = $1`, [id]))[0];
  }

  /** A keyset page of a partition's attachments. */
  attachmentsPage(partitionId: string, page: PageRequest): Promise<AttachmentRow[]> {
    return rows(this.ds, `SELECT * FROM partition_attachments WHERE partition_id = $1 AND ($2::uuid IS NULL OR id > $2) ORDER BY id LIMIT $3`, [partitionId, page.afterId, page.pageSize + 1]);
  }

  /** Every attachment of a partition (its spec for the node). */
  attachmentsOf(partitionId: string, db: Db = this.ds): Promise<AttachmentRow[]> {
    return rows(db, `SELECT * FROM partition_attachments WHERE partition_id = $1 ORDER BY device_index`, [partitionId]);
  }

  /**
   * Attachments of the given partitions, ordered by partition and device index (a node's desired
   * state, or one partition's spec). Reads made at the same moment share one statement.
   */
  attachmentsOfPartitions(partitionIds: string[]): Promise<AttachmentRow[]> {
    return this.attachmentReads.call(partitionIds);
  }

  /** Every attachment to a chain. */
  attachmentsToChain(chainId: string, db: Db = this.ds): Promise<AttachmentRow[]> {
    return rows(db, `SELECT * FROM partition_attachments WHERE chain_id = $1 ORDER BY id`, [chainId]);
  }

  /** Sets an attachment's state; returns it. */
  async setAttachmentState(id: string, state: AttachmentRow['state'], reason = '', db: Db = this.ds): Promise<AttachmentRow | undefined> {
    return (await rows<AttachmentRow>(db, `UPDATE partition_attachments SET state = $2, state_reason = $3, version = version + 1, updated_at = now() WHERE id = $1 RETURNING *`, [id, state, reason]))[0];
  }

  /** Deletes an attachment. */
  async deleteAttachment(id: string, db: Db = this.ds): Promise<AttachmentRow | undefined> {
    return (await rows<AttachmentRow>(db, `DELETE FROM partition_attachments WHERE id = $1 RETURNING *`, [id]))[0];
  }
}
