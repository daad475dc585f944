import { CpuBaselines, cpuBaselineKey } from './cpu-baselines';
import { placementContext } from './placement-context';
import * as s from './scorers';
import type { Scorer } from './scorers';
import { SCORERS } from './stack';
import { node, request, type NodeOverrides } from './testing/fixtures';
import type { PlacementRequest, Strategy } from './types';

/** [case, the cluster (the first node is scored), request overrides, expected score]. */
type Row = [string, NodeOverrides[], Partial<PlacementRequest>, number];

const soft = (policy: 'affinity' | 'anti-affinity') => ({ group: { name: 'web', policy, hard: false } });

const tables: Array<[Scorer, Row[]]> = [
  [s.binpack, [
    ['half full after placement', [{}], { vcpus: 8, memoryMiB: 16384 }, 0.5],
    ['counts what is already allocated', [{ allocated: { vcpus: 4, memoryMiB: 8192 } }], { vcpus: 4, memoryMiB: 8192 }, 0.5],
    ['mean of vcpus and memory', [{ allocated: { vcpus: 12 } }], { vcpus: 4, memoryMiB: 0 }, 0.5],
    ['against capacity × ratio', [{ cpuAllocationRatio: 2 }], { vcpus: 16, memoryMiB: 16384 }, 0.5],
    ['full', [{ allocated: { vcpus: 15, memoryMiB: 31744 } }], { vcpus: 1, memoryMiB: 1024 }, 1],
    ['no usable capacity counts as full', [{ capacity: { vcpus: 0, memoryMiB: 0 } }], { vcpus: 0, memoryMiB: 0 }, 1],
  ]],
  [s.spread, [
    ['half full after placement', [{}], { vcpus: 8, memoryMiB: 16384 }, 0.5],
    ['empty node, tiny request', [{ capacity: { vcpus: 1000, memoryMiB: 1_000_000 } }], { vcpus: 0, memoryMiB: 0 }, 1],
    ['full', [{ allocated: { vcpus: 15, memoryMiB: 31744 } }], { vcpus: 1, memoryMiB: 1024 }, 0],
    ['three quarters free', [{ allocated: { vcpus: 2, memoryMiB: 4096 } }], { vcpus: 2, memoryMiB: 4096 }, 0.75],
  ]],
  [s.softAffinity, [
    ['node runs the group', [{ groups: { 'p1/web': 2 } }], soft('affinity'), 1],
    ['group runs elsewhere', [{}, { id: 'n2', groups: { 'p1/web': 1 } }], soft('affinity'), 0],
    ['other project’s group of the same name does not count', [{ groups: { 'p2/web': 1 } }, { id: 'n2', groups: { 'p1/web': 1 } }], soft('affinity'), 0],
  ]],
  [s.softAntiAffinity, [
    ['none of the group here', [{}, { id: 'n2', groups: { 'p1/web': 1 } }], soft('anti-affinity'), 1],
    ['one here', [{ groups: { 'p1/web': 1 } }], soft('anti-affinity'), 0.5],
    ['three here', [{ groups: { 'p1/web': 3 } }], soft('anti-affinity'), 0.25],
  ]],
  [s.migratability, [
    ['two of three others share the baseline', [{ cpuFlags: ['a', 'b'] }, { id: 'n2', cpuFlags: ['a', 'b'] }, { id: 'n3', cpuFlags: ['a', 'b', 'c'] }, { id: 'n4', cpuFlags: ['a'] }], {}, 2 / 3],
    ['newest CPU: nobody else has its flags', [{ cpuFlags: ['a', 'b', 'c'] }, { id: 'n2', cpuFlags: ['a', 'b'] }, { id: 'n3', cpuFlags: ['a', 'b'] }, { id: 'n4', cpuFlags: ['a'] }], {}, 0],
    ['oldest CPU: every other node has its flags', [{ cpuFlags: ['a'] }, { id: 'n2', cpuFlags: ['a', 'b'] }, { id: 'n3', cpuFlags: ['a', 'b', 'c'] }], {}, 1],
    ['flag order and repeats do not matter', [{ cpuFlags: ['b', 'a', 'a'] }, { id: 'n2', cpuFlags: ['a', 'b'] }, { id: 'n3', cpuFlags: ['c'] }], {}, 0.5],
    ['nodes that are not ready are no migration target', [{ cpuFlags: ['a'] }, { id: 'n2', cpuFlags: ['a'], state: 'cordoned' }, { id: 'n3', cpuFlags: ['b'] }], {}, 0],
    ['the only ready node', [{ cpuFlags: ['a'] }, { id: 'n2', cpuFlags: ['a', 'b'], state: 'unreachable' }], {}, 0],
    ['many flags (several bitset words)', [
      { cpuFlags: Array.from({ length: 70 }, (_, i) => `f${i}`) },
      { id: 'n2', cpuFlags: Array.from({ length: 71 }, (_, i) => `f${i}`) },
      { id: 'n3', cpuFlags: Array.from({ length: 69 }, (_, i) => `f${i}`) },
    ], {}, 0.5],
  ]],
];

describe.each(tables.map(([scorer, rows]) => [scorer.name, scorer, rows] as const))('scorer %s', (_name, scorer, rows) => {
  it.each(rows)('%s', (_case, cluster, requestOverrides, expected) => {
    const all = cluster.map((o) => node(o));
    const req = request(requestOverrides);
    const ctx = placementContext(all, req, scorer.name === 'binpack' ? 'binpack' : 'spread');
    expect(scorer.applies(req, ctx)).toBe(true);
    expect(scorer.score(all[0], req, ctx)).toBeCloseTo(expected, 10);
  });
});

describe('when scorers apply', () => {
  const twoBaselines = [node({ cpuFlags: ['a'] }), node({ id: 'n2', cpuFlags: ['b'] })];
  const withGroup = [node({ groups: { 'p1/web': 1 } })];
  const rows: Array<[string, Scorer, Strategy, ReturnType<typeof node>[], Partial<PlacementRequest>, boolean]> = [
    ['binpack under binpack', s.binpack, 'binpack', [node()], {}, true],
    ['binpack under spread', s.binpack, 'spread', [node()], {}, false],
    ['spread under spread', s.spread, 'spread', [node()], {}, true],
    ['spread under binpack', s.spread, 'binpack', [node()], {}, false],
    ['soft affinity without a group', s.softAffinity, 'spread', withGroup, {}, false],
    ['soft affinity before the group exists', s.softAffinity, 'spread', [node()], soft('affinity'), false],
    ['soft affinity once it exists', s.softAffinity, 'spread', withGroup, soft('affinity'), true],
    ['hard affinity is a filter', s.softAffinity, 'spread', withGroup, { group: { name: 'web', policy: 'affinity', hard: true } }, false],
    ['soft affinity on an anti-affinity group', s.softAffinity, 'spread', withGroup, soft('anti-affinity'), false],
    ['soft anti-affinity once it exists', s.softAntiAffinity, 'spread', withGroup, soft('anti-affinity'), true],
    ['hard anti-affinity is a filter', s.softAntiAffinity, 'spread', withGroup, { group: { name: 'web', policy: 'anti-affinity', hard: true } }, false],
    ['migratability with one baseline', s.migratability, 'spread', [node(), node({ id: 'n2' })], {}, false],
    ['migratability with two baselines', s.migratability, 'spread', twoBaselines, {}, true],
  ];
  it.each(rows)('%s → %s', (_case, scorer, strategy, cluster, requestOverrides, applies) => {
    const req = request(requestOverrides);
    expect(scorer.applies(req, placementContext(cluster, req, strategy))).toBe(applies);
  });

  it('has a table above for every scorer the pipeline runs', () => {
    expect(SCORERS.map((x) => x.name).sort()).toEqual(tables.map(([x]) => x.name).sort());
  });
});

describe('CPU baselines', () => {
  it('keys a flag set regardless of order and repeats', () => {
    expect(cpuBaselineKey(['b', 'a', 'a'])).toBe(cpuBaselineKey(['a', 'b']));
    expect(cpuBaselineKey(['a', 'b'])).toMatch(/^[0-9a-f]{16}$/);
    expect(cpuBaselineKey(['a', 'b'])).not.toBe(cpuBaselineKey(['a', 'b', 'c']));
    expect(cpuBaselineKey(['ab'])).not.toBe(cpuBaselineKey(['a', 'b']));
  });

  it('gives the same answers when nodes carry their baseline key', () => {
    const flags = [['a', 'b'], ['b', 'a'], ['a', 'b', 'c'], ['a']];
    const plain = flags.map((f, i) => node({ id: `n${i}`, cpuFlags: [...f] }));
    const keyed = flags.map((f, i) => node({ id: `n${i}`, cpuFlags: [...f], cpuBaseline: cpuBaselineKey(f) }));
    const a = new CpuBaselines(plain);
    const b = new CpuBaselines(keyed);
    expect(b.distinct).toBe(a.distinct);
    expect(keyed.map((n) => b.migratability(n))).toEqual(plain.map((n) => a.migratability(n)));
    expect(keyed.map((n) => b.hasFlag(n, 'c'))).toEqual([false, false, true, false]);
  });

  it('looks up flags of nodes it was not built from', () => {
    const b = new CpuBaselines([node({ cpuFlags: ['a'] })]);
    expect(b.hasFlag(node({ id: 'other', cpuFlags: ['z'] }), 'z')).toBe(true);
    expect(b.migratability(node({ id: 'other', cpuFlags: ['z'] }))).toBe(0);
  });

  it('groups 1,000 nodes of 4 CPU models into 4 baselines', () => {
    const models = [['a'], ['a', 'b'], ['a', 'b', 'c'], ['x']];
    const cluster = Array.from({ length: 1000 }, (_, i) => node({ id: `n${i}`, cpuFlags: [...models[i % 4]] }));
    const b = new CpuBaselines(cluster);
    expect(b.distinct).toBe(4);
    expect(b.migratability(cluster[0])).toBeCloseTo(749 / 999, 10);
    expect(b.migratability(cluster[3])).toBeCloseTo(249 / 999, 10);
  });
});
