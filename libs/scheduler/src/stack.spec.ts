import { ResourceExhaustedError } from '@hyperplane/domain';
import { NoNodeFitsError, QuotaExceededError, rejectionError } from './errors';
import { seedFrom, shuffle, sortById } from './source';
import { FILTERS, SCORERS, PlacementSession, defaultMaxCandidates, place, placeMany, withPlacement, type Placed, type PlacementResult, type Rejected } from './stack';
import { node, nodes, request } from './testing/fixtures';
import type { NodeCandidate, PlacementRequest, SchedulerConfig } from './types';

function placed(r: PlacementResult): Placed {
  if (!r.ok) throw new Error(`expected a placement, got: ${r.message}`);
  return r;
}

function rejected(r: PlacementResult): Rejected {
  if (r.ok) throw new Error(`expected a rejection, got node ${r.node.id}`);
  return r;
}

const replicas = (count: number, o: Partial<PlacementRequest>): PlacementRequest[] =>
  Array.from({ length: count }, (_, i) => request({ requestId: `replica-${i}`, ...o }));

describe('place: rejections are data', () => {
  it('counts nodes per first failing filter, most common first', () => {
    const cluster = [
      node({ id: 'a', allocated: { memoryMiB: 32000 } }),
      node({ id: 'b', allocated: { memoryMiB: 32000 } }),
      node({ id: 'c', allocated: { memoryMiB: 32000 } }),
      // Cordoned and full: counted once, as cordoned.
      node({ id: 'd', state: 'cordoned', allocated: { memoryMiB: 32000 } }),
    ];
    const r = rejected(place(cluster, request({ memoryMiB: 2048 })));
    expect(r.kind).toBe('no-fit');
    expect(r.message).toBe('no node fits: 3 nodes: not enough memory; 1 node: cordoned');
    expect(r.reasons).toEqual([
      { reason: 'memory', count: 3, message: 'not enough memory' },
      { reason: 'cordoned', count: 1, message: 'cordoned' },
    ]);
  });

  it('orders equal counts by reason name', () => {
    const cluster = [
      node({ id: 'a', state: 'draining' }),
      node({ id: 'b', allocated: { diskBytes: 500 * 1024 ** 3 } }),
      node({ id: 'c', state: 'draining' }),
      node({ id: 'd', allocated: { diskBytes: 500 * 1024 ** 3 } }),
    ];
    expect(rejected(place(cluster, request())).message).toBe('no node fits: 2 nodes: not enough disk; 2 nodes: draining');
  });

  it('keeps different messages of one reason apart', () => {
    const cluster = [node({ id: 'a', arch: 'aarch64' }), node({ id: 'b', arch: 'aarch64' }), node({ id: 'c', firmware: ['bios'] })];
    const r = rejected(place(cluster, request({ imageRequirements: { arch: 'x86_64', firmware: 'uefi' } })));
    expect(r.message).toBe('no node fits: 2 nodes: image needs arch x86_64; 1 node: image needs uefi firmware');
    expect(r.reasons.map((x) => [x.reason, x.count])).toEqual([['image-hardware', 2], ['image-hardware', 1]]);
  });

  it('says so when no node is registered', () => {
    const r = rejected(place([], request()));
    expect(r.message).toBe('no node fits: no nodes are registered');
    expect(r.reasons).toEqual([{ reason: 'no-nodes', count: 0, message: 'no nodes are registered' }]);
  });

  it('maps to the domain errors a service throws (422 RESOURCE_EXHAUSTED)', () => {
    const noFit = rejectionError(rejected(place([node({ state: 'unreachable' })], request())));
    expect(noFit).toBeInstanceOf(NoNodeFitsError);
    expect(noFit).toBeInstanceOf(ResourceExhaustedError);
    expect(noFit.code).toBe('RESOURCE_EXHAUSTED');
    expect(noFit.message).toBe('no node fits: 1 node: unreachable');
    expect(noFit.reasons).toEqual([{ reason: 'unreachable', count: 1, message: 'unreachable' }]);
    const quota = rejectionError(rejected(place([node()], request(), { quota: { maxPartitions: 1 }, usage: { partitions: 1, vcpus: 1, memoryMiB: 1 } })));
    expect(quota).toBeInstanceOf(QuotaExceededError);
    expect(quota.name).toBe('QuotaExceededError');
  });
});

describe('place: quota', () => {
  it('refuses before looking at any node, naming the limit', () => {
    const check = jest.spyOn(FILTERS[0], 'check');
    try {
      const r = rejected(place(nodes(3), request(), { quota: { maxPartitions: 12 }, usage: { partitions: 12, vcpus: 12, memoryMiB: 12288 } }));
      expect(r).toEqual({
        ok: false,
        kind: 'quota',
        message: 'project quota: 12 of 12 partitions used',
        reasons: [{ reason: 'quota', count: 1, message: 'project quota: 12 of 12 partitions used' }],
      });
      expect(check).not.toHaveBeenCalled();
    } finally {
      check.mockRestore();
    }
  });

  it('places within quota', () => {
    expect(place(nodes(3), request({ vcpus: 2 }), { quota: { maxVcpus: 4 }, usage: { partitions: 1, vcpus: 2, memoryMiB: 0 } }).ok).toBe(true);
  });
});

describe('place: pinned node', () => {
  const cluster = [node({ id: 'id-1', name: 'web-node' }), node({ id: 'id-2', name: 'big', capacity: { vcpus: 128 } }), node({ id: 'id-3', name: 'cordoned-node', state: 'cordoned' })];

  it.each([['id-1'], ['web-node']])('places on the node named by %s, even when another scores higher', (ref) => {
    expect(placed(place(cluster, request({ node: ref }))).node.id).toBe('id-1');
  });

  it('reports only the pinned node’s reason', () => {
    expect(rejected(place(cluster, request({ node: 'cordoned-node' }))).message).toBe('no node fits: 1 node: cordoned');
  });

  it('says when the pinned node does not exist', () => {
    const r = rejected(place(cluster, request({ node: 'nope' })));
    expect(r.message).toBe("no node fits: node 'nope' does not exist");
    expect(r.reasons).toEqual([{ reason: 'pinned', count: 0, message: "node 'nope' does not exist" }]);
  });
});

describe('place: deterministic source', () => {
  const equal = nodes(10);

  it('gives the same node for the same request id, whatever order the nodes come in', () => {
    const req = request({ requestId: 'b1f1c0de-0000-4000-8000-000000000001' });
    const first = placed(place(equal, req));
    for (const order of [equal.slice().reverse(), [...equal.slice(5), ...equal.slice(0, 5)]]) {
      expect(placed(place(order, req)).node.id).toBe(first.node.id);
    }
    expect(first.explain.seed).toBe(seedFrom(req.requestId));
  });

  it('answers a refusal the same way whatever order the nodes come in', () => {
    const mixed = nodes(12, (i) => ({ state: (['ready', 'cordoned', 'draining'] as const)[i % 3], allocated: { memoryMiB: 32768 } }));
    const a = rejected(place(mixed, request()));
    expect(rejected(place(mixed.slice().reverse(), request()))).toEqual(a);
    expect(a.message).toBe('no node fits: 4 nodes: cordoned; 4 nodes: draining; 4 nodes: not enough memory');
  });

  it('breaks ties by the shuffled order: the first equal node of the shuffle wins', () => {
    for (let i = 0; i < 20; i++) {
      const req = request({ requestId: `tie-${i}` });
      expect(placed(place(equal, req)).node.id).toBe(shuffle(sortById(equal), seedFrom(req.requestId))[0].id);
    }
  });

  it('spreads different request ids over all equal nodes', () => {
    const picks = new Set<string>();
    for (let i = 0; i < 200; i++) picks.add(placed(place(equal, request({ requestId: `req-${i}` }))).node.id);
    expect(picks.size).toBe(10);
  });
});

describe('place: strategy', () => {
  const cluster = [
    node({ id: 'half', allocated: { vcpus: 8, memoryMiB: 16384 } }),
    node({ id: 'empty' }),
    node({ id: 'quarter', allocated: { vcpus: 4, memoryMiB: 8192 } }),
  ];

  it.each([
    ['binpack', 'half'],
    ['spread', 'empty'],
  ] as const)('%s picks %s', (strategy, expected) => {
    expect(placed(place(cluster, request({ strategy }))).node.id).toBe(expected);
  });

  it('takes the cluster default when the request names none', () => {
    expect(placed(place(cluster, request(), { config: { defaultStrategy: 'binpack' } })).node.id).toBe('half');
    expect(placed(place(cluster, request(), { config: { defaultStrategy: 'spread' } })).node.id).toBe('empty');
    expect(placed(place(cluster, request())).explain.strategy).toBe('spread');
  });

  it('explains the choice', () => {
    const r = placed(place([...cluster, node({ id: 'off', state: 'cordoned' })], request({ strategy: 'binpack', vcpus: 8, memoryMiB: 16384 })));
    expect(r.node.id).toBe('half');
    expect(r.score).toBe(1);
    expect(r.explain).toMatchObject({ strategy: 'binpack', candidates: 4, feasible: 3, scores: { binpack: 1 } });
    expect(r.explain.rejected).toEqual([{ reason: 'cordoned', count: 1, message: 'cordoned' }]);
  });
});

describe('place: placement groups', () => {
  it('never puts two replicas on one node under hard anti-affinity', () => {
    const cluster = nodes(3);
    const results = placeMany(cluster, replicas(5, { group: { name: 'web', policy: 'anti-affinity', hard: true } }));
    const ok = results.filter((r): r is Placed => r.ok);
    expect(ok).toHaveLength(3);
    expect(new Set(ok.map((r) => r.node.id)).size).toBe(3);
    for (const r of results.slice(3).map(rejected)) {
      expect(r.reasons).toEqual([{ reason: 'anti-affinity', count: 3, message: "already runs a partition of group 'web'" }]);
      expect(r.message).toBe("no node fits: 3 nodes: already runs a partition of group 'web'");
    }
  });

  it('keeps replicas together under hard affinity, and refuses once their node is full', () => {
    const cluster = nodes(3, () => ({ capacity: { vcpus: 2 } }));
    const results = placeMany(cluster, replicas(3, { group: { name: 'db', policy: 'affinity', hard: true } }));
    const [a, b] = results.slice(0, 2).map(placed);
    expect(b.node.id).toBe(a.node.id);
    expect(rejected(results[2]).message).toBe("no node fits: 2 nodes: does not run group 'db'; 1 node: not enough vcpus");
  });

  it('spreads replicas under soft anti-affinity even when binpacking, and still places them all', () => {
    const results = placeMany(nodes(3), replicas(5, { strategy: 'binpack', group: { name: 'web', policy: 'anti-affinity', hard: false } }));
    const perNode = new Map<string, number>();
    for (const r of results.map(placed)) perNode.set(r.node.id, (perNode.get(r.node.id) ?? 0) + 1);
    expect([...perNode.values()].sort()).toEqual([1, 2, 2]);
  });

  it('pulls a replica to its group under soft affinity even when spreading', () => {
    const cluster = [node({ id: 'a' }), node({ id: 'b', allocated: { vcpus: 2, memoryMiB: 2048 }, groups: { 'p1/db': 1 } }), node({ id: 'c' })];
    for (let i = 0; i < 10; i++) {
      const r = placed(place(cluster, request({ requestId: `r${i}`, strategy: 'spread', group: { name: 'db', policy: 'affinity', hard: false } })));
      expect(r.node.id).toBe('b');
    }
  });
});

describe('place: migratability', () => {
  const cluster = [
    node({ id: 'old-1', cpuFlags: ['sse4_2', 'avx2'] }),
    node({ id: 'old-2', cpuFlags: ['avx2', 'sse4_2'] }),
    node({ id: 'new', cpuFlags: ['sse4_2', 'avx2', 'avx512f'] }),
  ];

  it('prefers the node whose CPU baseline others share', () => {
    for (let i = 0; i < 30; i++) expect(placed(place(cluster, request({ requestId: `m${i}` }))).node.id).not.toBe('new');
  });

  it('is only a preference: a weight of 0 turns it off, and a guest that needs the newer CPU still goes there', () => {
    const picks = new Set<string>();
    for (let i = 0; i < 30; i++) picks.add(placed(place(cluster, request({ requestId: `m${i}` }), { config: { defaultStrategy: 'spread', weights: { migratability: 0 } } })).node.id);
    expect(picks).toContain('new');
    expect(placed(place(cluster, request({ cpuFeatures: ['avx512f'] }))).node.id).toBe('new');
  });
});

describe('placeMany', () => {
  it('reserves as it goes, so a batch never overcommits a node', () => {
    const cluster = nodes(3, () => ({ capacity: { vcpus: 4, memoryMiB: 4096 } }));
    const snapshot = structuredClone(cluster);
    const results = placeMany(cluster, replicas(8, { vcpus: 2, memoryMiB: 2048 }));
    const perNode = new Map<string, number>();
    for (const r of results.slice(0, 6).map(placed)) perNode.set(r.node.id, (perNode.get(r.node.id) ?? 0) + 1);
    expect([...perNode.values()]).toEqual([2, 2, 2]);
    for (const r of results.slice(6).map(rejected)) expect(r.message).toBe('no node fits: 3 nodes: not enough vcpus');
    expect(cluster).toEqual(snapshot);
  });

  it('counts the batch against the quota', () => {
    const results = placeMany(nodes(3), replicas(5, {}), { quota: { maxPartitions: 4 }, usage: { partitions: 1, vcpus: 1, memoryMiB: 1024 } });
    expect(results.map((r) => r.ok)).toEqual([true, true, true, false, false]);
    expect(rejected(results[3]).message).toBe('project quota: 4 of 4 partitions used');
  });

  it('gives the same answers as placing one by one on updated nodes', () => {
    const reqs = replicas(4, { strategy: 'binpack', vcpus: 3 });
    let cluster: NodeCandidate[] = nodes(4);
    const oneByOne = reqs.map((req) => {
      const r = placed(place(cluster, req));
      cluster = cluster.map((n) => (n.id === r.node.id ? withPlacement(n, req) : n));
      return r.node.id;
    });
    expect(placeMany(nodes(4), reqs).map((r) => placed(r).node.id)).toEqual(oneByOne);
  });
});

describe('PlacementSession', () => {
  it('gives each create the answers placeMany gives it on the nodes the creates before it left', () => {
    const creates = [replicas(3, { vcpus: 2 }), [request({ requestId: 'solo', vcpus: 3, strategy: 'binpack' })], replicas(2, { vcpus: 1, strategy: 'spread' })].map((rs, k) => rs.map((r) => ({ ...r, requestId: `${k}/${r.requestId}` })));
    const session = new PlacementSession(nodes(4, () => ({ capacity: { vcpus: 4, memoryMiB: 8192 } })));
    let cluster: NodeCandidate[] = nodes(4, () => ({ capacity: { vcpus: 4, memoryMiB: 8192 } }));
    for (const reqs of creates) {
      const expected = placeMany(cluster, reqs).map((r) => placed(r).node.id);
      const got = session.placeAll(reqs);
      if (!got.ok) throw new Error(got.message);
      expect(got.placed.map((p) => p.node.id)).toEqual(expected);
      reqs.forEach((req, i) => (cluster = cluster.map((n) => (n.id === expected[i] ? withPlacement(n, req) : n))));
    }
    expect(session.nodes).toEqual(cluster);
  });

  it('leaves the session as it was when a create is refused, and keeps placing the next ones', () => {
    const fresh = () => nodes(2, () => ({ capacity: { vcpus: 2, memoryMiB: 4096 } }));
    const session = new PlacementSession(fresh());
    const refused = session.placeAll(replicas(5, { vcpus: 1 }));
    expect(refused.ok).toBe(false);
    if (!refused.ok) expect(refused.message).toBe('no node fits: 2 nodes: not enough vcpus');
    expect(session.nodes).toEqual(fresh());
    const ok = session.placeAll(replicas(4, { vcpus: 1 }));
    expect(ok.ok && ok.placed).toHaveLength(4);
  });

  it('counts a create against its quota from the usage it is given', () => {
    const session = new PlacementSession(nodes(3));
    const r = session.placeAll(replicas(3, {}), { maxPartitions: 4 }, { partitions: 2, vcpus: 2, memoryMiB: 2048 });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.message).toBe('project quota: 4 of 4 partitions used');
    expect(session.nodes).toEqual(nodes(3));
  });
});

describe('withPlacement', () => {
  it('adds the request to a copy of the node', () => {
    const n = node({ allocated: { vcpus: 1, memoryMiB: 512, diskBytes: 1 }, groups: { 'p1/web': 1 } });
    const after = withPlacement(n, request({ vcpus: 2, memoryMiB: 1024, diskBytes: 10, group: { name: 'web', policy: 'anti-affinity', hard: true } }));
    expect(after.allocated).toEqual({ vcpus: 3, memoryMiB: 1536, diskBytes: 11 });
    expect(after.groups).toEqual({ 'p1/web': 2 });
    expect(n.allocated.vcpus).toBe(1);
    expect(n.groups).toEqual({ 'p1/web': 1 });
  });
});

describe('place over 1,000 nodes', () => {
  it('runs each filter at most once per node and scores only feasible nodes, once each (exhaustive search)', () => {
    const cluster = nodes(1000, (i) => ({
      state: i % 10 === 0 ? 'cordoned' : 'ready',
      allocated: i % 3 === 0 ? { memoryMiB: 32768 } : {},
      cpuFlags: i % 2 ? ['sse4_2', 'avx2'] : ['sse4_2', 'avx2', 'avx512f'],
      labels: { zone: i % 4 === 0 ? 'b' : 'a' },
    }));
    const filterSpies = FILTERS.map((f) => jest.spyOn(f, 'check'));
    const scorerSpies = SCORERS.map((s) => jest.spyOn(s, 'score'));
    try {
      const r = placed(place(cluster, request({ nodeSelector: { zone: 'a' }, cpuFeatures: ['avx2'] }), { config: { defaultStrategy: 'spread', maxCandidates: Infinity } }));
      const calls = (spy: jest.SpyInstance) => spy.mock.calls.map((c) => (c[0] as NodeCandidate).id);
      for (const spy of [...filterSpies, ...scorerSpies]) {
        const ids = calls(spy);
        expect(new Set(ids).size).toBe(ids.length);
      }
      expect(calls(filterSpies[0])).toHaveLength(1000);
      const feasible = r.explain.feasible;
      expect(feasible).toBe(cluster.filter((n, i) => n.state === 'ready' && i % 3 !== 0 && i % 4 !== 0).length);
      const scored = scorerSpies.filter((s) => s.mock.calls.length > 0);
      expect(scored.length).toBeGreaterThan(0);
      for (const spy of scored) expect(calls(spy)).toHaveLength(feasible);
      expect(r.explain.rejected.reduce((a, x) => a + x.count, 0) + feasible).toBe(1000);
    } finally {
      for (const spy of [...filterSpies, ...scorerSpies]) spy.mockRestore();
    }
  });
});

describe('defaultMaxCandidates', () => {
  it.each([
    [1, 'spread', 32],
    [32, 'spread', 32],
    [1000, 'spread', 32],
    [2 ** 40, 'spread', 40],
    [2 ** 40 + 1, 'spread', 41],
    [3, 'binpack', Infinity],
    [1000, 'binpack', Infinity],
  ] as const)('%d nodes, %s: %d', (n, strategy, expected) => {
    expect(defaultMaxCandidates(n, strategy)).toBe(expected);
  });
});

describe('place: bounded search', () => {
  const spread = (maxCandidates?: number): SchedulerConfig => ({ defaultStrategy: 'spread', maxCandidates });
  /** 1,000 nodes, each with a different allocation, so no two spread or binpack scores tie. */
  const distinct = nodes(1000, (i) => ({ capacity: { vcpus: 2048, memoryMiB: 1 << 20 }, allocated: { vcpus: (i * 7919) % 1000, memoryMiB: ((i * 7919) % 1000) * 1024 } }));
  /** The first `k` nodes of the request's shuffled order that `feasible` accepts. */
  const firstFeasible = (cluster: NodeCandidate[], req: PlacementRequest, k: number, feasible: (n: NodeCandidate) => boolean) =>
    shuffle(sortById(cluster), seedFrom(req.requestId)).filter(feasible).slice(0, k);

  it.each([
    ['spread, bound 1', 'spread', 1],
    ['spread, bound 10', 'spread', 10],
    ['spread, default bound', 'spread', undefined],
    ['binpack, bound 10', 'binpack', 10],
  ] as const)('%s: picks the best of the first feasible nodes of the shuffled order', (_name, strategy, bound) => {
    const k = bound ?? 32;
    for (let i = 0; i < 20; i++) {
      const req = request({ requestId: `bounded-${i}`, strategy });
      const r = placed(place(distinct, req, { config: { defaultStrategy: 'spread', maxCandidates: bound } }));
      const seen = firstFeasible(distinct, req, k, () => true);
      const best = placed(place(seen, req, { config: spread(Infinity) }));
      expect(r.node.id).toBe(best.node.id);
      expect(r.explain).toMatchObject({ candidates: k, feasible: k, maxCandidates: k, rejected: [] });
    }
  });

  it('counts only feasible nodes toward the bound, and reports the rejections it saw', () => {
    const cluster = nodes(1000, (i) => ({ state: i % 4 === 0 ? 'ready' : 'cordoned' }));
    const req = request({ requestId: 'skips-cordoned' });
    const r = placed(place(cluster, req, { config: spread(5) }));
    const walked = shuffle(sortById(cluster), seedFrom(req.requestId));
    const fifth = walked.findIndex((_, j) => walked.slice(0, j + 1).filter((n) => n.state === 'ready').length === 5);
    expect(r.explain.feasible).toBe(5);
    expect(r.explain.candidates).toBe(fifth + 1);
    expect(r.explain.rejected).toEqual([{ reason: 'cordoned', count: fifth + 1 - 5, message: 'cordoned' }]);
  });

  it.each([
    ['no node fits', () => nodes(1000, (i) => ({ state: i % 2 ? 'cordoned' : 'ready', allocated: { memoryMiB: 32768 } })), 'no node fits: 500 nodes: cordoned; 500 nodes: not enough memory'],
    ['one node fits', () => nodes(1000, (i) => ({ allocated: { memoryMiB: i === 613 ? 0 : 32768 } })), null],
  ] as const)('%s: a search that finds fewer feasible nodes than its bound has looked at every node', (_name, make, message) => {
    const cluster = make();
    const check = jest.spyOn(FILTERS[1], 'check');
    try {
      const r = place(cluster, request({ requestId: 'scarce' }), { config: spread(32) });
      expect(check).toHaveBeenCalledTimes(1000);
      if (message === null) {
        expect(placed(r).node.id).toBe('n0614');
        expect(placed(r).explain).toMatchObject({ candidates: 1000, feasible: 1 });
        expect(placed(r).explain.rejected).toEqual([{ reason: 'memory', count: 999, message: 'not enough memory' }]);
      } else {
        expect(rejected(r).message).toBe(message);
        expect(rejected(r)).toEqual(rejected(place(cluster, request({ requestId: 'scarce' }), { config: spread(Infinity) })));
      }
    } finally {
      check.mockRestore();
    }
  });

  it.each([
    ['a bound of at least the cluster size', { requestId: 'x' }, spread(1000)],
    ['binpack by default', { requestId: 'x', strategy: 'binpack' }, spread()],
    ['soft anti-affinity', { requestId: 'x', group: { name: 'web', policy: 'anti-affinity', hard: false } }, spread(3)],
    ['soft affinity', { requestId: 'x', group: { name: 'web', policy: 'affinity', hard: false } }, spread(3)],
  ] as const)('searches every node for %s', (_name, o, config) => {
    const cluster = distinct.map((n, i) => (i % 100 === 0 ? { ...n, groups: { 'p1/web': 1 } } : n));
    for (let i = 0; i < 10; i++) {
      const req = request({ ...o, requestId: `every-${i}` } as Partial<PlacementRequest>);
      const r = placed(place(cluster, req, { config }));
      expect(r.explain.candidates).toBe(1000);
      expect(r.node.id).toBe(placed(place(cluster, req, { config: { ...config, maxCandidates: Infinity } })).node.id);
    }
  });

  it('answers the same whatever order the nodes come in, and breaks ties by the shuffled order', () => {
    const equal = nodes(200);
    for (let i = 0; i < 20; i++) {
      const req = request({ requestId: `tie-${i}` });
      const a = placed(place(equal, req, { config: spread(8) }));
      expect(placed(place(equal.slice().reverse(), req, { config: spread(8) })).node.id).toBe(a.node.id);
      expect(a.node.id).toBe(shuffle(sortById(equal), seedFrom(req.requestId))[0]!.id);
    }
  });

  it('never overcommits a node in a session, and still spreads evenly', () => {
    const cluster = nodes(100, () => ({ capacity: { vcpus: 4, memoryMiB: 4096 } }));
    const session = new PlacementSession(cluster, { config: spread(4) });
    const r = session.placeAll(replicas(400, { vcpus: 1, memoryMiB: 1024 }).map((q, i) => ({ ...q, requestId: `fill-${i}` })));
    if (!r.ok) throw new Error(r.message);
    expect(session.nodes.every((n) => n.allocated.vcpus === 4)).toBe(true);
    const more = session.placeAll([request({ requestId: 'one-more', vcpus: 1, memoryMiB: 1024 })]);
    expect(more.ok).toBe(false);
    if (!more.ok) expect(more.message).toBe('no node fits: 100 nodes: not enough vcpus');
  });

  it('takes a bound below 1 as 1, so a refusal still names every node', () => {
    expect(placed(place(distinct, request({ requestId: 'zero' }), { config: spread(0) })).explain).toMatchObject({ feasible: 1, maxCandidates: 1 });
    expect(rejected(place(nodes(5, () => ({ state: 'cordoned' })), request(), { config: spread(0) })).message).toBe('no node fits: 5 nodes: cordoned');
  });

  it('does not change a pinned placement', () => {
    const r = placed(place(distinct, request({ node: 'n0500' }), { config: spread(1) }));
    expect(r.node.id).toBe('n0500');
    expect(r.explain.candidates).toBe(1);
  });
});
