import { findPinned, mulberry32, seedFrom, shuffle, sortById } from './source';
import { node, nodes } from './testing/fixtures';

describe('candidate source', () => {
  it.each([
    ['', 0x811c9dc5],
    ['a', 0xe40c292c],
    ['foobar', 0xbf9cf968],
  ])('seeds %j with its FNV-1a hash', (id, seed) => {
    expect(seedFrom(id)).toBe(seed);
  });

  it('draws the same floats in [0, 1) from the same seed', () => {
    const a = mulberry32(42);
    const b = mulberry32(42);
    const xs = Array.from({ length: 1000 }, () => a());
    expect(Array.from({ length: 1000 }, () => b())).toEqual(xs);
    expect(xs.every((x) => x >= 0 && x < 1)).toBe(true);
    expect(mulberry32(43)()).not.toBe(xs[0]);
  });

  it('orders nodes by id whatever order they were loaded in', () => {
    const all = nodes(20);
    const reversed = all.slice().reverse();
    expect(sortById(reversed).map((n) => n.id)).toEqual(all.map((n) => n.id));
    expect(reversed[0].id).toBe('n0020');
  });

  it('shuffles into a permutation, the same one for the same seed, without touching its input', () => {
    const sorted = nodes(50);
    const before = sorted.map((n) => n.id);
    const a = shuffle(sorted, 7).map((n) => n.id);
    expect(shuffle(sorted, 7).map((n) => n.id)).toEqual(a);
    expect([...a].sort()).toEqual(before);
    expect(a).not.toEqual(before);
    expect(shuffle(sorted, 8).map((n) => n.id)).not.toEqual(a);
    expect(sorted.map((n) => n.id)).toEqual(before);
  });

  it('puts every node first about equally often over many request ids', () => {
    const sorted = nodes(10);
    const firsts = new Map<string, number>();
    for (let i = 0; i < 10_000; i++) {
      const id = shuffle(sorted, seedFrom(`req-${i}`))[0].id;
      firsts.set(id, (firsts.get(id) ?? 0) + 1);
    }
    expect(firsts.size).toBe(10);
    for (const count of firsts.values()) expect(count).toBeGreaterThan(850), expect(count).toBeLessThan(1150);
  });

  it('finds a pinned node by id, then by name', () => {
    const all = [node({ id: 'a', name: 'web' }), node({ id: 'b', name: 'a' }), node({ id: 'c', name: 'db' })];
    expect(findPinned(all, 'c')?.id).toBe('c');
    expect(findPinned(all, 'web')?.id).toBe('a');
    expect(findPinned(all, 'a')?.id).toBe('a');
    expect(findPinned(all, 'nope')).toBeUndefined();
    expect(findPinned([node({ id: 'z', name: 'dup' }), node({ id: 'y', name: 'dup' })], 'dup')?.id).toBe('y');
  });
});
