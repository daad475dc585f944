import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * The image library: one row per registered image file, its self-describing metadata copied into
 * `metadata` (JSONB) for search. Indexes are the ones the search queries use:
 * - (project_id, id): tenancy and keyset pages;
 * - GIN jsonb_path_ops on metadata: tags, labels and `=` filters as `metadata @> ...`;
 * - GIN on `search`: free text (`search @@ websearch_to_tsquery('english', ...)`);
 * - btree on the schema's numeric hardware fields: range filters (`minMemoryMiB >= 2048`).
 */
export class Images1732600000000 implements MigrationInterface {
  name = 'Images1732600000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      CREATE TABLE images (
        id uuid PRIMARY KEY,
        project_id uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
        name text NOT NULL,
        format text NOT NULL CHECK (format IN ('qcow2', 'vhdx', 'raw')),
        state text NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'deleting')),
        size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
        virtual_size_bytes bigint NOT NULL CHECK (virtual_size_bytes >= 0),
        storage_path text NOT NULL,
        metadata jsonb NOT NULL DEFAULT '{}',
        expires_at timestamptz,
        search tsvector GENERATED ALWAYS AS (
          setweight(to_tsvector('english', name), 'A') ||
          setweight(to_tsvector('english', coalesce(metadata ->> 'description', '')), 'B') ||
          setweight(to_tsvector('english', coalesce(metadata #>> '{content,os}', '') || ' ' || coalesce(metadata #>> '{content,summary}', '')), 'C') ||
          setweight(to_tsvector('english', coalesce(metadata ->> 'tags', '')), 'B')
        ) STORED,
        version integer NOT NULL DEFAULT 1,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT images_project_name UNIQUE (project_id, name)
      )`);
    await q.query(`CREATE INDEX images_project_id ON images (project_id, id)`);
    await q.query(`CREATE INDEX images_metadata ON images USING gin (metadata jsonb_path_ops)`);
    await q.query(`CREATE INDEX images_search ON images USING gin (search)`);
    await q.query(`CREATE INDEX images_min_memory ON images (project_id, ((metadata #>> '{hardware,minMemoryMiB}')::numeric))`);
    await q.query(`CREATE INDEX images_min_vcpus ON images (project_id, ((metadata #>> '{hardware,minVcpus}')::numeric))`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TABLE images`);
  }
}
