import type { NodeCandidate } from './types';

/**
 * How many ready nodes could take a guest started on each node, by CPU flags: a guest that sees
 * host A's flags can later move to any host whose flags include all of A's. Built once per
 * cluster snapshot (O(nodes + baselines²); nodes of one CPU model share a baseline), then
 * answered in O(1) per node, so scoring 1,000 nodes never compares node pairs.
 */
export class CpuBaselines {
  /** Flag list (by identity) → its group, for the nodes this was built from. */
  private readonly byArray = new Map<readonly string[], FlagGroup>();
  /** Groups by a cheap signature (length, first and last flag); exact equality decides within one. */
  private readonly buckets = new Map<string, FlagGroup[]>();
  private readonly readyTotal: number;
  /** Number of distinct baselines; with one, migratability cannot tell nodes apart. */
  readonly distinct: number;

  /** Precondition: `nodes` is the whole cluster (every state), not only the feasible nodes. */
  constructor(nodes: readonly NodeCandidate[]) {
    // Joining or sorting every node's ~100 flags costs milliseconds per 1,000 nodes; nodes of
    // one CPU model report the same list, so compare lists against one representative instead.
    const groups: FlagGroup[] = [];
    let readyTotal = 0;
    for (const n of nodes) {
      let g = this.byArray.get(n.cpuFlags);
      if (!g) {
        const sig = signature(n.cpuFlags);
        let bucket = this.buckets.get(sig);
        if (!bucket) this.buckets.set(sig, (bucket = []));
        g = findGroup(bucket, n.cpuFlags);
        if (!g) {
          bucket.push((g = { flags: n.cpuFlags, ready: 0, supersetsReady: 0 }));
          groups.push(g);
        }
      }
      this.byArray.set(n.cpuFlags, g);
      if (n.state === 'ready') {
        g.ready++;
        readyTotal++;
      }
    }
    this.readyTotal = readyTotal;

    // The same flags in another order or with repeats are the same baseline: compare as sets.
    const index = new Map<string, number>();
    for (const g of groups) for (const f of g.flags) if (!index.has(f)) index.set(f, index.size);
    const words = Math.ceil(index.size / 32) || 1;
    const bits = groups.map((g) => {
      const b = new Uint32Array(words);
      for (const f of g.flags) {
        const i = index.get(f)!;
        b[i >>> 5] |= 1 << (i & 31);
      }
      return b;
    });
    const distinct = new Set<string>();
    for (let a = 0; a < groups.length; a++) {
      for (let c = 0; c < groups.length; c++) if (groups[c].ready > 0 && isSubset(bits[a], bits[c])) groups[a].supersetsReady += groups[c].ready;
      distinct.add(bits[a].join(','));
    }
    this.distinct = distinct.size;
  }

  /**
   * Fraction in [0, 1] of the other ready nodes whose CPU flags include all of `node`'s; 0 when
   * there is no other ready node. Precondition: `node`'s flags were in the snapshot this was built from.
   */
  migratability(node: NodeCandidate): number {
    const supersets = this.group(node.cpuFlags)?.supersetsReady ?? 0;
    const self = node.state === 'ready' ? 1 : 0;
    const others = this.readyTotal - self;
    return others > 0 ? Math.max(0, supersets - self) / others : 0;
  }

  /** True when the node reports the host CPU flag; O(1) for nodes of the snapshot (one set per baseline). */
  hasFlag(node: NodeCandidate, flag: string): boolean {
    const g = this.byArray.get(node.cpuFlags);
    if (!g) return node.cpuFlags.includes(flag);
    return (g.set ??= new Set(g.flags)).has(flag);
  }

  private group(flags: readonly string[]): FlagGroup | undefined {
    return this.byArray.get(flags) ?? findGroup(this.buckets.get(signature(flags)) ?? [], flags);
  }
}

interface FlagGroup {
  flags: readonly string[];
  /** Ready nodes with exactly these flags. */
  ready: number;
  /** Ready nodes whose flags include all of these (this group's own included). */
  supersetsReady: number;
  /** The flags as a set, built on first use. */
  set?: Set<string>;
}

function signature(flags: readonly string[]): string {
  return flags.length === 0 ? '' : `${flags.length}\0${flags[0]}\0${flags[flags.length - 1]}`;
}

function findGroup(bucket: readonly FlagGroup[], flags: readonly string[]): FlagGroup | undefined {
  for (const g of bucket) if (sameList(g.flags, flags)) return g;
  return undefined;
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function isSubset(a: Uint32Array, b: Uint32Array): boolean {
  for (let i = 0; i < a.length; i++) if ((a[i] & ~b[i]) !== 0) return false;
  return true;
}
