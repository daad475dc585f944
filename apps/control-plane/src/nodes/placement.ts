/**
 * First-fit placement with reasons: each node is either feasible or rejected with a reason, and a
 * failed placement reports how many nodes were rejected for each reason. The scheduler issue
 * replaces this with the full pipeline in libs/scheduler.
 */
import { ReasonCount, ResourceExhaustedError } from '@hyperplane/domain';
import { Demand, NodeRow } from './node.repository';

/** Why a node cannot take a demand, or null when it can. */
export function rejectReason(n: NodeRow, d: Demand): { reason: string; message: string } | null {
  if (n.status !== 'ready') return { reason: 'unreachable', message: 'unreachable' };
  if (n.cordoned) return { reason: 'cordoned', message: 'cordoned' };
  if (n.draining) return { reason: 'draining', message: 'draining' };
  if (!n.images.some((i) => i.name === d.image)) return { reason: 'image-missing', message: `image '${d.image}' not in the node's store` };
  if (n.allocated_vcpus + d.vcpus > Math.floor(n.vcpus * n.cpu_allocation_ratio)) return { reason: 'vcpus', message: 'not enough vcpus' };
  if (Number(n.allocated_memory_mib) + d.memoryMiB > Math.floor(Number(n.memory_mib) * n.memory_allocation_ratio)) {
    return { reason: 'memory', message: 'not enough memory' };
  }
  if (Number(n.allocated_disk_bytes) + d.diskBytes > Number(n.disk_bytes)) return { reason: 'disk', message: 'not enough disk' };
  return null;
}

/** Picks the first feasible node, or throws a {@link ResourceExhaustedError} counting reasons. */
export function placeFirstFit(nodes: NodeRow[], d: Demand, pinned?: string): NodeRow {
  const counts = new Map<string, ReasonCount>();
  for (const n of nodes) {
    const r = rejectReason(n, d);
    if (!r) return n;
    const c = counts.get(r.reason) ?? { reason: r.reason, message: r.message, count: 0 };
    c.count++;
    counts.set(r.reason, c);
  }
  const reasons = [...counts.values()];
  const summary = nodes.length === 0
    ? pinned ? `node '${pinned}' does not exist` : 'no nodes are registered'
    : reasons.map((r) => `${r.count} node${r.count === 1 ? '' : 's'}: ${r.message}`).join('; ');
  throw new ResourceExhaustedError(`no node fits: ${summary}`, nodes.length === 0 ? [{ reason: 'no-nodes', message: summary, count: 0 }] : reasons);
}
