/**
 * `npm run bench:chain`: a real control plane, two real workers and one guest (TCG, 128 MiB).
 * 1. Throughput: the guest's boot disk (vda, a qcow2 overlay of the `sample` image attached
 *    directly) against the same image served through a 3-link chain attached as vdb: base
 *    (image `sample`) -> overlay (copy-on-write) -> throttle (limits far above what the guest
 *    does), all on the guest's node (unix sockets). Sequential 1 MiB writes and reads and 4 KiB
 *    random reads and writes (O_DIRECT, QD1, runs of 16 at random offsets), interleaved vda/vdb,
 *    ROUNDS rounds, medians; timed by the guest.
 * 2. Failover: a chain whose base has two replicas on the two nodes; the guest writes 64 KiB
 *    blocks in a loop, each stamped with its uptime, while the replica it reads from is SIGKILLed;
 *    the longest gap between two completed writes is the stall. TRIALS kills, each after the
 *    chain was repaired again.
 * Prints the figures; the last line is JSON {"throughputRatio", "failoverStallMs", ...}.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { ROOT, cleanUpOnInterrupt, projectHeaders, sleep, startControlPlane, stopAll, withBenchDatabase } from './bench-lib';
import { GuestConsole, median, timed, writeLoop } from './chain-guest';

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const TRIALS = Number(process.env.BENCH_TRIALS ?? 3);
const GUEST = resolve(process.env.HYPERPLANE_GUEST_DIR ?? join(ROOT, '.hyperplane/guest'));
const MiB = 1024 * 1024;

async function main(): Promise<void> {
  if (!existsSync(join(GUEST, 'sample.qcow2'))) throw new Error(`no sample guest in ${GUEST}: run npm run guest:build`);
  await withBenchDatabase('hp_bench_chain', run);
}

async function run(database: { url: string; name: string }): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'hp-bench-chain-'));
  const children: ChildProcess[] = [];
  let console: GuestConsole | undefined;
  /** Stops what this run started and removes its files: when it ends, and when it is interrupted. */
  const cleanUp = cleanUpOnInterrupt(async () => {
    console?.close();
    await stopAll(children);
    for (const pid of processesUnder(dir)) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    rmSync(dir, { recursive: true, force: true });
  });
  try {
    const cp = await startControlPlane(database, join(dir, 'cp'), { HYPERPLANE_GUEST_DIR: GUEST, HYPERPLANE_NODE_TIMEOUT_MS: '8000' });
    children.push(cp.proc);
    const nodes = [{ name: 'bench-a', address: '127.0.0.61' }, { name: 'bench-b', address: '127.0.0.62' }];
    for (const n of nodes) {
      children.push(spawn(process.execPath, [join(ROOT, 'apps/worker/dist/main.js'), '--node', n.name, '--address', n.address, '--control-plane', cp.grpcAddress, '--data-dir', join(dir, n.name), '--driver', 'qemu'], { env: { ...cp.env, HYPERPLANE_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'ignore', 'inherit'] }));
    }
    const h = cp.adminHeaders();
    for (let i = 0; i < 150; i++) {
      const ready = (await (await fetch(`${cp.base}/v1/nodes?state=ready`, { headers: h })).json()) as { items: unknown[] };
      if (ready.items.length === nodes.length) break;
      await sleep(200);
    }
    const th = (await projectHeaders(cp, 'operator')).headers;
    const call = async (method: string, path: string, body?: unknown) => {
      const r = await fetch(`${cp.base}${path}`, { method, headers: th, body: body === undefined ? undefined : JSON.stringify(body) });
      return (await r.json()) as any;
    };
    const op = async (r: any) => {
      if (!r.operation) throw new Error(`request failed: ${JSON.stringify(r)}`);
      for (;;) {
        const o = await call('GET', `/v1/operations/${r.operation.id}/wait?timeoutSeconds=60`);
        if (o.status === 'succeeded') return r;
        if (o.status === 'failed' || o.status === 'cancelled') throw new Error(`${o.kind} ${o.status}: ${JSON.stringify(o.error)}`);
      }
    };

    // The guest, on bench-a.
    const vm = (await op(await call('POST', '/v1/partitions', { name: 'bench-vm', vcpus: 1, memoryMiB: 128, image: 'sample', placement: { node: 'bench-a' } }))).partition.id as string;
    console = await GuestConsole.open(join(dir, 'bench-a', 'partitions', vm, 'console.sock'));
    await console.waitFor('HYPERPLANE-GUEST-READY');
    await sleep(1000);

    // 1. Throughput: vda (the image, directly) against vdb (the same image through base -> overlay -> throttle).
    const c3 = (await op(await call('POST', '/v1/service-chains', {
      name: 'three-links',
      links: [
        { name: 'base', kind: 'base', image: 'sample', nodes: ['bench-a'] },
        { name: 'cow', kind: 'overlay', nodes: ['bench-a'] },
        { name: 'qos', kind: 'throttle', throttle: { iopsTotal: 1_000_000, bpsTotal: 10 * 1024 * MiB }, nodes: ['bench-a'] },
      ],
    }))).serviceChain.id as string;
    const att3 = (await op(await call('POST', `/v1/partitions/${vm}/attachments`, { chainId: c3 }))).attachment.id as string;
    await waitDisk(console, 'vdb');
    await console.run('dd if=/dev/urandom of=/tmp/rnd bs=1M count=16 2>/dev/null; echo "RND-$((40+2))"', /RND-42/);
    const figures: Record<string, { direct: number[]; chain: number[] }> = {};
    for (const k of ['seqWrite', 'seqRead', 'randRead', 'randWrite', 'seqWriteDirect', 'seqReadDirect']) figures[k] = { direct: [], chain: [] };
    const SEQ_MIB = 48; // a pass over 48 MiB of the 64 MiB disk, PASSES times
    const PASSES = 4;
    const RUNS = 48;
    const passes = (cmd: string) => `p=0; while [ $p -lt ${PASSES} ]; do ${cmd}; p=$((p+1)); done`;
    for (let round = 0; round < ROUNDS; round++) {
      for (const [disk, side] of [['vda', 'direct'], ['vdb', 'chain']] as const) {
        // Past the first 8 MiB of the disk: the boot sector and syslinux stay as they are.
        // Sequential as guests usually do it: through the page cache (the kernel writes back and
        // reads ahead with several requests in flight), written data flushed, caches dropped first.
        const mib = SEQ_MIB * PASSES;
        figures.seqWrite![side].push(mib / (await timed(console, passes(`dd if=/dev/zero of=/dev/${disk} bs=1M count=${SEQ_MIB} seek=8 conv=fsync 2>/dev/null`), 'SW')));
        figures.seqRead![side].push(mib / (await timed(console, passes(`echo 3 >/proc/sys/vm/drop_caches; dd if=/dev/${disk} of=/dev/null bs=1M count=${SEQ_MIB} skip=8 2>/dev/null`), 'SR')));
        // The same with O_DIRECT: one 1 MiB request at a time, every hop's latency in full.
        figures.seqWriteDirect![side].push(mib / (await timed(console, passes(`dd if=/dev/zero of=/dev/${disk} bs=1M count=${SEQ_MIB} seek=8 oflag=direct 2>/dev/null`), 'DW')));
        figures.seqReadDirect![side].push(mib / (await timed(console, passes(`dd if=/dev/${disk} of=/dev/null bs=1M count=${SEQ_MIB} skip=8 iflag=direct 2>/dev/null`), 'DR')));
        const ops = RUNS * 16;
        figures.randRead![side].push(ops / (await timed(console, `i=0; while [ $i -lt ${RUNS} ]; do dd if=/dev/${disk} of=/dev/null bs=4k count=16 skip=$((2048 + RANDOM % 12000)) iflag=direct 2>/dev/null; i=$((i+1)); done`, 'RR')));
        figures.randWrite![side].push(ops / (await timed(console, `i=0; while [ $i -lt ${RUNS} ]; do dd if=/tmp/rnd of=/dev/${disk} bs=4k count=16 seek=$((2048 + RANDOM % 12000)) oflag=direct 2>/dev/null; i=$((i+1)); done`, 'RW')));
      }
    }
    const ratios: Record<string, number> = {};
    process.stdout.write(`throughput, guest-visible (median of ${ROUNDS} rounds; TCG guest, shared 2-core machine):\n`);
    for (const [k, v] of Object.entries(figures)) {
      const d = median(v.direct);
      const c = median(v.chain);
      ratios[k] = c / d;
      const unit = k.startsWith('seq') ? (k.endsWith('Direct') ? 'MiB/s (O_DIRECT, QD1)' : 'MiB/s') : 'IOPS (4 KiB, O_DIRECT, QD1)';
      process.stdout.write(`  ${k.padEnd(9)} direct ${d.toFixed(1)} ${unit}, 3-link chain ${c.toFixed(1)} ${unit}, ratio ${(c / d).toFixed(2)}\n`);
    }
    const headline = ['seqWrite', 'seqRead', 'randRead', 'randWrite'].map((k) => ratios[k]!);
    const throughputRatio = Math.exp(headline.reduce((a, r) => a + Math.log(r), 0) / headline.length);
    process.stdout.write(`  throughputRatio = geometric mean of seqWrite, seqRead, randRead, randWrite: ${throughputRatio.toFixed(2)}\n`);
    await op(await call('DELETE', `/v1/partitions/${vm}/attachments/${att3}`));

    // 2. Failover: base with a replica on each node; kill the one reads go to, wait for the repair, again.
    const ha = (await op(await call('POST', '/v1/service-chains', {
      name: 'replicated',
      links: [{ name: 'base', kind: 'base', sizeBytes: 64 * MiB, replicas: 2, nodes: ['bench-a', 'bench-b'] }, { name: 'qos', kind: 'throttle', throttle: { iopsTotal: 1_000_000 }, nodes: ['bench-a'] }],
    }))).serviceChain.id as string;
    await op(await call('POST', `/v1/partitions/${vm}/attachments`, { chainId: ha }));
    await waitDisk(console, 'vdb');
    await console.run(`yes HP-FAILOVER-PATTERN | head -c 4194304 > /tmp/pat; echo "PAT-$((40+2))"`, /PAT-42/);
    const stalls: number[] = [];
    let typical = 0;
    for (let t = 0; t < TRIALS; t++) {
      const chain = await call('GET', `/v1/service-chains/${ha}`);
      const victim = chain.links[0].replicaStatus.find((x: any) => x.state === 'healthy'); // the oldest healthy replica: the one reads go to
      const loop = writeLoop(console, 'vdb', 400);
      await loop.started;
      process.kill(providerPid(dir, victim.id), 'SIGKILL');
      const r = await loop.done;
      if (r.errors) throw new Error(`the guest saw ${r.errors} failed writes in trial ${t + 1}`);
      stalls.push(Math.max(...r.gaps) * 1000);
      typical = median(r.gaps) * 1000;
      const sums = await console.run(`dd if=/dev/vdb of=/tmp/back bs=64k count=64 iflag=direct 2>/dev/null; echo "S $(md5sum </tmp/pat | cut -c1-32) $(md5sum </tmp/back | cut -c1-32)-$((40+2))"`, /S (\w+) (\w+)-42/);
      if (sums[1] !== sums[2]) throw new Error(`the pattern read back differs after trial ${t + 1}`);
      process.stdout.write(`failover trial ${t + 1}: replica ${victim.id} SIGKILLed; longest gap between writes ${stalls[t]!.toFixed(0)} ms (median gap ${typical.toFixed(0)} ms), 0 errors, pattern intact\n`);
      if (t < TRIALS - 1) {
        for (let i = 0; i < 600; i++) {
          const c = await call('GET', `/v1/service-chains/${ha}`);
          if (c.state === 'ready' && c.links[0].replicaStatus.every((x: any) => x.id !== victim.id)) break;
          await sleep(200);
        }
      }
    }
    const failoverStallMs = Math.round(Math.max(...stalls));
    process.stdout.write(`failover: longest guest-visible stall over ${TRIALS} kills ${failoverStallMs} ms (guest clock, 10 ms resolution)\n`);
    process.stdout.write(`${JSON.stringify({ throughputRatio: round2(throughputRatio), failoverStallMs, seqWriteRatio: round2(ratios.seqWrite!), seqReadRatio: round2(ratios.seqRead!), randReadRatio: round2(ratios.randRead!), randWriteRatio: round2(ratios.randWrite!), seqWriteDirectRatio: round2(ratios.seqWriteDirect!), seqReadDirectRatio: round2(ratios.seqReadDirect!), medianWriteGapMs: Math.round(typical) })}\n`);
  } finally {
    await cleanUp();
  }
}

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

async function waitDisk(c: GuestConsole, disk: string): Promise<void> {
  for (let i = 0; i < 50; i++) {
    const m = await c.run(`ls /sys/block | tr '\\n' ' '; echo ":LS-$((40+2))"`, /([a-z0-9 ]*):LS-42/);
    if (m[1]!.split(' ').includes(disk)) return;
    await sleep(300);
  }
  throw new Error(`the guest never saw ${disk}`);
}

/** Pids of processes whose command line names `dir`. */
function processesUnder(dir: string, needle = ''): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8');
      if (cmd.includes(dir) && cmd.includes(needle) && (cmd.includes('qemu-system') || cmd.includes('qemu-storage-daemon'))) out.push(Number(e));
    } catch {
      continue;
    }
  }
  return out;
}

function providerPid(dir: string, replicaId: string): number {
  const [pid] = processesUnder(dir, `${replicaId}/provider.qmp`);
  if (!pid) throw new Error(`no provider process for replica ${replicaId}`);
  return pid;
}

main().catch((error: unknown) => {
  process.stderr.write(`bench:chain failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
