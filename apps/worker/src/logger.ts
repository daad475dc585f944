/** Structured JSON logs (pino) for the worker; every line names its node. */
import pino, { type Logger } from 'pino';

/**
 * The process's root logger: asynchronous writes to stdout, each line handed to the kernel as
 * soon as possible (no batching: an agent killed with SIGKILL loses at most the line in flight),
 * flushed on exit. Bind the node name with `child({ node })` (the worker does, for every node).
 */
export function createLogger(level: string): Logger {
  const destination = pino.destination({ dest: 1, sync: false });
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
