import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Service chains:
 * - `service_chains`: a chain of block-storage providers in a project (`state` is its health:
 *   creating, ready, degraded, failed, deleting).
 * - `service_chain_links`: its links in series (`position` 0 is the base); an encrypt link keeps
 *   its key sealed with the control plane's secrets key (`key_sealed`), never in clear.
 * - `service_chain_replicas`: the providers, one row per replica process on a node, with what its
 *   node reported (endpoints, size, resync progress). A replacement is a new row; `joined` is
 *   false until its consumers were told to use it (it counts as healthy only from then on).
 * - `partition_attachments`: a partition using a chain (its head or an earlier link) as a disk.
 */
export class ServiceChains1732800000000 implements MigrationInterface {
  name = 'ServiceChains1732800000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      CREATE TABLE service_chains (
        id uuid PRIMARY KEY,
        project_id uuid NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        name text NOT NULL,
        description text NOT NULL DEFAULT '',
        state text NOT NULL CHECK (state IN ('creating', 'ready', 'degraded', 'failed', 'deleting')),
        state_reason text NOT NULL DEFAULT '',
        version integer NOT NULL DEFAULT 1,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (project_id, name)
      )`);
    await q.query(`CREATE INDEX service_chains_project ON service_chains (project_id, id)`);
    await q.query(`
      CREATE TABLE service_chain_links (
        chain_id uuid NOT NULL REFERENCES service_chains(id) ON DELETE CASCADE,
        name text NOT NULL,
        position integer NOT NULL CHECK (position >= 0),
        kind text NOT NULL CHECK (kind IN ('base', 'overlay', 'encrypt', 'throttle', 'cache')),
        replicas integer NOT NULL CHECK (replicas >= 1),
        image text NOT NULL DEFAULT '',
        size_bytes bigint NOT NULL DEFAULT 0,
        throttle jsonb NOT NULL DEFAULT '{}',
        key_sealed bytea,
        placement jsonb NOT NULL DEFAULT '{}',
        state text NOT NULL CHECK (state IN ('creating', 'ready', 'removing')),
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (chain_id, name),
        UNIQUE (chain_id, position)
      )`);
    await q.query(`
      CREATE TABLE service_chain_replicas (
        id uuid PRIMARY KEY,
        chain_id uuid NOT NULL,
        link_name text NOT NULL,
        node_id uuid NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
        state text NOT NULL CHECK (state IN ('pending', 'starting', 'syncing', 'healthy', 'failed', 'removing')),
        state_reason text NOT NULL DEFAULT '',
        desired text NOT NULL CHECK (desired IN ('running', 'absent')),
        generation bigint NOT NULL DEFAULT 1,
        observed_state text NOT NULL DEFAULT '',
        observed_generation bigint NOT NULL DEFAULT 0,
        sync_from uuid,
        format boolean NOT NULL DEFAULT false,
        expose_tcp boolean NOT NULL DEFAULT false,
        unix_path text NOT NULL DEFAULT '',
        tcp_host text NOT NULL DEFAULT '',
        tcp_port integer NOT NULL DEFAULT 0,
        tls boolean NOT NULL DEFAULT false,
        tls_hostname text NOT NULL DEFAULT '',
        size_bytes bigint NOT NULL DEFAULT 0,
        sync_percent integer NOT NULL DEFAULT 0,
        joined boolean NOT NULL DEFAULT true,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        FOREIGN KEY (chain_id, link_name) REFERENCES service_chain_links(chain_id, name) ON DELETE CASCADE
      )`);
    await q.query(`CREATE INDEX service_chain_replicas_chain ON service_chain_replicas (chain_id, link_name)`);
    await q.query(`CREATE INDEX service_chain_replicas_node ON service_chain_replicas (node_id)`);
    await q.query(`
      CREATE TABLE partition_attachments (
        id uuid PRIMARY KEY,
        project_id uuid NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        partition_id uuid NOT NULL REFERENCES partitions(id) ON DELETE CASCADE,
        chain_id uuid NOT NULL REFERENCES service_chains(id) ON DELETE RESTRICT,
        link_name text NOT NULL,
        read_only boolean NOT NULL,
        device_index integer NOT NULL CHECK (device_index BETWEEN 0 AND 15),
        state text NOT NULL CHECK (state IN ('attaching', 'attached', 'detaching', 'failed')),
        state_reason text NOT NULL DEFAULT '',
        version integer NOT NULL DEFAULT 1,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (partition_id, device_index)
      )`);
    await q.query(`CREATE INDEX partition_attachments_partition ON partition_attachments (partition_id, id)`);
    await q.query(`CREATE INDEX partition_attachments_chain ON partition_attachments (chain_id)`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TABLE partition_attachments`);
    await q.query(`DROP TABLE service_chain_replicas`);
    await q.query(`DROP TABLE service_chain_links`);
    await q.query(`DROP TABLE service_chains`);
  }
}
