import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Snapshots and live migration:
 * - `snapshots`: one row per internal snapshot of a partition's disk (the worker knows it by its
 *   id as the qcow2 tag); `parent_id` makes the tree; a partition's `current_snapshot_id` is the
 *   snapshot its running state descends from (the parent of the next one).
 * - partitions may be `migrating`; `target_node_id` names the destination while they are (its
 *   capacity is reserved as well as the source's); `observed_reason` keeps the reason the node
 *   reported, which tells where a guest lives after a fault ("migrating to ...", "migrated away").
 * - operations carry `metadata` (a migration's progress and result).
 * - nodes say whether they have TLS credentials (`tls`): an encrypted migration needs both ends.
 */
export class SnapshotsMigration1733000000000 implements MigrationInterface {
  name = 'SnapshotsMigration1733000000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`ALTER TABLE partitions DROP CONSTRAINT partitions_state_check`);
    await q.query(`ALTER TABLE partitions ADD CONSTRAINT partitions_state_check
      CHECK (state IN ('pending', 'scheduled', 'starting', 'running', 'stopping', 'stopped', 'failed', 'deleting', 'migrating'))`);
    await q.query(`ALTER TABLE partitions ADD COLUMN target_node_id uuid REFERENCES nodes(id) ON DELETE RESTRICT`);
    await q.query(`ALTER TABLE partitions ADD COLUMN observed_reason text NOT NULL DEFAULT ''`);
    await q.query(`ALTER TABLE partitions ADD COLUMN current_snapshot_id uuid`);
    await q.query(`CREATE INDEX partitions_target_node ON partitions (target_node_id) WHERE target_node_id IS NOT NULL`);
    await q.query(`ALTER TABLE operations ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}'`);
    await q.query(`ALTER TABLE nodes ADD COLUMN tls boolean NOT NULL DEFAULT false`);
    await q.query(`
      CREATE TABLE snapshots (
        id uuid PRIMARY KEY,
        project_id uuid NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        partition_id uuid NOT NULL REFERENCES partitions(id) ON DELETE CASCADE,
        parent_id uuid REFERENCES snapshots(id) ON DELETE SET NULL,
        name text NOT NULL,
        description text NOT NULL DEFAULT '',
        state text NOT NULL CHECK (state IN ('creating', 'ready', 'deleting')),
        with_memory boolean NOT NULL,
        vm_state_bytes bigint NOT NULL DEFAULT 0,
        vm_clock_ms bigint NOT NULL DEFAULT 0,
        version integer NOT NULL DEFAULT 1,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (partition_id, name)
      )`);
    await q.query(`CREATE INDEX snapshots_partition ON snapshots (partition_id, id)`);
    await q.query(`CREATE INDEX snapshots_parent ON snapshots (parent_id) WHERE parent_id IS NOT NULL`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TABLE snapshots`);
    await q.query(`ALTER TABLE nodes DROP COLUMN tls`);
    await q.query(`ALTER TABLE operations DROP COLUMN metadata`);
    await q.query(`DROP INDEX partitions_target_node`);
    await q.query(`ALTER TABLE partitions DROP COLUMN current_snapshot_id`);
    await q.query(`ALTER TABLE partitions DROP COLUMN observed_reason`);
    await q.query(`ALTER TABLE partitions DROP COLUMN target_node_id`);
    await q.query(`ALTER TABLE partitions DROP CONSTRAINT partitions_state_check`);
    await q.query(`ALTER TABLE partitions ADD CONSTRAINT partitions_state_check
      CHECK (state IN ('pending', 'scheduled', 'starting', 'running', 'stopping', 'stopped', 'failed', 'deleting'))`);
  }
}
