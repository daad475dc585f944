/**
 * Coalescing of small independent statements into one (what lets a replica keep up with a
 * fleet: a round trip to PostgreSQL or Redis costs far more than the work it carries).
 */

/** How a {@link Batcher} groups calls. */
export interface BatcherOptions<I> {
  /**
   * Most items in one batch call (of total `weight`, when given; a batch always takes one item).
   * Batches are taken in call order: once an item does not fit, the items behind it wait with it.
   */
  maxBatch?: number;
  /** What one item counts for against `maxBatch` (default 1). */
  weight?: (item: I) => number;
  /** Batch calls under way at once; calls beyond wait for one to finish, and so join bigger batches. */
  maxInFlight?: number;
  /**
   * Items with the same key never share a batch (one statement cannot update a row twice); the
   * later one waits for the next batch, so calls on one key keep their order.
   */
  key?: (item: I) => string;
}

/**
 * Calls made in the same turn of the event loop (and those made while the previous batches are
 * still under way) go to `run` together, DataLoader-style. `run` answers one result per item, in
 * order. When a batch of several fails, each of its items is run alone, so one bad item fails
 * only its own caller.
 */
export class Batcher<I, O> {
  private queue: Array<{ item: I; resolve: (o: O) => void; reject: (e: unknown) => void }> = [];
  private scheduled = false;
  private inFlight = 0;
  private readonly maxBatch: number;
  private readonly maxInFlight: number;

  constructor(
    private readonly run: (items: I[]) => Promise<O[]>,
    private readonly opts: BatcherOptions<I> = {},
  ) {
    this.maxBatch = opts.maxBatch ?? 500;
    this.maxInFlight = opts.maxInFlight ?? 2;
  }

  /** Queues `item` for the next batch; resolves with its result. */
  call(item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled || this.inFlight >= this.maxInFlight || this.queue.length === 0) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  private flush(): void {
    while (this.inFlight < this.maxInFlight && this.queue.length > 0) {
      const batch = this.take();
      this.inFlight++;
      void this.execute(batch).finally(() => {
        this.inFlight--;
        this.schedule();
      });
    }
  }

  private take(): Batcher<I, O>['queue'] {
    const { key, weight } = this.opts;
    const seen = new Set<string>();
    const batch: Batcher<I, O>['queue'] = [];
    const rest: Batcher<I, O>['queue'] = [];
    let total = 0;
    // Once an item does not fit, the lighter ones behind it do not overtake it: else a heavy item
    // (a create with `count` 100) waits while batch after batch fills up with light ones.
    let full = false;
    for (const q of this.queue) {
      const k = key?.(q.item);
      const w = weight ? weight(q.item) : 1;
      full ||= batch.length > 0 && total + w > this.maxBatch;
      if (full || (k !== undefined && seen.has(k))) {
        rest.push(q);
        if (k !== undefined) seen.add(k); // later items of this key wait too, so they keep their order
      } else {
        if (k !== undefined) seen.add(k);
        batch.push(q);
        total += w;
      }
    }
    this.queue = rest;
    return batch;
  }

  private async execute(batch: Batcher<I, O>['queue']): Promise<void> {
    try {
      const out = await this.run(batch.map((b) => b.item));
      batch.forEach((b, i) => b.resolve(out[i]!));
    } catch (e) {
      if (batch.length === 1) {
        batch[0]!.reject(e);
        return;
      }
      await Promise.all(
        batch.map(async (b) => {
          try {
            b.resolve((await this.run([b.item]))[0]!);
          } catch (err) {
            b.reject(err);
          }
        }),
      );
    }
  }
}
