import { Batcher } from './batcher';

/** A batch function that records the batches it was given and answers each item doubled. */
function recorder(fail?: (items: number[]) => boolean) {
  const batches: number[][] = [];
  const run = async (items: number[]) => {
    batches.push([...items]);
    await new Promise((r) => setTimeout(r, 5));
    if (fail?.(items)) throw new Error(`batch ${items.join(',')} failed`);
    return items.map((i) => i * 2);
  };
  return { batches, run };
}

describe('Batcher', () => {
  it('answers each caller from one batch call for calls made at the same moment', async () => {
    const r = recorder();
    const b = new Batcher(r.run);
    await expect(Promise.all([1, 2, 3].map((i) => b.call(i)))).resolves.toEqual([2, 4, 6]);
    expect(r.batches).toEqual([[1, 2, 3]]);
  });

  it('gathers calls made while batches are under way into the next one', async () => {
    const r = recorder();
    const b = new Batcher(r.run, { maxInFlight: 1 });
    const first = b.call(1);
    await new Promise((res) => setImmediate(res)); // batch [1] is under way
    const later = [2, 3, 4].map((i) => b.call(i));
    await expect(Promise.all([first, ...later])).resolves.toEqual([2, 4, 6, 8]);
    expect(r.batches).toEqual([[1], [2, 3, 4]]);
  });

  it('keeps batches to maxBatch, counting weights, but always takes one item', async () => {
    const r = recorder();
    const b = new Batcher(r.run, { maxBatch: 10, weight: (i) => i, maxInFlight: 1 });
    await Promise.all([4, 5, 20, 3].map((i) => b.call(i)));
    expect(r.batches).toEqual([[4, 5], [20], [3]]);
  });

  it('lets no lighter item overtake one that did not fit (a count create waited behind batch after batch of single ones)', async () => {
    const r = recorder();
    const b = new Batcher(r.run, { maxBatch: 10, weight: (i) => i, maxInFlight: 1 });
    await Promise.all([8, 5, 1, 1, 9].map((i) => b.call(i)));
    expect(r.batches).toEqual([[8], [5, 1, 1], [9]]);
  });

  it('never puts two items of one key in a batch, and keeps their order', async () => {
    const r = recorder();
    const b = new Batcher(r.run, { key: (i) => String(i % 10), maxInFlight: 1 });
    await Promise.all([1, 11, 2, 21, 3].map((i) => b.call(i)));
    expect(r.batches).toEqual([[1, 2, 3], [11], [21]]);
  });

  it('runs the items of a failed batch one by one, so only the bad one fails its caller', async () => {
    const r = recorder((items) => items.includes(2));
    const b = new Batcher(r.run);
    const results = await Promise.allSettled([1, 2, 3].map((i) => b.call(i)));
    expect(results.map((x) => x.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect((results[1] as PromiseRejectedResult).reason.message).toBe('batch 2 failed');
    expect(r.batches).toEqual([[1, 2, 3], [1], [2], [3]]);
  });

  it('stays usable after a failure', async () => {
    const r = recorder((items) => items.includes(-1));
    const b = new Batcher(r.run);
    await expect(b.call(-1)).rejects.toThrow('batch -1 failed');
    await expect(b.call(5)).resolves.toBe(10);
  });
});
