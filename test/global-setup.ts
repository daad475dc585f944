/**
 * Jest global setup for integration and end-to-end tests: a fresh PostgreSQL database per run
 * (dropped in global-teardown) and a Redis key prefix of its own, so runs never see each other's data.
 */
import { Client } from 'pg';

export default async function globalSetup(): Promise<void> {
  if (process.env.HP_TEST_DB_CREATED) return;
  const admin = process.env.TEST_DATABASE_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  const name = `hp_test_${process.pid}_${Date.now().toString(36)}`;
  const client = new Client({ connectionString: admin });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE ${name}`);
  } finally {
    await client.end();
  }
  const url = new URL(admin);
  url.pathname = `/${name}`;
  process.env.DATABASE_URL = url.toString();
  process.env.HP_TEST_DB_NAME = name;
  process.env.HP_TEST_DB_CREATED = '1';
  process.env.HYPERPLANE_REDIS_PREFIX = `hp-test-${name}`;
}
