import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Placement requests kept on each partition (group, strategy, selectors, CPU needs), so a restart
 * places it again under the same rules; per-project quotas.
 */
export class Placement1732500000000 implements MigrationInterface {
  name = 'Placement1732500000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`ALTER TABLE partitions ADD COLUMN placement jsonb NOT NULL DEFAULT '{}'`);
    await q.query(`ALTER TABLE partitions ADD COLUMN placement_group text`);
    await q.query(`CREATE INDEX partitions_group ON partitions (project_id, placement_group, node_id) WHERE placement_group IS NOT NULL`);
    await q.query(`ALTER TABLE projects ADD COLUMN quota jsonb NOT NULL DEFAULT '{}'`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`ALTER TABLE projects DROP COLUMN quota`);
    await q.query(`DROP INDEX partitions_group`);
    await q.query(`ALTER TABLE partitions DROP COLUMN placement_group`);
    await q.query(`ALTER TABLE partitions DROP COLUMN placement`);
  }
}
