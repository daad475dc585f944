/** Structured JSON logs (pino) for the worker; every line names its node. */
import pino, { type Logger } from 'pino';

/**
 * The process's root logger: buffered asynchronous writes to stdout, flushed on exit. Bind the
 * node name with `child({ node })` (done by the worker for every node it runs).
 */
export function createLogger(level: string): Logger {
  const destination = pino.destination({ dest: 1, sync: false, minLength: 4096 });
  process.once('exit', () => {
    try {
      destination.flushSync();
    } catch {
      /* nothing left to flush */
    }
  });
  return pino(
    {
      level,
      base: { service: 'worker', pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}
