/** One queue of work per thing a reconciler manages (a partition, a provider replica). */

/** What has a queue: its last queued work, and whether it is gone (queued work then does not run). */
export interface Queued {
  tail: Promise<void>;
  gone: boolean;
}

/**
 * Appends `task` to `e`'s queue: it runs after what was queued before, unless `e` is gone by
 * then. The returned promise settles when it ran and never rejects (`onError` gets the failure).
 * While queued or running, the work is in `inflight` (so a caller can wait until all is idle).
 */
export function enqueueOn(e: Queued, task: () => Promise<void>, inflight: Set<Promise<void>>, onError: (error: unknown) => void): Promise<void> {
  const run = e.tail.then(async () => {
    if (!e.gone) await task();
  }).catch(onError);
  e.tail = run;
  inflight.add(run);
  void run.finally(() => inflight.delete(run));
  return run;
}
