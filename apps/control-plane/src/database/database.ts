/**
 * PostgreSQL through TypeORM: one DataSource per process, the schema only through migrations.
 */
import { MIGRATIONS } from '@hyperplane/migrations';
import { DataSource, EntityManager } from 'typeorm';
import { Batcher } from '../common/batcher';

/** Creates (does not connect) the control plane's DataSource. */
export function createDataSource(databaseUrl: string, poolSize = 20): DataSource {
  return new DataSource({
    type: 'postgres',
    url: databaseUrl,
    migrations: MIGRATIONS,
    migrationsTableName: 'schema_migrations',
    synchronize: false,
    migrationsRun: false,
    logging: false,
    extra: { max: poolSize, connectionTimeoutMillis: 5000, application_name: 'hyperplane-control-plane' },
  });
}

/** Arbitrary key for the advisory lock that serialises migrations across replicas. */
const MIGRATION_LOCK = 7_340_011;

/**
 * Applies pending migrations. Replicas starting together take turns on an advisory lock, so each
 * migration runs exactly once. Returns the names of the migrations applied.
 */
export async function migrate(ds: DataSource): Promise<string[]> {
  const runner = ds.createQueryRunner();
  await runner.connect();
  try {
    await runner.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK]);
    const applied = await ds.runMigrations({ transaction: 'each' });
    return applied.map((m) => m.name);
  } finally {
    await runner.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch(() => undefined);
    await runner.release();
  }
}

/** Runs `work` in one transaction; an error rolls it back. */
export function inTransaction<T>(ds: DataSource, work: (em: EntityManager) => Promise<T>): Promise<T> {
  return ds.transaction(work);
}

/** Anything that can run SQL: the DataSource's manager or a transaction's. */
export type Db = Pick<EntityManager, 'query'>;

/**
 * Runs SQL and returns its rows. TypeORM's postgres driver answers UPDATE/DELETE with
 * `[rows, affected]` and everything else with `rows`; this evens that out. `name` (hot statements
 * outside transactions) makes it a prepared statement: PostgreSQL parses and plans it once per
 * connection instead of every time. A name must always go with the same text.
 */
export async function rows<T>(db: Db, text: string, params: unknown[] = [], name?: string): Promise<T[]> {
  const pool = poolOf(db);
  if (pool) return (await (name ? pool.query({ name, text, values: params }) : pool.query(text, params))).rows as T[];
  const res: unknown = await db.query(text, params);
  if (Array.isArray(res) && res.length === 2 && Array.isArray(res[0]) && typeof res[1] === 'number') return res[0] as T[];
  return res as T[];
}

/**
 * Outside a transaction, statements go straight to the pool TypeORM manages: one round trip, none
 * of the query runner's per-call bookkeeping (the hot read path is measured by bench:api).
 */
interface PgPool {
  query(text: string, params: unknown[]): Promise<{ rows: unknown[] }>;
  query(config: { name: string; text: string; values: unknown[] }): Promise<{ rows: unknown[] }>;
}

function poolOf(db: Db): PgPool | undefined {
  if (!(db instanceof DataSource)) return undefined;
  const master = (db.driver as unknown as { master?: PgPool }).master;
  return master && typeof master.query === 'function' ? master : undefined;
}

/** The rows for `ids`, in that order (undefined where none came back): the answer of a batched statement. */
export function inOrder<T extends { id: string }>(found: T[], ids: readonly string[]): Array<T | undefined> {
  const m = new Map(found.map((r) => [r.id, r]));
  return ids.map((id) => m.get(id));
}

/** Reads by id coalesced into one `SELECT * FROM <table> WHERE id = ANY(...)` per moment. */
export function rowsByIdBatcher<T extends { id: string }>(ds: () => DataSource, table: string): Batcher<string, T | undefined> {
  return new Batcher<string, T | undefined>(async (ids) => inOrder(await rows<T>(ds(), `SELECT * FROM ${table} WHERE id = ANY($1::uuid[])`, [ids], `${table}.byId`), ids));
}

/** True when `db` is the DataSource or its own manager, i.e. no transaction is open on it. */
export function outsideTransaction(db: Db, ds: DataSource): boolean {
  return db === ds || db === ds.manager;
}

/** Runs an UPDATE/DELETE and returns how many rows it touched. */
export async function affected(db: Db, text: string, params: unknown[] = []): Promise<number> {
  const res: unknown = await db.query(text, params);
  if (Array.isArray(res) && res.length === 2 && typeof res[1] === 'number') return res[1];
  return Array.isArray(res) ? res.length : 0;
}

/** Takes a transaction-scoped advisory lock on `key` (released at commit or rollback). */
export async function lockForTransaction(db: Db, key: string): Promise<void> {
  await db.query(`SELECT pg_advisory_xact_lock(hashtext($1))`, [key]);
}

/** True when `e` is PostgreSQL's unique-violation error (optionally on a given constraint). */
export function isUniqueViolation(e: unknown, constraint?: string): boolean {
  const err = e as { code?: string; constraint?: string; driverError?: { code?: string; constraint?: string } };
  const code = err?.driverError?.code ?? err?.code;
  const name = err?.driverError?.constraint ?? err?.constraint;
  return code === '23505' && (constraint === undefined || name === constraint);
}
