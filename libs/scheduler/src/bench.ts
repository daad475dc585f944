/**
 * Placement benchmark (prints, asserts nothing): ms per `place` over 1,000 and 10,000 nodes of
 * four CPU models with ~100 flags each, some cordoned or full. Each line is the median of five
 * batches, as wall time and as this process's CPU time (the latter is steadier on a busy host).
 * Run after a build:
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

/** Nodes as rows loaded from the database would be: fresh arrays and strings for each node. */
function cluster(count: number, withBaselineKey: boolean): NodeCandidate[] {
  return nodes(count, (i) => {
    const flags: string[] = JSON.parse(JSON.stringify(models[i % models.length]));
    return {
      cpuFlags: flags,
      cpuBaseline: withBaselineKey ? cpuBaselineKey(flags) : undefined,
      images: [...images, 'debian'],
      state: i % 50 === 0 ? 'cordoned' : 'ready',
      allocated: i % 7 === 0 ? { memoryMiB: 32768 } : { vcpus: i % 16, memoryMiB: (i % 16) * 1024 },
      labels: { zone: `z${i % 3}`, rack: `r${i % 40}` },
    };
  });
}

function measure(label: string, count: number, runs: number, perRun: number, fn: (i: number) => unknown): void {
  for (let i = 0; i < Math.min(runs, 50); i++) fn(-i - 1);
  const wall: number[] = [];
  const cpu: number[] = [];
  for (let b = 0; b < 5; b++) {
    const c = process.cpuUsage();
    const start = performance.now();
    for (let i = 0; i < runs; i++) fn(b * runs + i);
    wall.push((performance.now() - start) / runs / perRun);
    const used = process.cpuUsage(c);
    cpu.push((used.user + used.system) / 1000 / runs / perRun);
  }
  const median = (xs: number[]) => xs.sort((a, b) => a - b)[2].toFixed(3);
  console.log(`${label.padEnd(48)} ${String(count).padStart(6)} nodes: ${median(wall)} ms wall, ${median(cpu)} ms cpu per placement`);
}

for (const count of [1_000, 10_000]) {
  const plain = cluster(count, false);
  const keyed = cluster(count, true);
  const runs = count >= 10_000 ? 40 : 400;
  measure('place', count, runs, 1, (i) => place(plain, request({ requestId: `bench-${i}` })));
  measure('place, nodes carry cpuBaseline', count, runs, 1, (i) => place(keyed, request({ requestId: `bench-${i}` })));
  measure('place, selector + cpu features + soft group', count, runs, 1, (i) =>
    place(plain, request({
      requestId: `bench-${i}`,
      nodeSelector: { zone: 'z1' },
      cpuFeatures: ['avx512f'],
      group: { name: 'web', policy: 'anti-affinity', hard: false },
      strategy: 'binpack',
    })));
  measure('placeMany, 10 replicas with hard anti-affinity', count, Math.max(4, runs / 10), 10, (i) =>
    placeMany(plain, Array.from({ length: 10 }, (_, k) =>
      request({ requestId: `bench-${i}-${k}`, group: { name: 'db', policy: 'anti-affinity', hard: true } }))));
}
