/**
 * Placement benchmark (prints, asserts nothing): ms per `place` over 1,000 and 10,000 nodes of
 * four CPU models with ~100 flags each, some cordoned or full. Run after a build:
 *   npx tsc -b libs/scheduler && node libs/scheduler/dist/bench.js
 */
import { performance } from 'node:perf_hooks';
import { cpuBaselineKey } from './cpu-baselines';
import { place, placeMany } from './stack';
import { nodes, request } from './testing/fixtures';
import type { NodeCandidate } from './types';

const base = Array.from({ length: 96 }, (_, i) => `flag${i}`);
const models = [base, [...base, 'avx512f'], [...base, 'avx512f', 'amx'], base.slice(0, 90)];
const images = Array.from({ length: 20 }, (_, i) => `image-${i}`);

function cluster(count: number): NodeCandidate[] {
  return nodes(count, (i) => ({
    // Fresh arrays per node, as rows loaded from the database would be.
    cpuFlags: [...models[i % models.length]],
    images: [...images, 'debian'],
    state: i % 50 === 0 ? 'cordoned' : 'ready',
    allocated: i % 7 === 0 ? { memoryMiB: 32768 } : { vcpus: i % 16, memoryMiB: (i % 16) * 1024 },
    labels: { zone: `z${i % 3}`, rack: `r${i % 40}` },
  }));
}

function measure(label: string, count: number, runs: number, fn: (i: number) => unknown): void {
  for (let i = 0; i < Math.min(runs, 50); i++) fn(-i - 1);
  const start = performance.now();
  for (let i = 0; i < runs; i++) fn(i);
  const ms = (performance.now() - start) / runs;
  console.log(`${label.padEnd(44)} ${String(count).padStart(6)} nodes: ${ms.toFixed(3)} ms per placement`);
}

for (const count of [1_000, 10_000]) {
  const all = cluster(count);
  const keyed = all.map((n) => ({ ...n, cpuFlags: [...n.cpuFlags], cpuBaseline: cpuBaselineKey(n.cpuFlags) }));
  const runs = count >= 10_000 ? 100 : 1_000;
  measure('place (plain request)', count, runs, (i) => place(all, request({ requestId: `bench-${i}` })));
  measure('place (plain, nodes carry cpuBaseline)', count, runs, (i) => place(keyed, request({ requestId: `bench-${i}` })));
  measure('place (selector, cpu features, soft group)', count, runs, (i) =>
    place(all, request({
      requestId: `bench-${i}`,
      nodeSelector: { zone: 'z1' },
      cpuFeatures: ['avx512f'],
      group: { name: 'web', policy: 'anti-affinity', hard: false },
      strategy: 'binpack',
    })));
  measure('placeMany (10 replicas, hard anti-affinity)', count, Math.max(10, runs / 10), (i) => {
    const reqs = Array.from({ length: 10 }, (_, k) => request({ requestId: `bench-${i}-${k}`, group: { name: 'db', policy: 'anti-affinity', hard: true } }));
    return placeMany(all, reqs);
  });
}
