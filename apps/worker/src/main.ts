/**
 * Worker agent entrypoint: `node apps/worker/dist/main.js --node NAME --address ADDR [...]`.
 * A bad flag prints one line naming it and exits 2. SIGTERM/SIGINT close the stream and exit
 * WITHOUT stopping guests: they run in their own sessions and outlive the agent, which adopts
 * them again when it restarts.
 */
import { startWorker } from './agent';
import { CliError, parseCli, USAGE, type WorkerConfig } from './cli';
import { createLogger } from './logger';

async function main(): Promise<void> {
  let config: WorkerConfig;
  try {
    config = parseCli(process.argv.slice(2), process.env);
  } catch (error) {
    if (error instanceof CliError) {
      process.stderr.write(`worker: ${error.message}\n`);
      process.exit(2);
    }
    throw error;
  }
  if (config.help) {
    process.stdout.write(USAGE);
    return;
  }
  const root = createLogger(config.logLevel);
  const log = root.child({ node: config.nodeName });
  let worker: Awaited<ReturnType<typeof startWorker>>;
  try {
    worker = await startWorker(config, root);
  } catch (error) {
    log.fatal({ err: error }, 'worker failed to start');
    process.exit(1);
  }
  let stopping = false;
  const shutdown = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, 'stopping the agent; guests keep running');
    const force = setTimeout(() => process.exit(0), 5_000);
    force.unref();
    worker.stop().then(
      () => process.exit(0),
      (error: unknown) => {
        log.error({ err: error }, 'error while stopping');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
}

void main();
