import { CancelledError, DeadlineExceededError } from '@hyperplane/domain';
import type { EventBus } from '../events/event-bus';
import type { OperationContext } from './operation-runner';

/** How an operation handler waits for a resource to reach a state. */
export interface WaitForOptions {
  /** Events about this resource (its id) make `check` run at once. */
  resourceId: string;
  /** Only events about resources of this type count (the id alone may be shared by types). */
  resourceType: string;
  /** Besides events, `check` runs this often, in case an event was missed. */
  pollMs: number;
  timeoutMs: number;
  /** The DeadlineExceededError's message when `timeoutMs` passes. */
  timeoutMessage: string;
}

/**
 * Resolves once `check()` answers true; rejects with what `check` throws, with CancelledError when
 * the operation is cancelled, or DeadlineExceededError after the timeout. `check` never runs twice
 * at once. The one wait loop of the operation handlers (partitions, service chains).
 */
export function waitFor(events: EventBus, ctx: OperationContext, check: () => Promise<boolean>, o: WaitForOptions): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let settled = false;
    let checking = false;
    const end = (e?: unknown) => {
      if (settled) return;
      settled = true;
      clearInterval(poll);
      clearTimeout(timer);
      unsubscribe();
      ctx.signal.removeEventListener('abort', onAbort);
      if (e) reject(e);
      else resolve();
    };
    const run = async () => {
      if (settled || checking) return;
      checking = true;
      try {
        if (await check()) end();
      } catch (e) {
        end(e);
      } finally {
        checking = false;
      }
    };
    const unsubscribe = events.subscribeTo(o.resourceId, (e) => {
      if (e.resourceType === o.resourceType) void run();
    });
    const poll = setInterval(() => void run(), o.pollMs);
    const timer = setTimeout(() => end(new DeadlineExceededError(o.timeoutMessage)), o.timeoutMs);
    const onAbort = () => end(new CancelledError('cancelled'));
    if (ctx.signal.aborted) return onAbort();
    ctx.signal.addEventListener('abort', onAbort);
    void run();
  });
}
