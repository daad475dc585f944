/**
 * `npm run admin-token`: creates a new cluster-admin token and writes it to
 * `$HYPERPLANE_DATA_DIR/admin-token` (mode 0600), for when the first one is lost (tokens are
 * stored hashed, so a lost secret cannot be shown again). Needs only database access.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { uuidv7 } from '@hyperplane/domain';
import { ConfigError, loadConfig } from './config';
import { createDataSource, migrate } from './database/database';
import { AuthService } from './projects/auth.service';

async function main(): Promise<void> {
  const config = loadConfig();
  const ds = createDataSource(config.databaseUrl, 2);
  await ds.initialize();
  try {
    await migrate(ds);
    const { secret, hash, prefix } = AuthService.newSecret();
    await ds.query(`INSERT INTO api_tokens (id, project_id, role, token_hash, prefix, description) VALUES ($1, NULL, 'cluster-admin', $2, $3, 'npm run admin-token')`, [uuidv7(), hash, prefix]);
    mkdirSync(config.dataDir, { recursive: true });
    const file = join(config.dataDir, 'admin-token');
    writeFileSync(file, secret + '\n', { mode: 0o600 });
    process.stdout.write(`new cluster-admin token written to ${file}\n`);
  } finally {
    await ds.destroy();
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`hyperplane admin-token: ${e instanceof ConfigError ? 'configuration error: ' : ''}${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(e instanceof ConfigError ? 2 : 1);
});
