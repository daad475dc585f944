/**
 * The placement pipeline, wired in this one file (after Nomad's scheduler/feasible/stack.go):
 *
 *   quota → source (a pinned node, or every node shuffled by the request id) → filters → scorers → pick
 *
 * Why the order matters:
 * - Quota first, once per request: no node can cure it, so no node is looked at.
 * - A pin narrows the source instead of being a filter, so a refused pinned placement names that
 *   node's reason ("no node fits: 1 node: cordoned"), not "9 nodes: not the requested node".
 * - Filters stop at a node's first failure and only that failure is counted (as Nomad does), so
 *   their order decides what the user is told and how much work a node costs. Node state comes
 *   first: the cheapest test and the truest answer ("cordoned" says more than "not enough
 *   memory" about a cordoned node). Then what a node is and will stay (accelerator, machine
 *   type, CPU, image hardware, labels, image store), scalar checks before list scans; then
 *   placement groups; capacity last, because it changes from minute to minute and so is worth
 *   reporting only for nodes that would otherwise fit.
 * - Scorers run only on feasible nodes, each once per node, and never look at other nodes:
 *   cluster-wide facts (group sizes, CPU baselines) are computed once per placement beforehand.
 * - Ties go to the earlier node in the shuffled order, so equal nodes are chosen at random, yet
 *   replayably from the request id.
 */
import type { ReasonCount } from '@hyperplane/domain';
import { CpuBaselines } from './cpu-baselines';
import * as f from './filters';
import type { Filter } from './filters';
import { groupKey, placementContext } from './placement-context';
import { checkQuota } from './quota';
import * as s from './scorers';
import type { Scorer } from './scorers';
import { findPinned, seedFrom, shuffle } from './source';
import type { NodeCandidate, PlacementRequest, ProjectQuota, ProjectUsage, SchedulerConfig, ScorerWeights, Strategy } from './types';

/** Feasibility filters in the order they run (see the comment at the top of this file). */
export const FILTERS: readonly Filter[] = [
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
  /** Nodes the filters looked at: all of them, or 1 when pinned. */
  candidates: number;
  feasible: number;
  /** Nodes turned down, by first failing filter. */
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
  return placeIn(prepare(nodes, opts.baselines), req, opts);
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
    const r = placeIn(cluster, req, { ...opts, usage });
    if (r.ok) {
      cluster.nodes[cluster.chosen] = withPlacement(r.node, req);
      const u = usage ?? { partitions: 0, vcpus: 0, memoryMiB: 0 };
      usage = { partitions: u.partitions + 1, vcpus: u.vcpus + req.vcpus, memoryMiB: u.memoryMiB + req.memoryMiB };
    }
    return r;
  });
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
  /** 0, 1, … n − 1: every node, in the caller's order. */
  all: number[];
  /** Indices into `nodes`, ordered by node id: the input of the shuffle. */
  byId: number[];
  baselines: CpuBaselines;
  /** Index in `nodes` of the node the last successful {@link placeIn} chose. */
  chosen: number;
}

function prepare(nodes: readonly NodeCandidate[], baselines?: CpuBaselines): Cluster {
  const all = nodes.map((_, i) => i);
  // Snapshots are usually loaded in id order already: one pass to see it beats sorting.
  let sorted = true;
  for (let i = 1; i < nodes.length && sorted; i++) sorted = nodes[i - 1].id < nodes[i].id;
  const byId = sorted ? all.slice() : all.slice().sort((a, b) => cmp(nodes[a].id, nodes[b].id));
  return { nodes: nodes.slice(), all, byId, baselines: baselines ?? new CpuBaselines(nodes), chosen: -1 };
}

function noFit(reason: string, detail: string): Rejected {
  return { ok: false, kind: 'no-fit', reasons: [{ reason, count: 0, message: detail }], message: `no node fits: ${detail}` };
}

function placeIn(cluster: Cluster, req: PlacementRequest, opts: PlaceOptions): PlacementResult {
  const overQuota = checkQuota(req, opts.quota, opts.usage);
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

  const config = opts.config ?? DEFAULT_SCHEDULER_CONFIG;
  const strategy = req.strategy ?? config.defaultStrategy;
  const seed = seedFrom(req.requestId);
  // The shuffle gives each node a rank; nodes are visited in the caller's order (kinder to the
  // memory cache at 10,000 nodes than a random walk) and ties go to the lowest rank, which is
  // the same pick as walking the shuffled order.
  let candidates: number[];
  const rank = new Int32Array(nodes.length);
  if (req.node !== undefined) {
    const pinned = findPinned(nodes, req.node);
    if (!pinned) return noFit('pinned', `node '${req.node}' does not exist`);
    candidates = [nodes.indexOf(pinned)];
  } else {
    const order = shuffle(cluster.byId, seed);
    for (let r = 0; r < order.length; r++) rank[order[r]] = r;
    candidates = cluster.all;
  }

  const ctx = placementContext(nodes, req, strategy, cluster.baselines);
  const weight = (sc: Scorer): number => config.weights?.[sc.name] ?? DEFAULT_WEIGHTS[sc.name];
  const scorers = SCORERS.filter((sc) => weight(sc) > 0 && sc.applies(req, ctx));
  const scorerWeights = scorers.map(weight);
  const weightSum = scorerWeights.reduce((a, b) => a + b, 0);

  // Filters that cannot refuse any node for this request are not asked at all.
  const filters = FILTERS.filter((f) => !f.applies || f.applies(req, ctx));
  const tally = new Map<string, ReasonCount>();
  const parts = new Float64Array(scorers.length);
  let bestParts = new Float64Array(scorers.length);
  let best = -1;
  let bestScore = -1;
  let feasible = 0;

  visit: for (const i of candidates) {
    const node = nodes[i];
    for (const filter of filters) {
      const no = filter.check(node, req, ctx);
      if (no !== null) {
        const key = `${no.reason}\n${no.message}`;
        const seen = tally.get(key);
        if (seen) seen.count++;
        else tally.set(key, { reason: no.reason, count: 1, message: no.message });
        continue visit;
      }
    }
    feasible++;
    let total = 0;
    for (let k = 0; k < scorers.length; k++) {
      parts[k] = scorers[k].score(node, req, ctx);
      total += scorerWeights[k] * parts[k];
    }
    const score = weightSum > 0 ? total / weightSum : 0;
    if (score > bestScore || (score === bestScore && rank[i] < rank[best])) {
      best = i;
      bestScore = score;
      bestParts = parts.slice();
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
    explain: { seed, strategy, candidates: candidates.length, feasible, rejected, scores },
  };
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
