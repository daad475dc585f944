import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Projects, API tokens, nodes, partitions, operations and idempotency keys. Every resource has a
 * `version` column behind its etag. Lists use keyset pagination on (project_id, id) with
 * time-ordered UUIDv7 ids, so each list query is one index range scan.
 */
export class InitialSchema1732400000000 implements MigrationInterface {
  name = 'InitialSchema1732400000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      CREATE TABLE projects (
        id uuid PRIMARY KEY,
        name text NOT NULL UNIQUE,
        description text NOT NULL DEFAULT '',
        version integer NOT NULL DEFAULT 1,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
      )`);
    await q.query(`
      CREATE TABLE api_tokens (
        id uuid PRIMARY KEY,
        project_id uuid REFERENCES projects(id) ON DELETE CASCADE,
        role text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin', 'cluster-admin')),
        token_hash bytea NOT NULL UNIQUE,
        prefix text NOT NULL,
        description text NOT NULL DEFAULT '',
        version integer NOT NULL DEFAULT 1,
        created_at timestamptz NOT NULL DEFAULT now(),
        last_used_at timestamptz,
        CHECK ((role = 'cluster-admin') = (project_id IS NULL))
      )`);
    await q.query(`CREATE INDEX api_tokens_project ON api_tokens (project_id, id)`);
    await q.query(`
      CREATE TABLE nodes (
        id uuid PRIMARY KEY,
        name text NOT NULL UNIQUE,
        address text NOT NULL,
        status text NOT NULL DEFAULT 'ready' CHECK (status IN ('ready', 'unreachable')),
        cordoned boolean NOT NULL DEFAULT false,
        draining boolean NOT NULL DEFAULT false,
        driver text NOT NULL DEFAULT 'qemu',
        accelerator text NOT NULL DEFAULT '',
        qemu_version text NOT NULL DEFAULT '',
        cpu_flags text[] NOT NULL DEFAULT '{}',
        machine_types text[] NOT NULL DEFAULT '{}',
        labels jsonb NOT NULL DEFAULT '{}',
        images jsonb NOT NULL DEFAULT '[]',
        vcpus integer NOT NULL DEFAULT 0,
        memory_mib bigint NOT NULL DEFAULT 0,
        disk_bytes bigint NOT NULL DEFAULT 0,
        allocated_vcpus integer NOT NULL DEFAULT 0,
        allocated_memory_mib bigint NOT NULL DEFAULT 0,
        allocated_disk_bytes bigint NOT NULL DEFAULT 0,
        cpu_allocation_ratio real NOT NULL DEFAULT 16 CHECK (cpu_allocation_ratio > 0),
        memory_allocation_ratio real NOT NULL DEFAULT 1 CHECK (memory_allocation_ratio > 0),
        connected_to text,
        last_heartbeat_at timestamptz,
        version integer NOT NULL DEFAULT 1,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CHECK (allocated_vcpus >= 0 AND allocated_memory_mib >= 0 AND allocated_disk_bytes >= 0)
      )`);
    await q.query(`
      CREATE TABLE partitions (
        id uuid PRIMARY KEY,
        project_id uuid NOT NULL REFERENCES projects(id) ON DELETE RESTRICT,
        name text NOT NULL,
        description text NOT NULL DEFAULT '',
        state text NOT NULL CHECK (state IN ('pending', 'scheduled', 'starting', 'running', 'stopping', 'stopped', 'failed', 'deleting')),
        state_reason text NOT NULL DEFAULT '',
        desired text NOT NULL DEFAULT 'running' CHECK (desired IN ('running', 'stopped', 'absent')),
        generation bigint NOT NULL DEFAULT 1,
        observed_state text NOT NULL DEFAULT '',
        observed_generation bigint NOT NULL DEFAULT 0,
        node_id uuid REFERENCES nodes(id) ON DELETE RESTRICT,
        vcpus integer NOT NULL,
        memory_mib bigint NOT NULL,
        disk_gib integer NOT NULL,
        image text NOT NULL,
        labels jsonb NOT NULL DEFAULT '{}',
        version integer NOT NULL DEFAULT 1,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (project_id, name)
      )`);
    await q.query(`CREATE INDEX partitions_project_id ON partitions (project_id, id)`);
    await q.query(`CREATE INDEX partitions_project_state ON partitions (project_id, state, id)`);
    await q.query(`CREATE INDEX partitions_node ON partitions (node_id) WHERE node_id IS NOT NULL`);
    await q.query(`CREATE INDEX partitions_labels ON partitions USING gin (labels jsonb_path_ops)`);
    await q.query(`
      CREATE TABLE operations (
        id uuid PRIMARY KEY,
        project_id uuid REFERENCES projects(id) ON DELETE CASCADE,
        kind text NOT NULL,
        target_type text NOT NULL,
        target_id uuid NOT NULL,
        status text NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
        phase text NOT NULL DEFAULT '',
        progress integer NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
        params jsonb NOT NULL DEFAULT '{}',
        error jsonb,
        cancel_requested boolean NOT NULL DEFAULT false,
        request_id text NOT NULL DEFAULT '',
        attempts integer NOT NULL DEFAULT 0,
        version integer NOT NULL DEFAULT 1,
        created_at timestamptz NOT NULL DEFAULT now(),
        started_at timestamptz,
        finished_at timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now()
      )`);
    await q.query(`CREATE INDEX operations_project_id ON operations (project_id, id)`);
    await q.query(`CREATE INDEX operations_target ON operations (target_id, id)`);
    await q.query(`CREATE INDEX operations_live ON operations (status) WHERE status IN ('pending', 'running')`);
    await q.query(`
      CREATE TABLE idempotency_keys (
        scope text NOT NULL,
        key text NOT NULL,
        request_hash text NOT NULL,
        response jsonb,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (scope, key)
      )`);
    await q.query(`CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at)`);
  }

  async down(q: QueryRunner): Promise<void> {
    for (const t of ['idempotency_keys', 'operations', 'partitions', 'nodes', 'api_tokens', 'projects']) {
      await q.query(`DROP TABLE IF EXISTS ${t}`);
    }
  }
}
