import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * An operation run by the replica that accepted its request, without a trip through the queue,
 * holds a lease on it: `lease_owner` (that replica) until `lease_until`, renewed while it runs.
 * A job for the operation does not start it while the lease holds; once a dead replica's lease
 * has run out, the sweep gives the operation a job and another replica takes it up.
 */
export class OperationLeases1733200000000 implements MigrationInterface {
  name = 'OperationLeases1733200000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`ALTER TABLE operations ADD COLUMN lease_owner text, ADD COLUMN lease_until timestamptz`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`ALTER TABLE operations DROP COLUMN lease_owner, DROP COLUMN lease_until`);
  }
}
