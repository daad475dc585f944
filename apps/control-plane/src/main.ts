/**
 * Control-plane entrypoint: `node apps/control-plane/dist/main.js`. Configuration comes from the
 * environment (API.md, Configuration); a bad value stops the start with one line naming it.
 */
import { ConfigError, loadConfig } from './config';
import { startControlPlane } from './bootstrap';

async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig();
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`hyperplane: configuration error: ${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
  const cp = await startControlPlane(config);
  const stop = (signal: string) => {
    cp.logger.info({ signal }, 'shutting down');
    const t = setTimeout(() => process.exit(1), 10_000);
    t.unref();
    cp.close().then(() => process.exit(0), () => process.exit(1));
  };
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));
}

main().catch((e: unknown) => {
  process.stderr.write(`hyperplane: control plane failed to start: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
