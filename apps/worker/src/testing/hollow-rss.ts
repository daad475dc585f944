/**
 * Measures a worker process running N hollow nodes (simulated driver) against a fake control
 * plane in this process: time until all registered and their partitions run, and the worker's
 * RSS. Usage (after `npx tsc -b apps/worker`):
 *   node apps/worker/dist/testing/hollow-rss.js [N=1000] [partitionsPerNode=2]
 * The last line of output is one JSON object with the figures.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FakeControlPlane } from './fake-control-plane';

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Math.round(Number(m[1]) / 1024) : 0;
}

function partitionId(node: number, index: number): string {
  const hex = (node * 100 + index).toString(16).padStart(12, '0');
  return `01900000-0000-7000-8000-${hex}`;
}

async function main(): Promise<void> {
  const nodes = Number(process.argv[2] ?? 1000);
  const perNode = Number(process.argv[3] ?? 2);
  const dataDir = await mkdtemp(join(tmpdir(), 'hp-hollow-'));
  const cp = await FakeControlPlane.start(0, {
    record: false,
    heartbeatIntervalMs: 3_000,
    desired: (name) => {
      const i = Number(name.slice(name.lastIndexOf('-') + 1));
      return Array.from({ length: perNode }, (_, k) => ({
        id: partitionId(i, k),
        name: `p${i}-${k}`,
        projectId: 'bench',
        vcpus: 1,
        memoryMib: 128,
        diskGib: 1,
        image: 'sample',
        desired: 'running',
        generation: 1,
      }));
    },
  });
  const started = Date.now();
  const worker = spawn(process.execPath, [join(__dirname, '..', 'main.js'), '--node', 'hollow', '--address', '127.0.0.50', '--driver', 'simulated', '--count', String(nodes), '--sim-start-ms', '50', '--data-dir', dataDir, '--control-plane', cp.target], {
    env: { ...process.env, HYPERPLANE_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  try {
    await cp.waitUntil(() => ((cp.counts.get('register') ?? 0) >= nodes ? true : undefined), 120_000, `${nodes} registrations`);
    const registeredMs = Date.now() - started;
    // Every partition reports starting then running: 2 statuses each.
    await cp.waitUntil(() => ((cp.counts.get('status') ?? 0) >= nodes * perNode * 2 ? true : undefined), 120_000, 'all partitions running');
    const runningMs = Date.now() - started;
    const samples: number[] = [];
    for (let i = 0; i < 10; i++) {
      samples.push(rssMiB(worker.pid!));
      await new Promise((r) => setTimeout(r, 1_000));
    }
    const heartbeats = cp.counts.get('heartbeat') ?? 0;
    const result = { nodes, partitions: nodes * perNode, registeredMs, runningMs, rssMiB: Math.max(...samples), rssMiBSamples: samples, heartbeatsSeen: heartbeats };
    console.log(`${nodes} hollow nodes registered in ${registeredMs} ms; ${nodes * perNode} partitions running after ${runningMs} ms; worker RSS max ${result.rssMiB} MiB over 10 s`);
    console.log(JSON.stringify(result));
  } finally {
    worker.kill('SIGTERM');
    await new Promise((r) => worker.once('exit', r));
    await cp.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
