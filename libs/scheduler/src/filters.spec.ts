import * as f from './filters';
import type { Filter } from './filters';
import { placementContext } from './placement-context';
import { FILTERS } from './stack';
import { node, request, type NodeOverrides } from './testing/fixtures';
import type { PlacementRequest, Rejection } from './types';

const GiB = 1024 ** 3;

/** [case, node overrides, request overrides, expected rejection (null: feasible), other nodes of the cluster]. */
type Row = [string, NodeOverrides, Partial<PlacementRequest>, Rejection | null, NodeOverrides[]?];

const tables: Array<[Filter, Row[]]> = [
  [f.notAvoided, [
    ['nothing avoided', {}, {}, null],
    ['another node avoided', { id: 'n1' }, { avoidNodes: ['n2'] }, null],
    ['the node a migration leaves', { id: 'n1' }, { avoidNodes: ['n2', 'n1'] }, { reason: 'current-node', message: 'the partition is there already' }],
  ]],
  [f.nodeState, [
    ['ready', {}, {}, null],
    ['cordoned', { state: 'cordoned' }, {}, { reason: 'cordoned', message: 'cordoned' }],
    ['draining', { state: 'draining' }, {}, { reason: 'draining', message: 'draining' }],
    ['unreachable', { state: 'unreachable' }, {}, { reason: 'unreachable', message: 'unreachable' }],
  ]],
  [f.accelerator, [
    ['no requirement on a tcg node', { accelerator: 'tcg' }, {}, null],
    ['kvm on kvm', {}, { accelerator: 'kvm' }, null],
    ['kvm on tcg', { accelerator: 'tcg' }, { accelerator: 'kvm' }, { reason: 'accelerator', message: 'no kvm acceleration' }],
    ['kvm on simulated', { accelerator: 'simulated' }, { accelerator: 'kvm' }, { reason: 'accelerator', message: 'no kvm acceleration' }],
    ['tcg on kvm', {}, { accelerator: 'tcg' }, null],
    ['tcg on tcg', { accelerator: 'tcg' }, { accelerator: 'tcg' }, null],
  ]],
  [f.machineType, [
    ['none requested', { machineTypes: [] }, {}, null],
    ['offered', {}, { machineType: 'q35' }, null],
    ['not offered', { machineTypes: ['pc'] }, { machineType: 'q35' }, { reason: 'machine-type', message: 'no machine type q35' }],
  ]],
  [f.cpuFeatures, [
    ['none requested', { cpuFlags: [] }, {}, null],
    ['empty list', { cpuFlags: [] }, { cpuFeatures: [] }, null],
    ['all present', {}, { cpuFeatures: ['avx2', 'vmx'] }, null],
    ['QEMU spelling of a host flag', {}, { cpuFeatures: ['sse4.2'] }, null],
    ['one missing', {}, { cpuFeatures: ['avx2', 'avx512f'] }, { reason: 'cpu-features', message: 'lacks a required cpu feature (avx2, avx512f)' }],
    ['hv-* enlightenment on kvm', { cpuFlags: [] }, { cpuFeatures: ['hv-synic'] }, null],
    ['hv-* enlightenment on tcg', { accelerator: 'tcg' }, { cpuFeatures: ['hv-synic'] }, { reason: 'cpu-features', message: 'lacks a required cpu feature (hv-synic)' }],
  ]],
  [f.imageHardware, [
    ['no image requirements', { arch: 'aarch64' }, {}, null],
    ['all met', {}, { vcpus: 2, memoryMiB: 2048, imageRequirements: { arch: 'x86_64', minVcpus: 2, minMemoryMiB: 2048, cpuFeatures: ['avx2'], machineTypes: ['q35'], firmware: 'uefi' } }, null],
    ['too few vcpus requested', {}, { vcpus: 1, imageRequirements: { minVcpus: 2 } }, { reason: 'image-hardware', message: 'image needs at least 2 vcpus' }],
    ['too little memory requested', {}, { memoryMiB: 512, imageRequirements: { minMemoryMiB: 1024 } }, { reason: 'image-hardware', message: 'image needs at least 1024 MiB of memory' }],
    ['other arch', { arch: 'aarch64' }, { imageRequirements: { arch: 'x86_64' } }, { reason: 'image-hardware', message: 'image needs arch x86_64' }],
    ['node does not report arch', { arch: undefined }, { imageRequirements: { arch: 'x86_64' } }, null],
    ['no uefi', { firmware: ['bios'] }, { imageRequirements: { firmware: 'uefi' } }, { reason: 'image-hardware', message: 'image needs uefi firmware' }],
    ['node does not report firmware', { firmware: undefined }, { imageRequirements: { firmware: 'uefi' } }, null],
    ['node offers none of the machine types', { machineTypes: ['pc'] }, { imageRequirements: { machineTypes: ['q35', 'virt'] } }, { reason: 'image-hardware', message: 'image needs machine type q35 or virt' }],
    ['node offers one of the machine types', { machineTypes: ['virt'] }, { imageRequirements: { machineTypes: ['q35', 'virt'] } }, null],
    ['requested machine type not one the image works on', {}, { machineType: 'pc', imageRequirements: { machineTypes: ['q35'] } }, { reason: 'image-hardware', message: 'image needs machine type q35' }],
    ['missing cpu feature', {}, { imageRequirements: { cpuFeatures: ['avx512f'] } }, { reason: 'image-hardware', message: 'image needs cpu features avx512f' }],
    ['empty lists mean any', { machineTypes: [], cpuFlags: [] }, { imageRequirements: { machineTypes: [], cpuFeatures: [] } }, null],
  ]],
  [f.nodeSelector, [
    ['no selector', {}, {}, null],
    ['all match', { labels: { zone: 'a', ssd: 'true', extra: 'x' } }, { nodeSelector: { zone: 'a', ssd: 'true' } }, null],
    ['one differs', { labels: { zone: 'b', ssd: 'true' } }, { nodeSelector: { zone: 'a', ssd: 'true' } }, { reason: 'node-selector', message: 'labels do not match ssd=true,zone=a' }],
    ['label absent', {}, { nodeSelector: { zone: 'a' } }, { reason: 'node-selector', message: 'labels do not match zone=a' }],
    ['inherited property is not a label', {}, { nodeSelector: { constructor: 'x' } }, { reason: 'node-selector', message: 'labels do not match constructor=x' }],
  ]],
  [f.image, [
    ['in store', {}, {}, null],
    ['missing', { images: ['alpine'] }, {}, { reason: 'image-missing', message: "image 'debian' not in the node's store" }],
    ['missing but a library image the node can fetch', { images: ['alpine'] }, { imageFetchable: true }, null],
  ]],
  [f.groupAntiAffinity, [
    ['no group', { groups: { 'p1/web': 1 } }, {}, null],
    ['node holds none of the group', { groups: { 'p1/db': 1 } }, { group: { name: 'web', policy: 'anti-affinity', hard: true } }, null],
    ['node holds one', { groups: { 'p1/web': 1 } }, { group: { name: 'web', policy: 'anti-affinity', hard: true } }, { reason: 'anti-affinity', message: "already runs a partition of group 'web'" }],
    ['same group name, other project', { groups: { 'p2/web': 1 } }, { group: { name: 'web', policy: 'anti-affinity', hard: true } }, null],
    ['soft is not a filter', { groups: { 'p1/web': 1 } }, { group: { name: 'web', policy: 'anti-affinity', hard: false } }, null],
  ]],
  [f.groupAffinity, [
    ['group not yet anywhere', {}, { group: { name: 'db', policy: 'affinity', hard: true } }, null, [{ id: 'n2' }]],
    ['node holds the group', { groups: { 'p1/db': 2 } }, { group: { name: 'db', policy: 'affinity', hard: true } }, null, [{ id: 'n2' }]],
    ['group lives elsewhere', {}, { group: { name: 'db', policy: 'affinity', hard: true } }, { reason: 'affinity', message: "does not run group 'db'" }, [{ id: 'n2', groups: { 'p1/db': 1 } }]],
    ['soft is not a filter', {}, { group: { name: 'db', policy: 'affinity', hard: false } }, null, [{ id: 'n2', groups: { 'p1/db': 1 } }]],
  ]],
  [f.vcpus, [
    ['fits exactly', { allocated: { vcpus: 12 } }, { vcpus: 4 }, null],
    ['one too many', { allocated: { vcpus: 13 } }, { vcpus: 4 }, { reason: 'vcpus', message: 'not enough vcpus' }],
    ['fits with overcommit 4:1', { allocated: { vcpus: 60 }, cpuAllocationRatio: 4 }, { vcpus: 4 }, null],
    ['past overcommit 4:1', { allocated: { vcpus: 61 }, cpuAllocationRatio: 4 }, { vcpus: 4 }, { reason: 'vcpus', message: 'not enough vcpus' }],
    ['fractional ratio: 3 × 1.5 takes 4', { capacity: { vcpus: 3 }, cpuAllocationRatio: 1.5 }, { vcpus: 4 }, null],
    ['fractional ratio: 3 × 1.5 refuses 5', { capacity: { vcpus: 3 }, cpuAllocationRatio: 1.5 }, { vcpus: 5 }, { reason: 'vcpus', message: 'not enough vcpus' }],
  ]],
  [f.memory, [
    ['fits exactly', { allocated: { memoryMiB: 31744 } }, { memoryMiB: 1024 }, null],
    ['one MiB too many', { allocated: { memoryMiB: 31745 } }, { memoryMiB: 1024 }, { reason: 'memory', message: 'not enough memory' }],
    ['fits with overcommit 1.5', { allocated: { memoryMiB: 40000 }, memoryAllocationRatio: 1.5 }, { memoryMiB: 8000 }, null],
    ['undercommit 0.5 reserves half for the host', { memoryAllocationRatio: 0.5 }, { memoryMiB: 16385 }, { reason: 'memory', message: 'not enough memory' }],
  ]],
  [f.disk, [
    ['fits', { allocated: { diskBytes: 490 * GiB } }, { diskBytes: 10 * GiB }, null],
    ['too big', { allocated: { diskBytes: 491 * GiB } }, { diskBytes: 10 * GiB }, { reason: 'disk', message: 'not enough disk' }],
    ['no ratio means 1', {}, { diskBytes: 501 * GiB }, { reason: 'disk', message: 'not enough disk' }],
    ['thin-provisioning ratio 2', { diskAllocationRatio: 2 }, { diskBytes: 1000 * GiB }, null],
  ]],
];

describe.each(tables.map(([filter, rows]) => [filter.name, filter, rows] as const))('filter %s', (_name, filter, rows) => {
  it.each(rows)('%s', (_case, nodeOverrides, requestOverrides, expected, others = []) => {
    const subject = node(nodeOverrides);
    const req = request(requestOverrides);
    const ctx = placementContext([subject, ...others.map((o) => node(o))], req, 'spread');
    expect(filter.check(subject, req, ctx)).toEqual(expected);
    if (expected) expect(filter.reasons).toContain(expected.reason);
  });
});

describe('filter list', () => {
  it('has a table above for every filter the pipeline runs', () => {
    expect(FILTERS.map((x) => x.name).sort()).toEqual(tables.map(([x]) => x.name).sort());
  });

  it('reports free resources after the allocation ratios', () => {
    expect(f.freeResources(node({ capacity: { vcpus: 8 }, allocated: { vcpus: 10, memoryMiB: 1024 }, cpuAllocationRatio: 2, diskAllocationRatio: 1.5 }))).toEqual({
      vcpus: 6,
      memoryMiB: 31744,
      diskBytes: 750 * GiB,
    });
  });
});
