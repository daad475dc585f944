/**
 * The placement pipeline, wired in this one file (after Nomad's scheduler/feasible/stack.go):
 *
 *   quota → source (a pinned node, or every node shuffled by the request id) → filters → scorers → pick
 *                                                  (until `maxCandidates` feasible nodes are scored)
 *
 * Why the order matters:
 * - Quota first, once per request: no node can cure it, so no node is looked at.
 * - A pin narrows the source instead of being a filter, so a refused pinned placement names that
 *   node's reason ("no node fits: 1 node: cordoned"), not "9 nodes: not the requested node".
 * - Filters stop at a node's first failure and only that failure is counted (as Nomad does), so
 *   their order decides what the user is told and how much work a node costs. Node state comes
 *   first: the cheapest test and the truest answer ("cordoned" says more than "not enough
 *   memory" about a cordoned node). Before it, only the node a migrating partition leaves. Then what a node is and will stay (accelerator, machine
 *   type, CPU, image hardware, labels, image store), scalar checks before list scans; then
 *   placement groups; capacity last, because it changes from minute to minute and so is worth
 *   reporting only for nodes that would otherwise fit.
 * - Scorers run only on feasible nodes, each once per node, and never look at other nodes:
 *   cluster-wide facts (group sizes, CPU baselines) are computed once per placement beforehand.
 * - Ties go to the earlier node in the shuffled order, so equal nodes are chosen at random, yet
 *   replayably from the request id.
 * - The search is bounded (Nomad's LimitIterator): once `maxCandidates` nodes passed the filters,
 *   the rest of the shuffled order is not looked at. Only feasible nodes count toward the bound,
 *   so a search that finds fewer has visited every node and a refusal is exact. Requests with soft
 *   group rules score every node (as Nomad does for affinities): their few group nodes would
 *   rarely be among a random handful.
 */
import type { ReasonCount } from '@hyperplane/domain';
import { CpuBaselines } from './cpu-baselines';
import * as f from './filters';
import type { Filter } from './filters';
import { groupKey, placementContext } from './placement-context';
import { checkQuota } from './quota';
import * as s from './scorers';
import type { Scorer } from './scorers';
import { findPinned, mulberry32, seedFrom } from './source';
import type { NodeCandidate, PlacementRequest, ProjectQuota, ProjectUsage, SchedulerConfig, ScorerWeights, Strategy } from './types';

/** Feasibility filters in the order they run (see the comment at the top of this file). */
export const FILTERS: readonly Filter[] = [
  f.notAvoided,
  f.nodeState,
  f.accelerator,
  f.machineType,
  f.cpuFeatures,
  f.imageHardware,
  f.nodeSelector,
  f.image,
  f.groupAntiAffinity,
  f.groupAffinity,
  f.vcpus,
  f.memory,
  f.disk,
];

/** Scorers; a node's score is their weighted mean over those that apply to the request. */
export const SCORERS: readonly Scorer[] = [s.binpack, s.spread, s.softAffinity, s.softAntiAffinity, s.migratability];

/** Default scorer weights. Only one of binpack and spread applies to a request. */
export const DEFAULT_WEIGHTS: Readonly<ScorerWeights> = {
  binpack: 1,
  spread: 1,
  softAffinity: 1,
  softAntiAffinity: 1,
  migratability: 0.5,
};

/**
 * Smallest default bound of a placement's search: below it a search is exhaustive. Scoring a
 * node costs well under a microsecond, so 32 feasible nodes cost nothing next to the request
 * around them, and clusters of up to 32 nodes get the best node, not a good one.
 */
export const MIN_DEFAULT_CANDIDATES = 32;

/**
 * The bound of a placement's search when the configuration sets none. Spread: `max(32, ⌈log₂ n⌉)`
 * for `n` nodes (Nomad scores `max(2, ⌈log₂ n⌉)`; the higher floor keeps small clusters exact).
 * The emptiest of 32 random feasible nodes spreads about as evenly as the emptiest of all: 10,000
 * placements on 1,000 equal nodes leave 9–11 partitions on every node instead of 10. Binpack:
 * every node, because a random handful rarely holds the few part-full nodes binpack exists to
 * fill (the same run with a bound of 32 used 169 nodes instead of 40); an operator who wants the
 * speed there sets the bound.
 */
export function defaultMaxCandidates(nodeCount: number, strategy: Strategy): number {
  if (strategy === 'binpack') return Infinity;
  return Math.max(MIN_DEFAULT_CANDIDATES, Math.ceil(Math.log2(Math.max(1, nodeCount))));
}

/** Cluster default: spread, so one node's failure takes as few partitions as possible. */
export const DEFAULT_SCHEDULER_CONFIG: Readonly<SchedulerConfig> = { defaultStrategy: 'spread' };

/** Inputs of a placement besides the nodes and the request; quota and usage are the request's project's. */
export interface PlaceOptions {
  config?: SchedulerConfig;
  quota?: ProjectQuota;
  usage?: ProjectUsage;
  /**
   * CPU baselines of these very nodes, when the caller keeps them across placements (a cluster
   * snapshot). Precondition: built from `nodes` with the same flags and states; allocations may
   * differ. Absent, they are computed per call.
   */
  baselines?: CpuBaselines;
}

/** How a placement was decided, for logs and the operation record; enough to replay it. */
export interface PlacementExplain {
  /** Seed of the candidate order, from the request id. */
  seed: number;
  strategy: Strategy;
  /** Nodes the filters looked at: all of them, 1 when pinned, fewer when the search was bounded. */
  candidates: number;
  /** Feasible nodes among the candidates (all of them were scored). */
  feasible: number;
  /** The search's bound ({@link SchedulerConfig.maxCandidates}); `Infinity` when it had none. */
  maxCandidates: number;
  /** Candidates turned down, by first failing filter. */
  rejected: ReasonCount[];
  /** The chosen node's score from each scorer that applied. */
  scores: Partial<ScorerWeights>;
}

/** A successful placement: `node` as it was when chosen, `score` its weighted mean in [0, 1]. */
export interface Placed {
  ok: true;
  node: NodeCandidate;
  score: number;
  explain: PlacementExplain;
}

/**
 * A refused placement, as data (a 422 with `reasons`). `kind` tells a quota from "no node fits";
 * `message` is the user-facing detail.
 */
export interface Rejected {
  ok: false;
  kind: 'quota' | 'no-fit';
  reasons: ReasonCount[];
  message: string;
}

/** Outcome of one placement. */
export type PlacementResult = Placed | Rejected;

/**
 * Chooses a node for `req`. Pure and deterministic: the same nodes (in any order) and the same
 * request id give the same answer. `nodes` is the whole cluster: group and CPU-baseline facts
 * are computed over all of it, even when `req.node` pins the placement to one node.
 */
export function place(nodes: readonly NodeCandidate[], req: PlacementRequest, opts: PlaceOptions = {}): PlacementResult {
  return placeIn(prepare(nodes, opts.baselines), req, opts.config, opts.quota, opts.usage);
}

/**
 * Places `reqs` one after another (a `count` create), each seeing the allocations, group members
 * and quota usage of the ones before it, so a batch never overcommits a node nor breaks a hard
 * anti-affinity. Returns one result per request, in order; a refused request reserves nothing.
 * The input nodes are not modified. Precondition: every request is of the project that `opts`'
 * quota and usage describe.
 */
export function placeMany(nodes: readonly NodeCandidate[], reqs: readonly PlacementRequest[], opts: PlaceOptions = {}): PlacementResult[] {
  const cluster = prepare(nodes, opts.baselines);
  let usage = opts.usage;
  return reqs.map((req) => {
    const r = placeIn(cluster, req, opts.config, opts.quota, usage);
    if (r.ok) {
      cluster.nodes[cluster.chosen] = withPlacement(r.node, req);
      usage = usageAfter(usage, req);
    }
    return r;
  });
}

/**
 * A cluster prepared once for many creates that build on each other (a batch of them): each
 * {@link PlacementSession.placeAll} sees what the ones before it took, as {@link placeMany} over
 * the updated nodes would, without preparing the cluster again for every create. The input
 * nodes are not modified.
 */
export class PlacementSession {
  private readonly cluster: Cluster;

  constructor(
    nodes: readonly NodeCandidate[],
    private readonly opts: { config?: SchedulerConfig; baselines?: CpuBaselines } = {},
  ) {
    this.cluster = prepare(nodes, opts.baselines);
  }

  /** The nodes as the placements so far left them, in the caller's order. */
  get nodes(): readonly NodeCandidate[] {
    return this.cluster.nodes;
  }

  /**
   * Places `reqs` one after another, all or nothing, against `quota` from `usage` (the requests'
   * project's): the placed nodes in order, or the first refusal, in which case the session is
   * left as it was.
   */
  placeAll(reqs: readonly PlacementRequest[], quota?: ProjectQuota, usage?: ProjectUsage): { ok: true; placed: Placed[] } | Rejected {
    const c = this.cluster;
    const placed: Placed[] = [];
    const undo: Array<[number, NodeCandidate]> = [];
    for (const req of reqs) {
      const r = placeIn(c, req, this.opts.config, quota, usage);
      if (!r.ok) {
        for (let k = undo.length - 1; k >= 0; k--) c.nodes[undo[k]![0]] = undo[k]![1];
        return r;
      }
      undo.push([c.chosen, c.nodes[c.chosen]!]);
      c.nodes[c.chosen] = withPlacement(r.node, req);
      usage = quota ? usageAfter(usage, req) : usage;
      placed.push(r);
    }
    return { ok: true, placed };
  }
}

function usageAfter(usage: ProjectUsage | undefined, req: PlacementRequest): ProjectUsage {
  const u = usage ?? { partitions: 0, vcpus: 0, memoryMiB: 0 };
  return { partitions: u.partitions + 1, vcpus: u.vcpus + req.vcpus, memoryMiB: u.memoryMiB + req.memoryMiB };
}

/** A copy of `node` with `req`'s resources reserved and its group count raised; `node` is not modified. */
export function withPlacement(node: NodeCandidate, req: PlacementRequest): NodeCandidate {
  let groups = node.groups;
  if (req.group) {
    const key = groupKey(req.projectId, req.group.name);
    groups = { ...groups, [key]: (groups[key] ?? 0) + 1 };
  }
  return {
    ...node,
    allocated: {
      vcpus: node.allocated.vcpus + req.vcpus,
      memoryMiB: node.allocated.memoryMiB + req.memoryMiB,
      diskBytes: node.allocated.diskBytes + req.diskBytes,
    },
    groups,
  };
}

/** "3 nodes: not enough memory; 1 node: cordoned", for reasons already in display order. */
export function describeReasons(reasons: readonly ReasonCount[]): string {
  return reasons.map((r) => `${r.count} node${r.count === 1 ? '' : 's'}: ${r.message}`).join('; ');
}

interface Cluster {
  /** In the caller's order (placeMany replaces entries with updated copies as it goes). */
  nodes: NodeCandidate[];
  /** Indices into `nodes`, ordered by node id: the input of the shuffle. */
  byId: Int32Array;
  baselines: CpuBaselines;
  /** Index in `nodes` of the node the last successful {@link placeIn} chose. */
  chosen: number;
  /** Scratch space of one placement: the shuffled order, and each node's rank in it. */
  order: Int32Array;
  rank: Int32Array;
}

function prepare(nodes: readonly NodeCandidate[], baselines?: CpuBaselines): Cluster {
  const n = nodes.length;
  const byId = new Int32Array(n);
  for (let i = 0; i < n; i++) byId[i] = i;
  // Snapshots are usually loaded in id order already: one pass to see it beats sorting.
  let sorted = true;
  for (let i = 1; i < n && sorted; i++) sorted = nodes[i - 1].id < nodes[i].id;
  if (!sorted) byId.sort((a, b) => cmp(nodes[a].id, nodes[b].id));
  return { nodes: nodes.slice(), byId, baselines: baselines ?? new CpuBaselines(nodes), chosen: -1, order: new Int32Array(n), rank: new Int32Array(n) };
}

/**
 * Fills `c.rank` with each node's position in the shuffle of `c.byId` seeded by `seed`: the very
 * order {@link shuffle} gives (same generator, same swaps), without allocating.
 */
function rankShuffled(c: Cluster, seed: number): void {
  const order = c.order;
  order.set(c.byId);
  const rand = mulberry32(seed);
  const n = order.length;
  for (let i = 0; i < n - 1; i++) {
    const j = i + Math.floor(rand() * (n - i));
    const t = order[i]!;
    order[i] = order[j]!;
    order[j] = t;
  }
  for (let r = 0; r < n; r++) c.rank[order[r]!] = r;
}

function noFit(reason: string, detail: string): Rejected {
  return { ok: false, kind: 'no-fit', reasons: [{ reason, count: 0, message: detail }], message: `no node fits: ${detail}` };
}

function placeIn(cluster: Cluster, req: PlacementRequest, config: SchedulerConfig = DEFAULT_SCHEDULER_CONFIG, quota?: ProjectQuota, usage?: ProjectUsage): PlacementResult {
  const overQuota = checkQuota(req, quota, usage);
  if (overQuota.length > 0) {
    return {
      ok: false,
      kind: 'quota',
      reasons: overQuota.map((q) => ({ ...q, count: 1 })),
      message: overQuota.map((q) => q.message).join('; '),
    };
  }
  const nodes = cluster.nodes;
  if (nodes.length === 0) return noFit('no-nodes', 'no nodes are registered');

  const strategy = req.strategy ?? config.defaultStrategy;
  const seed = seedFrom(req.requestId);
  const ctx = placementContext(nodes, req, strategy, cluster.baselines);
  const weight = (sc: Scorer): number => config.weights?.[sc.name] ?? DEFAULT_WEIGHTS[sc.name];
  const scorers = SCORERS.filter((sc) => weight(sc) > 0 && sc.applies(req, ctx));
  const scorerWeights = scorers.map(weight);
  const weightSum = scorerWeights.reduce((a, b) => a + b, 0);
  const softGroup = scorers.some((sc) => sc === s.softAffinity || sc === s.softAntiAffinity);
  // A bound below 1 would look at no node and refuse with no reasons: it counts as 1.
  const limit = softGroup ? Infinity : Math.max(1, config.maxCandidates ?? defaultMaxCandidates(nodes.length, strategy));

  // Filters that cannot refuse any node for this request are not asked at all.
  const filters = FILTERS.filter((f) => !f.applies || f.applies(req, ctx));
  const tally = new Map<string, ReasonCount>();
  const parts = new Float64Array(scorers.length);
  let bestParts = new Float64Array(scorers.length);
  let best = -1;
  let bestScore = -1;
  let feasible = 0;
  let visited = 0;

  /** Filters and scores node `i`; `rank` is its position in the shuffled order (ties go to the lower). */
  const consider = (i: number, rank: number, bestRank: number): boolean => {
    visited++;
    const node = nodes[i];
    for (const filter of filters) {
      const no = filter.check(node, req, ctx);
      if (no !== null) {
        const key = `${no.reason}\n${no.message}`;
        const seen = tally.get(key);
        if (seen) seen.count++;
        else tally.set(key, { reason: no.reason, count: 1, message: no.message });
        return false;
      }
    }
    feasible++;
    let total = 0;
    for (let k = 0; k < scorers.length; k++) {
      parts[k] = scorers[k].score(node, req, ctx);
      total += scorerWeights[k] * parts[k];
    }
    const score = weightSum > 0 ? total / weightSum : 0;
    if (score > bestScore || (score === bestScore && rank < bestRank)) {
      best = i;
      bestScore = score;
      bestParts = parts.slice();
      return true;
    }
    return false;
  };

  if (req.node !== undefined) {
    // Pinned: the one node is the only candidate.
    const pinned = findPinned(nodes, req.node);
    if (!pinned) return noFit('pinned', `node '${req.node}' does not exist`);
    consider(nodes.indexOf(pinned), 0, 0);
  } else if (limit >= nodes.length) {
    // Exhaustive: the shuffle gives each node a rank; nodes are visited in the caller's order
    // (kinder to the memory cache at 10,000 nodes than a random walk) and ties go to the lowest
    // rank, which is the same pick as walking the shuffled order.
    rankShuffled(cluster, seed);
    const rank = cluster.rank;
    let bestRank = nodes.length;
    for (let i = 0; i < nodes.length; i++) if (consider(i, rank[i]!, bestRank)) bestRank = rank[i]!;
  } else {
    // Bounded: walk the shuffled order, drawing it as it goes (the shuffle's front is settled
    // first), until `limit` nodes were feasible or every node was seen.
    const order = cluster.order;
    order.set(cluster.byId);
    const rand = mulberry32(seed);
    const n = nodes.length;
    let bestRank = n;
    for (let r = 0; r < n && feasible < limit; r++) {
      const j = r + Math.floor(rand() * (n - r));
      const t = order[r]!;
      order[r] = order[j]!;
      order[j] = t;
      if (consider(order[r]!, r, bestRank)) bestRank = r;
    }
  }

  const rejected = [...tally.values()].sort(
    (a, b) => b.count - a.count || cmp(a.reason, b.reason) || cmp(a.message, b.message),
  );
  if (best < 0) {
    return { ok: false, kind: 'no-fit', reasons: rejected, message: `no node fits: ${describeReasons(rejected)}` };
  }
  cluster.chosen = best;
  const scores: Partial<ScorerWeights> = {};
  scorers.forEach((sc, i) => (scores[sc.name] = bestParts[i]));
  return {
    ok: true,
    node: nodes[best],
    score: bestScore,
    explain: { seed, strategy, candidates: visited, feasible, maxCandidates: limit, rejected, scores },
  };
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
