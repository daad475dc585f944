import type { PlacementContext } from './placement-context';
import type { NodeCandidate, PlacementRequest, ScorerWeights } from './types';

/**
 * A ranking of feasible nodes. `applies` is asked once per placement (a scorer that does not
 * apply is left out of the weighted mean); `score` is asked once per feasible node and returns a
 * number in [0, 1], higher is better. Precondition: the node passed every filter.
 */
export interface Scorer {
  readonly name: keyof ScorerWeights;
  applies(req: PlacementRequest, ctx: PlacementContext): boolean;
  score(node: NodeCandidate, req: PlacementRequest, ctx: PlacementContext): number;
}

/**
 * Mean of the node's vcpu and memory utilisation once `req` is placed there, in [0, 1], against
 * usable capacity (`capacity × ratio`). A node with no usable capacity counts as full.
 */
export function utilisationAfter(node: NodeCandidate, req: PlacementRequest): number {
  const cpuCap = node.capacity.vcpus * node.cpuAllocationRatio;
  const memCap = node.capacity.memoryMiB * node.memoryAllocationRatio;
  const cpu = cpuCap > 0 ? (node.allocated.vcpus + req.vcpus) / cpuCap : 1;
  const mem = memCap > 0 ? (node.allocated.memoryMiB + req.memoryMiB) / memCap : 1;
  return Math.min(1, Math.max(0, (cpu + mem) / 2));
}

/** Prefer the fullest node, to keep whole nodes free for large partitions. */
export const binpack: Scorer = {
  name: 'binpack',
  applies: (_req, ctx) => ctx.strategy === 'binpack',
  score: (node, req) => utilisationAfter(node, req),
};

/** Prefer the emptiest node, to spread load and the blast radius of a node failure. */
export const spread: Scorer = {
  name: 'spread',
  applies: (_req, ctx) => ctx.strategy === 'spread',
  score: (node, req) => 1 - utilisationAfter(node, req),
};

/** Soft affinity: prefer nodes already running the group (1), else 0; only once the group exists. */
export const softAffinity: Scorer = {
  name: 'softAffinity',
  applies: (req, ctx) => !!req.group && !req.group.hard && req.group.policy === 'affinity' && ctx.groupTotal > 0,
  score: (node, _req, ctx) => ((node.groups[ctx.groupKey!] ?? 0) > 0 ? 1 : 0),
};

/** Soft anti-affinity: 1 / (1 + partitions of the group on the node), so the emptiest of the group wins. */
export const softAntiAffinity: Scorer = {
  name: 'softAntiAffinity',
  applies: (req, ctx) => !!req.group && !req.group.hard && req.group.policy === 'anti-affinity' && ctx.groupTotal > 0,
  score: (node, _req, ctx) => 1 / (1 + (node.groups[ctx.groupKey!] ?? 0)),
};

/**
 * Prefer nodes whose CPU baseline other ready nodes share (their flags include all of this
 * node's), so the partition can later be migrated. Applies only when the cluster has more than
 * one baseline; otherwise it cannot tell nodes apart.
 */
export const migratability: Scorer = {
  name: 'migratability',
  applies: (_req, ctx) => ctx.baselines.distinct > 1,
  score: (node, _req, ctx) => ctx.baselines.migratability(node),
};
