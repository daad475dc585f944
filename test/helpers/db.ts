/** Direct SQL for tests: seeding nodes and counting rows to prove a rejected request changed nothing. */
import { Client } from 'pg';
import { uuidv7 } from '@hyperplane/domain';

/** Runs one query on the test database. */
export async function sql<T = any>(text: string, params: unknown[] = []): Promise<T[]> {
  const c = new Client({ connectionString: process.env.DATABASE_URL });
  await c.connect();
  try {
    return (await c.query(text, params)).rows as T[];
  } finally {
    await c.end();
  }
}

/** Nodes this test file seeded (Jest loads this module once per file). */
const seeded: string[] = [];

/**
 * Takes this file's seeded nodes out of service (unreachable, cordoned, heartbeat long ago), so
 * later test files in the same database never place partitions on nodes with no agent behind
 * them. Registered for every integration file by test/helpers/retire-seeded-nodes.ts.
 */
export async function retireSeededNodes(): Promise<void> {
  if (seeded.length === 0) return;
  await sql(`UPDATE nodes SET status = 'unreachable', cordoned = true, last_heartbeat_at = now() - interval '1 day' WHERE id = ANY($1::uuid[])`, [seeded.splice(0)]);
}

/**
 * Takes every node registered so far out of service. End-to-end files call it first: they share
 * the run's database, and the nodes of earlier files have no agent any more.
 */
export async function retireAllNodes(): Promise<void> {
  try {
    await sql(`UPDATE nodes SET status = 'unreachable', cordoned = true, last_heartbeat_at = now() - interval '1 day'`);
  } catch (e) {
    if ((e as { code?: string }).code !== '42P01') throw e; // no schema yet: the first file of the run
  }
}

/** Inserts a ready node with the `sample` image and no agent behind it (its operations fail as "unreachable"). */
export async function seedNode(name: string, opts: { vcpus?: number; memoryMiB?: number } = {}): Promise<string> {
  const id = uuidv7();
  await sql(
    `INSERT INTO nodes (id, name, address, status, driver, accelerator, vcpus, memory_mib, disk_bytes, images, last_heartbeat_at)
     VALUES ($1, $2, '127.0.0.250', 'ready', 'simulated', 'tcg', $3, $4, $5, $6, now() + interval '1 hour')`,
    [id, name, opts.vcpus ?? 64, opts.memoryMiB ?? 1024 * 1024, 1024 ** 4, JSON.stringify([{ name: 'sample', format: 'qcow2', sizeBytes: 1, virtualSizeBytes: 1 }])],
  );
  seeded.push(id);
  return id;
}

/**
 * Row counts of the tables a rejected request must not touch. Chain repairs are left out: the
 * chain health sweep of any control plane of the run starts them by itself, at its own times, for
 * chains that other test files left behind on nodes that are gone.
 */
export async function counts(): Promise<Record<string, number>> {
  const rows = await sql<{ t: string; n: string }>(
    `SELECT 'partitions' t, count(*) n FROM partitions UNION ALL SELECT 'operations', count(*) FROM operations WHERE kind <> 'service-chain.repair'
     UNION ALL SELECT 'projects', count(*) FROM projects UNION ALL SELECT 'tokens', count(*) FROM api_tokens
     UNION ALL SELECT 'allocated', COALESCE(sum(allocated_memory_mib), 0) FROM nodes`,
  );
  return Object.fromEntries(rows.map((r) => [r.t, Number(r.n)]));
}
