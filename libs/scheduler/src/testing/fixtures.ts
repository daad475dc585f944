/** Fixture factories for scheduler tests and the benchmark: small, valid defaults, overridden per case. */
import type { NodeCandidate, PlacementRequest, Resources } from '../types';

const GiB = 1024 ** 3;

/** Overrides of a {@link node}; `capacity` and `allocated` may be partial. */
export type NodeOverrides = Partial<Omit<NodeCandidate, 'capacity' | 'allocated'>> & {
  capacity?: Partial<Resources>;
  allocated?: Partial<Resources>;
};

/** A ready x86_64 KVM node, 16 vcpus / 32 GiB / 500 GiB, nothing allocated, image `debian` in its store. */
export function node(o: NodeOverrides = {}): NodeCandidate {
  const id = o.id ?? 'n1';
  return {
    name: id,
    state: 'ready',
    cpuAllocationRatio: 1,
    memoryAllocationRatio: 1,
    accelerator: 'kvm',
    cpuFlags: ['sse4_2', 'avx', 'avx2', 'vmx'],
    machineTypes: ['pc', 'q35'],
    arch: 'x86_64',
    firmware: ['bios', 'uefi'],
    labels: {},
    images: ['debian'],
    groups: {},
    ...o,
    id,
    capacity: { vcpus: 16, memoryMiB: 32768, diskBytes: 500 * GiB, ...o.capacity },
    allocated: { vcpus: 0, memoryMiB: 0, diskBytes: 0, ...o.allocated },
  };
}

/** A 1 vcpu / 1 GiB / 10 GiB partition of project `p1` from image `debian`. */
export function request(o: Partial<PlacementRequest> = {}): PlacementRequest {
  return {
    requestId: 'req-1',
    projectId: 'p1',
    vcpus: 1,
    memoryMiB: 1024,
    diskBytes: 10 * GiB,
    image: 'debian',
    ...o,
  };
}

/** `count` nodes with ids `n0001`, `n0002`, …, each with `overrides(i)` applied. */
export function nodes(count: number, overrides: (i: number) => NodeOverrides = () => ({})): NodeCandidate[] {
  return Array.from({ length: count }, (_, i) => node({ id: `n${String(i + 1).padStart(4, '0')}`, ...overrides(i) }));
}
