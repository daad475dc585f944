import type { CpuBaselines } from './cpu-baselines';
import type { PlacementContext } from './placement-context';
import type { NodeCandidate, PlacementRequest, Rejection, Resources } from './types';

/**
 * A feasibility check. `check` returns null when the node can take the request, else why not.
 * Filters are pure and independent of each other; their order is wired in stack.ts only.
 */
export interface Filter {
  readonly name: string;
  /** Every `reason` this filter can answer with. */
  readonly reasons: readonly string[];
  check(node: NodeCandidate, req: PlacementRequest, ctx: PlacementContext): Rejection | null;
  /**
   * Asked once per placement: false when the filter cannot refuse any node for this request (it
   * asks nothing of that kind), so the pipeline skips it. Absent means it always applies.
   */
  applies?(req: PlacementRequest, ctx: PlacementContext): boolean;
}

/** What is left of each resource on a node: `floor(capacity × ratio) − allocated` (negative when overcommitted past the ratio). */
export function freeResources(node: NodeCandidate): Resources {
  return {
    vcpus: Math.floor(node.capacity.vcpus * node.cpuAllocationRatio) - node.allocated.vcpus,
    memoryMiB: Math.floor(node.capacity.memoryMiB * node.memoryAllocationRatio) - node.allocated.memoryMiB,
    diskBytes: Math.floor(node.capacity.diskBytes * (node.diskAllocationRatio ?? 1)) - node.allocated.diskBytes,
  };
}

/**
 * True when the node can offer a CPU feature: `hv-*` (Hyper-V enlightenments) need KVM; other
 * features must be host flags, in `/proc/cpuinfo` spelling or QEMU's (`sse4.2` is `sse4_2`).
 * Pass the placement's baselines to look flags up in O(1).
 */
export function hostHasFeature(node: NodeCandidate, feature: string, baselines?: CpuBaselines): boolean {
  if (feature.startsWith('hv-')) return node.accelerator === 'kvm';
  const has = (flag: string) => (baselines ? baselines.hasFlag(node, flag) : node.cpuFlags.includes(flag));
  if (has(feature)) return true;
  const alt = feature.replace(/[.-]/g, '_');
  return alt !== feature && has(alt);
}

function hasAll(node: NodeCandidate, features: readonly string[], ctx: PlacementContext): boolean {
  for (const f of features) if (!hostHasFeature(node, f, ctx.baselines)) return false;
  return true;
}

const STATE_REJECTIONS: Record<string, Rejection> = {
  cordoned: { reason: 'cordoned', message: 'cordoned' },
  draining: { reason: 'draining', message: 'draining' },
  unreachable: { reason: 'unreachable', message: 'unreachable' },
};

const CURRENT_NODE: Rejection = { reason: 'current-node', message: 'the partition is there already' };

/** A partition that moves (migration) never goes back to the node it leaves. */
export const notAvoided: Filter = {
  name: 'notAvoided',
  reasons: ['current-node'],
  check: (node, req) => (req.avoidNodes?.includes(node.id) ? CURRENT_NODE : null),
};

/** Only ready nodes take new partitions; the reason is the node's state. */
export const nodeState: Filter = {
  name: 'nodeState',
  reasons: ['cordoned', 'draining', 'unreachable'],
  check: (node) => (node.state === 'ready' ? null : (STATE_REJECTIONS[node.state] ?? { reason: node.state, message: node.state })),
};

const NO_KVM: Rejection = { reason: 'accelerator', message: 'no kvm acceleration' };

/** `kvm` needs a node whose agent chose KVM; `tcg` runs anywhere. */
export const accelerator: Filter = {
  name: 'accelerator',
  reasons: ['accelerator'],
  applies: (req) => req.accelerator === 'kvm',
  check: (node, req) => (req.accelerator === 'kvm' && node.accelerator !== 'kvm' ? NO_KVM : null),
};

/** The requested machine type must be one the node's QEMU offers. */
export const machineType: Filter = {
  name: 'machineType',
  reasons: ['machine-type'],
  applies: (req) => req.machineType !== undefined,
  check: (node, req) =>
    req.machineType !== undefined && !node.machineTypes.includes(req.machineType)
      ? { reason: 'machine-type', message: `no machine type ${req.machineType}` }
      : null,
};

/** Every CPU feature the request names must be available on the node ({@link hostHasFeature}). */
export const cpuFeatures: Filter = {
  name: 'cpuFeatures',
  reasons: ['cpu-features'],
  applies: (req) => !!req.cpuFeatures?.length,
  check: (node, req, ctx) =>
    req.cpuFeatures?.length && !hasAll(node, req.cpuFeatures, ctx)
      ? { reason: 'cpu-features', message: `lacks a required cpu feature (${req.cpuFeatures.join(', ')})` }
      : null,
};

/**
 * What the image's metadata says it needs: minimum size (a property of the request, so it
 * rejects every node alike), then arch, firmware, machine type and CPU features. A node that
 * does not report its arch or firmware is not held to them.
 */
export const imageHardware: Filter = {
  name: 'imageHardware',
  reasons: ['image-hardware'],
  applies: (req) => !!req.imageRequirements,
  check: (node, req, ctx) => {
    const hw = req.imageRequirements;
    if (!hw) return null;
    const no = (message: string): Rejection => ({ reason: 'image-hardware', message });
    if (hw.minVcpus !== undefined && req.vcpus < hw.minVcpus) return no(`image needs at least ${hw.minVcpus} vcpus`);
    if (hw.minMemoryMiB !== undefined && req.memoryMiB < hw.minMemoryMiB) return no(`image needs at least ${hw.minMemoryMiB} MiB of memory`);
    if (hw.arch !== undefined && node.arch !== undefined && node.arch !== hw.arch) return no(`image needs arch ${hw.arch}`);
    if (hw.firmware !== undefined && node.firmware !== undefined && !node.firmware.includes(hw.firmware)) {
      return no(`image needs ${hw.firmware} firmware`);
    }
    const types = hw.machineTypes;
    if (types?.length) {
      const ok = req.machineType !== undefined ? types.includes(req.machineType) : types.some((t) => node.machineTypes.includes(t));
      if (!ok) return no(`image needs machine type ${types.join(' or ')}`);
    }
    if (hw.cpuFeatures?.length && !hasAll(node, hw.cpuFeatures, ctx)) return no(`image needs cpu features ${hw.cpuFeatures.join(', ')}`);
    return null;
  },
};

/** Every selector key must be a node label with exactly the selector's value. */
export const nodeSelector: Filter = {
  name: 'nodeSelector',
  reasons: ['node-selector'],
  applies: (req) => !!req.nodeSelector && Object.keys(req.nodeSelector).length > 0,
  check: (node, req) => {
    const sel = req.nodeSelector;
    if (!sel) return null;
    for (const k in sel) {
      if (node.labels[k] !== sel[k]) {
        const text = Object.keys(sel).sort().map((key) => `${key}=${sel[key]}`).join(',');
        return { reason: 'node-selector', message: `labels do not match ${text}` };
      }
    }
    return null;
  },
};

/** The image must be in the node's store, unless it is a library image the node can fetch. */
export const image: Filter = {
  name: 'image',
  reasons: ['image-missing'],
  check: (node, req) =>
    req.imageFetchable || node.images.includes(req.image) ? null : { reason: 'image-missing', message: `image '${req.image}' not in the node's store` },
};

/** Hard anti-affinity: no node may hold two partitions of the group. */
export const groupAntiAffinity: Filter = {
  name: 'groupAntiAffinity',
  reasons: ['anti-affinity'],
  applies: (req) => !!req.group && req.group.hard && req.group.policy === 'anti-affinity',
  check: (node, req, ctx) => {
    const g = req.group;
    if (!g || !g.hard || g.policy !== 'anti-affinity' || !((node.groups[ctx.groupKey!] ?? 0) > 0)) return null;
    return { reason: 'anti-affinity', message: `already runs a partition of group '${g.name}'` };
  },
};

/** Hard affinity: once the group has a partition anywhere, the others go where it runs. */
export const groupAffinity: Filter = {
  name: 'groupAffinity',
  reasons: ['affinity'],
  applies: (req, ctx) => !!req.group && req.group.hard && req.group.policy === 'affinity' && ctx.groupTotal > 0,
  check: (node, req, ctx) => {
    const g = req.group;
    if (!g || !g.hard || g.policy !== 'affinity' || ctx.groupTotal === 0 || (node.groups[ctx.groupKey!] ?? 0) > 0) return null;
    return { reason: 'affinity', message: `does not run group '${g.name}'` };
  },
};

const NO_VCPUS: Rejection = { reason: 'vcpus', message: 'not enough vcpus' };
const NO_MEMORY: Rejection = { reason: 'memory', message: 'not enough memory' };
const NO_DISK: Rejection = { reason: 'disk', message: 'not enough disk' };

/** Free vcpus after the node's CPU allocation ratio. */
export const vcpus: Filter = {
  name: 'vcpus',
  reasons: ['vcpus'],
  check: (node, req) =>
    node.allocated.vcpus + req.vcpus > Math.floor(node.capacity.vcpus * node.cpuAllocationRatio) ? NO_VCPUS : null,
};

/** Free memory after the node's memory allocation ratio. */
export const memory: Filter = {
  name: 'memory',
  reasons: ['memory'],
  check: (node, req) =>
    node.allocated.memoryMiB + req.memoryMiB > Math.floor(node.capacity.memoryMiB * node.memoryAllocationRatio) ? NO_MEMORY : null,
};

/** Free disk after the node's disk allocation ratio (1 when absent). */
export const disk: Filter = {
  name: 'disk',
  reasons: ['disk'],
  check: (node, req) =>
    node.allocated.diskBytes + req.diskBytes > Math.floor(node.capacity.diskBytes * (node.diskAllocationRatio ?? 1)) ? NO_DISK : null,
};
