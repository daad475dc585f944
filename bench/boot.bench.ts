/**
 * `npm run bench:boot`: time from an API create to the guest's ready marker, against a bare
 * `qemu-system-x86_64` start of the same guest (same image, overlay, machine and serial setup) to
 * the same marker, interleaved, 10 pairs. Both are timed the same way: watching the serial log
 * file for the marker. Then 5 guests run at once and the worker agent's RSS is read (QEMU not
 * counted). Prints medians and the ratio; the last line is JSON.
 */
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { ROOT, cleanUpOnInterrupt, projectHeaders, rssMiB, sleep, startControlPlane, stopAll, withBenchDatabase } from './bench-lib';

const PAIRS = Number(process.env.BENCH_PAIRS ?? 10);
const GUEST = resolve(process.env.HYPERPLANE_GUEST_DIR ?? join(ROOT, '.hyperplane/guest'));
const MARKER = 'HYPERPLANE-GUEST-READY';

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** Polls a file every 10 ms until it contains the marker; returns the time it was seen. */
async function waitMarker(file: string, timeoutMs = 120_000): Promise<number> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (existsSync(file) && readFileSync(file, 'latin1').includes(MARKER)) return performance.now();
    await sleep(10);
  }
  throw new Error(`no ready marker in ${file}`);
}

async function main(): Promise<void> {
  if (!existsSync(join(GUEST, 'sample.qcow2'))) throw new Error(`no sample guest in ${GUEST}: run npm run guest:build`);
  await withBenchDatabase('hp_bench_boot', run);
}

async function run(database: { url: string; name: string }): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'hp-bench-boot-'));
  const children: ChildProcess[] = [];
  let bare: ChildProcess | undefined;
  /** Stops what this run started and removes its files: when it ends, and when it is interrupted. */
  const cleanUp = cleanUpOnInterrupt(async () => {
    bare?.kill('SIGKILL');
    await stopAll(children);
    // Guests outlive their worker by design: stop any this run left.
    try {
      execFileSync('bash', ['-c', `for f in ${dir}/worker/partitions/*/qemu.pid; do [ -f "$f" ] && kill -9 $(cat "$f") 2>/dev/null; done; true`]);
    } catch {
      /* none */
    }
    rmSync(dir, { recursive: true, force: true });
  });
  try {
    const cp = await startControlPlane(database, join(dir, 'cp'), { HYPERPLANE_GUEST_DIR: GUEST });
    children.push(cp.proc);
    const base = cp.base;
    const env = cp.env;
    const workerDir = join(dir, 'worker');
    const worker = spawn(process.execPath, [join(ROOT, 'apps/worker/dist/main.js'), '--node', 'bench-boot', '--address', '127.0.0.1', '--control-plane', cp.grpcAddress, '--data-dir', workerDir, '--driver', 'qemu'], { env, stdio: ['ignore', 'ignore', 'inherit'] });
    children.push(worker);
    const h = cp.adminHeaders();
    for (let i = 0; i < 150; i++) {
      const nodes = (await (await fetch(`${base}/v1/nodes?state=ready`, { headers: h })).json()) as { items: unknown[] };
      if (nodes.items.length) break;
      await sleep(200);
    }
    const th = (await projectHeaders(cp, 'operator')).headers;
    const wait = async (op: string) => (await (await fetch(`${base}/v1/operations/${op}/wait?timeoutSeconds=120`, { headers: th })).json()) as { status: string };

    const api: number[] = [];
    const bareMs: number[] = [];
    for (let i = 0; i < PAIRS; i++) {
      // Through the API.
      const t0 = performance.now();
      const created = (await (await fetch(`${base}/v1/partitions`, { method: 'POST', headers: th, body: JSON.stringify({ name: `boot-${i}`, vcpus: 1, memoryMiB: 128, image: 'sample' }) })).json()) as { partition: { id: string }; operation: { id: string } };
      if (!created.partition) throw new Error(`create failed: ${JSON.stringify(created)}`);
      const t1 = await waitMarker(join(workerDir, 'partitions', created.partition.id, 'console.log'));
      api.push(t1 - t0);
      const createOp = await wait(created.operation.id);
      const del = (await (await fetch(`${base}/v1/partitions/${created.partition.id}`, { method: 'DELETE', headers: th })).json()) as { operation: { id: string } };
      if (!del.operation) throw new Error(`delete failed: ${JSON.stringify(del)} after create ${JSON.stringify(createOp)}`);
      await wait(del.operation.id);

      // Bare QEMU: the same overlay over the same image, the same machine and serial setup.
      const bdir = join(dir, `bare-${i}`);
      mkdirSync(bdir);
      const b0 = performance.now();
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', join(GUEST, 'sample.qcow2'), join(bdir, 'disk.qcow2')]);
      bare = spawn('qemu-system-x86_64', [
        '-no-user-config', '-nodefaults', '-M', 'pc', '-accel', 'tcg', '-m', '128', '-smp', '1', '-display', 'none', '-vga', 'none',
        '-chardev', `socket,id=ser0,path=${join(bdir, 'console.sock')},server=on,wait=off,logfile=${join(bdir, 'console.log')}`, '-serial', 'chardev:ser0',
        '-drive', `file=${join(bdir, 'disk.qcow2')},format=qcow2,if=virtio`,
      ], { stdio: 'ignore' });
      const b1 = await waitMarker(join(bdir, 'console.log'));
      bareMs.push(b1 - b0);
      bare.kill('SIGKILL');
      await new Promise((r) => bare!.once('exit', r));
      bare = undefined;
      rmSync(bdir, { recursive: true, force: true });
      console.log(`pair ${i + 1}: api ${api[i]!.toFixed(0)} ms, bare ${bareMs[i]!.toFixed(0)} ms`);
    }

    // Worker RSS with 5 guests running.
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const r = (await (await fetch(`${base}/v1/partitions`, { method: 'POST', headers: th, body: JSON.stringify({ name: `rss-${i}`, vcpus: 1, memoryMiB: 128, image: 'sample' }) })).json()) as { partition: { id: string }; operation: { id: string } };
      ids.push(r.partition.id);
      await wait(r.operation.id);
    }
    await Promise.all(ids.map((id) => waitMarker(join(workerDir, 'partitions', id, 'console.log'))));
    await sleep(3000);
    const workerRss = rssMiB(worker.pid!);
    for (const id of ids) {
      const del = (await (await fetch(`${base}/v1/partitions/${id}`, { method: 'DELETE', headers: th })).json()) as { operation: { id: string } };
      await wait(del.operation.id);
    }

    const apiMedian = median(api);
    const bareMedian = median(bareMs);
    const ratio = apiMedian / bareMedian;
    console.log(`API create -> ready marker: median ${apiMedian.toFixed(0)} ms over ${PAIRS}`);
    console.log(`bare qemu-system-x86_64 -> ready marker: median ${bareMedian.toFixed(0)} ms over ${PAIRS}`);
    console.log(`ratio: ${ratio.toFixed(3)} (goal <= 1.10)`);
    console.log(`worker agent RSS with 5 running guests: ${workerRss} MiB (goal <= 80; QEMU not counted)`);
    console.log(JSON.stringify({ apiMedianMs: Math.round(apiMedian), bareMedianMs: Math.round(bareMedian), ratio: Number(ratio.toFixed(3)), workerRssMiB: workerRss }));
  } finally {
    await cleanUp();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
