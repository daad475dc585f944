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
  /** The resource as the caller has just written it: the first check judges it instead of reading. */
  known?: unknown;
}

/**
 * Resolves once `check(record)` answers true; rejects with what `check` throws, with
 * CancelledError when the operation is cancelled, or DeadlineExceededError after the timeout.
 * `record` is the resource as an event published on this replica carried it (or `o.known` at
 * first); undefined when `check` must read it. `check` never runs twice at once: an event that
 * comes while it runs makes it run once more afterwards (with that event's record), so a change
 * that committed after a read began is not left to the poll. The one wait loop of the operation
 * handlers (partitions, service chains).
 */
export function waitFor(events: EventBus, ctx: OperationContext, check: (record?: unknown) => Promise<boolean>, o: WaitForOptions): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let settled = false;
    let checking = false;
    /** Events came while `check` ran: run again, with the last one's record if every one carried one. */
    let again: { record?: unknown } | undefined;
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
    const run = async (record?: unknown) => {
      if (settled) return;
      if (checking) {
        // A read asked for meanwhile (a poll, another replica's event) stays asked for: a record
        // from here does not stand for what that read would see.
        again = { record: again && again.record === undefined ? undefined : record };
        return;
      }
      checking = true;
      try {
        if (await check(record)) end();
      } catch (e) {
        end(e);
      } finally {
        checking = false;
      }
      const next = again;
      again = undefined;
      if (next) void run(next.record);
    };
    const unsubscribe = events.subscribeTo(o.resourceId, (e, record) => {
      if (e.resourceType === o.resourceType) void run(record);
    });
    const poll = setInterval(() => void run(), o.pollMs);
    const timer = setTimeout(() => end(new DeadlineExceededError(o.timeoutMessage)), o.timeoutMs);
    const onAbort = () => end(new CancelledError('cancelled'));
    if (ctx.signal.aborted) return onAbort();
    ctx.signal.addEventListener('abort', onAbort);
    void run(o.known);
  });
}
