import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Images that move between nodes and the control plane:
 * - images.state `importing` (a name reserved by an import in progress; never listed) and
 *   images.digest (`sha256-64m:<hex>`), with the per-block hashes in image_digests so that a
 *   metadata write re-hashes only the blocks it touched;
 * - partitions.image_id: the library image a partition's disk is based on (null for a file of a
 *   node's own store, such as `sample`);
 * - node_images: what each node's agent last reported of its store (metadata read from inside the
 *   files, rejected files with the reason, copies of library images), and nodes.image_store_dir;
 * - transfers: one-time tokens for the agent's FetchFile / SendFile calls, and their progress.
 */
export class ImageDistribution1732700000000 implements MigrationInterface {
  name = 'ImageDistribution1732700000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`ALTER TABLE images DROP CONSTRAINT images_state_check`);
    await q.query(`ALTER TABLE images ADD CONSTRAINT images_state_check CHECK (state IN ('importing', 'ready', 'deleting'))`);
    await q.query(`ALTER TABLE images ADD COLUMN digest text`);
    await q.query(`
      CREATE TABLE image_digests (
        image_id uuid PRIMARY KEY REFERENCES images (id) ON DELETE CASCADE,
        block_bytes integer NOT NULL CHECK (block_bytes > 0),
        blocks bytea NOT NULL,
        file_bytes bigint NOT NULL CHECK (file_bytes >= 0),
        file_mtime_ms double precision NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
      )`);
    await q.query(`ALTER TABLE partitions ADD COLUMN image_id uuid REFERENCES images (id)`);
    await q.query(`CREATE INDEX partitions_image_id ON partitions (image_id) WHERE image_id IS NOT NULL`);
    await q.query(`
      CREATE TABLE node_images (
        node_id uuid NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
        name text NOT NULL,
        path text NOT NULL,
        format text NOT NULL,
        size_bytes bigint NOT NULL DEFAULT 0,
        virtual_size_bytes bigint NOT NULL DEFAULT 0,
        metadata jsonb,
        rejected_reason text,
        rejected_message text,
        library_image_id uuid,
        reported_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (node_id, path)
      )`);
    await q.query(`ALTER TABLE nodes ADD COLUMN image_store_dir text NOT NULL DEFAULT ''`);
    await q.query(`CREATE INDEX node_images_library ON node_images (library_image_id, node_id) WHERE library_image_id IS NOT NULL`);
    await q.query(`
      CREATE TABLE transfers (
        id uuid PRIMARY KEY,
        token_hash text NOT NULL,
        direction text NOT NULL CHECK (direction IN ('to-node', 'from-node')),
        node_id uuid NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
        path text NOT NULL,
        max_bytes bigint,
        state text NOT NULL DEFAULT 'issued' CHECK (state IN ('issued', 'streaming', 'done', 'failed', 'cancelled')),
        bytes_done bigint NOT NULL DEFAULT 0,
        size_bytes bigint,
        digest text,
        error text,
        expires_at timestamptz NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
      )`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TABLE transfers`);
    await q.query(`DROP TABLE node_images`);
    await q.query(`ALTER TABLE nodes DROP COLUMN image_store_dir`);
    await q.query(`DROP INDEX partitions_image_id`);
    await q.query(`ALTER TABLE partitions DROP COLUMN image_id`);
    await q.query(`DROP TABLE image_digests`);
    await q.query(`ALTER TABLE images DROP COLUMN digest`);
    await q.query(`DELETE FROM images WHERE state = 'importing'`);
    await q.query(`ALTER TABLE images DROP CONSTRAINT images_state_check`);
    await q.query(`ALTER TABLE images ADD CONSTRAINT images_state_check CHECK (state IN ('ready', 'deleting'))`);
  }
}
