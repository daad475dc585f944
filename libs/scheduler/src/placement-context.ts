import { CpuBaselines } from './cpu-baselines';
import type { NodeCandidate, PlacementRequest, Strategy } from './types';

/** The key a placement group has in {@link NodeCandidate.groups}: groups are per project. */
export function groupKey(projectId: string, group: string): string {
  return `${projectId}/${group}`;
}

/**
 * Facts about the whole cluster that filters and scorers need, computed once per placement so
 * that no filter or scorer ever walks the node list itself.
 */
export interface PlacementContext {
  readonly strategy: Strategy;
  /** Key of the request's placement group, when it has one. */
  readonly groupKey: string | undefined;
  /** Partitions of the request's group on all nodes, whatever their state. */
  readonly groupTotal: number;
  readonly baselines: CpuBaselines;
}

/**
 * Builds the context for placing `req` on `nodes` (the whole cluster, not only candidates).
 * `baselines` may be passed in when the nodes' flags and states have not changed since it was
 * built (a batch), to skip recomputing it.
 */
export function placementContext(
  nodes: readonly NodeCandidate[],
  req: PlacementRequest,
  strategy: Strategy,
  baselines: CpuBaselines = new CpuBaselines(nodes),
): PlacementContext {
  const key = req.group ? groupKey(req.projectId, req.group.name) : undefined;
  let groupTotal = 0;
  if (key !== undefined) for (const n of nodes) groupTotal += n.groups[key] ?? 0;
  return { strategy, groupKey: key, groupTotal, baselines };
}
