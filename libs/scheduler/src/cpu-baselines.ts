import type { NodeCandidate } from './types';

/**
 * How many ready nodes could take a guest started on each node, by CPU flags: a guest that sees
 * host A's flags can later move to any host whose flags include all of A's. Built once per
 * cluster snapshot (O(nodes × flags + baselines²); nodes of one CPU model share a baseline),
 * then answered per node without looking at other nodes, so no node pair is ever compared.
 */
export class CpuBaselines {
  /** Groups by the caller's {@link NodeCandidate.cpuBaseline}, trusted without comparing flags. */
  private readonly byBaseline = new Map<string, FlagGroup>();
  /** Groups by a cheap signature (length, first and last flag); exact equality decides within one. */
  private readonly buckets = new Map<string, FlagGroup[]>();
  /** Each snapshot node's flag list (by identity) → its group, when grouping took a comparison. */
  private readonly byArray = new Map<readonly string[], FlagGroup>();
  private readonly readyTotal: number;
  /** One-entry memo: a placement asks about the same node from a filter and then from scorers. */
  private lastFlags: readonly string[] | undefined;
  private lastGroup: FlagGroup | undefined;
  /** Number of distinct baselines; with one, migratability cannot tell nodes apart. */
  readonly distinct: number;

  /** Precondition: `nodes` is the whole cluster (every state), not only the feasible nodes. */
  constructor(nodes: readonly NodeCandidate[]) {
    // Joining or sorting every node's ~100 flags would cost milliseconds per 1,000 nodes. Nodes
    // of one CPU model report the same list, so each list is compared with one representative;
    // cheaper still, nodes that carry the key stored at registration are grouped by it.
    const groups: FlagGroup[] = [];
    let readyTotal = 0;
    for (const n of nodes) {
      let g = this.group(n);
      if (!g) {
        g = { flags: n.cpuFlags, ready: 0, supersetsReady: 0 };
        if (n.cpuBaseline !== undefined) this.byBaseline.set(n.cpuBaseline, g);
        else {
          const sig = signature(n.cpuFlags);
          const bucket = this.buckets.get(sig);
          if (bucket) bucket.push(g);
          else this.buckets.set(sig, [g]);
        }
        groups.push(g);
        this.lastFlags = n.cpuFlags;
        this.lastGroup = g;
      }
      if (n.cpuBaseline === undefined) this.byArray.set(n.cpuFlags, g);
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
    const supersets = this.group(node)?.supersetsReady ?? 0;
    const self = node.state === 'ready' ? 1 : 0;
    const others = this.readyTotal - self;
    return others > 0 ? Math.max(0, supersets - self) / others : 0;
  }

  /** True when the node reports the host CPU flag; one set per baseline, so O(1) after the lookup. */
  hasFlag(node: NodeCandidate, flag: string): boolean {
    const g = this.group(node);
    if (!g) return node.cpuFlags.includes(flag);
    return (g.set ??= new Set(g.flags)).has(flag);
  }

  private group(node: NodeCandidate): FlagGroup | undefined {
    const flags = node.cpuFlags;
    if (flags === this.lastFlags) return this.lastGroup;
    const g =
      node.cpuBaseline !== undefined
        ? this.byBaseline.get(node.cpuBaseline)
        : (this.byArray.get(flags) ?? findGroup(this.buckets.get(signature(flags)), flags));
    this.lastFlags = flags;
    this.lastGroup = g;
    return g;
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

function findGroup(bucket: readonly FlagGroup[] | undefined, flags: readonly string[]): FlagGroup | undefined {
  if (bucket) for (const g of bucket) if (sameList(g.flags, flags)) return g;
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

/**
 * A short key for a set of CPU flags (order and repeats ignored): two 32-bit FNV-1a hashes of the
 * sorted flags, as 16 hex digits. Compute it when a node reports its inventory and pass it as
 * {@link NodeCandidate.cpuBaseline}, so placements need not compare flag lists.
 */
export function cpuBaselineKey(flags: readonly string[]): string {
  const text = [...new Set(flags)].sort().join(' ');
  let a = 0x811c9dc5;
  let b = 0x050c5d1f;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x01000193) ^ (b >>> 15);
  }
  return (a >>> 0).toString(16).padStart(8, '0') + (b >>> 0).toString(16).padStart(8, '0');
}
