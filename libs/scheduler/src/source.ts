import type { NodeCandidate } from './types';

/** 32-bit FNV-1a hash of a string's UTF-16 code units: the seed a request id gives its placement. */
export function seedFrom(requestId: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < requestId.length; i++) {
    h ^= requestId.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** mulberry32: a small, fast PRNG; returns a generator of floats in [0, 1) fully determined by `seed`. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A copy of `nodes` ordered by id, so the order the caller loaded them in never matters. */
export function sortById(nodes: readonly NodeCandidate[]): NodeCandidate[] {
  return nodes.slice().sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/**
 * The candidate order for one placement: a Fisher–Yates shuffle of `sorted` seeded by `seed`,
 * drawn from the front (position i is settled by the i-th draw, so a search that stops after k
 * nodes draws k numbers and sees the order's first k). Precondition: `sorted` is ordered by id
 * ({@link sortById}); then the same seed and the same nodes always give the same order, which is
 * what lets a placement be replayed.
 */
export function shuffle<T>(sorted: readonly T[], seed: number): T[] {
  const out = sorted.slice();
  const rand = mulberry32(seed);
  for (let i = 0; i < out.length - 1; i++) {
    const j = i + Math.floor(rand() * (out.length - i));
    const t = out[i];
    out[i] = out[j];
    out[j] = t;
  }
  return out;
}

/** The node a pin names: by id, else by name (the lowest id if names repeat); undefined when none matches. */
export function findPinned(nodes: readonly NodeCandidate[], ref: string): NodeCandidate | undefined {
  let byName: NodeCandidate | undefined;
  for (const n of nodes) {
    if (n.id === ref) return n;
    if (n.name === ref && (!byName || n.id < byName.id)) byName = n;
  }
  return byName;
}
