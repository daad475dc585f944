/**
 * Structured JSON logs (pino). Every line written while serving a request carries its request id,
 * through AsyncLocalStorage, so services and repositories need no logger plumbing.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import pino, { Logger } from 'pino';

/** Per-request context carried through async calls. */
export interface RequestContext {
  requestId: string;
}

/** Holds the current request's context. */
export const requestContext = new AsyncLocalStorage<RequestContext>();

/** The process-wide root logger; `mixin` adds the request id of the current request, if any. */
export function createLogger(level: string, name: string): Logger {
  // Buffered, asynchronous writes: one syscall per few KiB instead of one per line. Flushed on exit.
  const destination = pino.destination({ dest: 1, sync: false, minLength: 4096 });
  const flush = () => {
    try {
      destination.flushSync();
    } catch {
      /* nothing left to flush */
    }
  };
  process.once('exit', flush);
  const log = pino({
    level,
    base: { service: name, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    mixin: () => {
      const ctx = requestContext.getStore();
      return ctx ? { requestId: ctx.requestId } : {};
    },
  }, destination);
  return log;
}
