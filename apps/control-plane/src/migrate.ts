/** `npm run migrate`: applies pending migrations and exits. */
import { ConfigError, loadConfig } from './config';
import { createDataSource, migrate } from './database/database';

async function main(): Promise<void> {
  const config = loadConfig();
  const ds = createDataSource(config.databaseUrl, 2);
  await ds.initialize();
  try {
    const applied = await migrate(ds);
    process.stdout.write(applied.length ? `applied: ${applied.join(', ')}\n` : 'schema is up to date\n');
  } finally {
    await ds.destroy();
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`hyperplane migrate: ${e instanceof ConfigError ? 'configuration error: ' : ''}${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(e instanceof ConfigError ? 2 : 1);
});
