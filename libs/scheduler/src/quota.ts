import type { PlacementRequest, ProjectQuota, ProjectUsage, Rejection } from './types';

/**
 * The project limits `req` would exceed, one rejection (reason `quota`) per limit, empty when it
 * fits. Checked once per request, before any node is looked at: no node can cure a quota.
 */
export function checkQuota(req: PlacementRequest, quota: ProjectQuota | undefined, usage: ProjectUsage | undefined): Rejection[] {
  if (!quota) return [];
  const used = usage ?? { partitions: 0, vcpus: 0, memoryMiB: 0 };
  const out: Rejection[] = [];
  if (quota.maxPartitions !== undefined && used.partitions + 1 > quota.maxPartitions) {
    out.push({ reason: 'quota', message: `project quota: ${used.partitions} of ${quota.maxPartitions} partitions used` });
  }
  if (quota.maxVcpus !== undefined && used.vcpus + req.vcpus > quota.maxVcpus) {
    out.push({ reason: 'quota', message: `project quota: ${used.vcpus} of ${quota.maxVcpus} vcpus used, ${req.vcpus} more requested` });
  }
  if (quota.maxMemoryMiB !== undefined && used.memoryMiB + req.memoryMiB > quota.maxMemoryMiB) {
    out.push({
      reason: 'quota',
      message: `project quota: ${used.memoryMiB} of ${quota.maxMemoryMiB} MiB of memory used, ${req.memoryMiB} MiB more requested`,
    });
  }
  return out;
}
