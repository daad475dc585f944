/** Drops the per-run test database created by global-setup. */
import { Client } from 'pg';

export default async function globalTeardown(): Promise<void> {
  const name = process.env.HP_TEST_DB_NAME;
  if (!name || process.env.HP_KEEP_TEST_DB) return;
  const admin = process.env.TEST_DATABASE_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  const client = new Client({ connectionString: admin });
  await client.connect();
  try {
    await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  } finally {
    await client.end();
  }
  delete process.env.HP_TEST_DB_CREATED;
}
