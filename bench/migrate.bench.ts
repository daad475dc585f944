/**
 * `npm run bench:migrate`: live migration and snapshots through the API against the same done by
 * a bare QMP script, interleaved in one run.
 *
 * Two guests of the sample image (256 MiB, TCG, the size PLATFORM-FACTS measured by hand) hold
 * 96 MiB of data in memory and dirty memory at a fixed rate (about 8 MiB/s: a shell loop in the
 * guest rewrites 1 MiB of an 8 MiB tmpfs file every 125 ms, alternating two random patterns, so
 * any moment of a ~100 ms migration meets the same rate):
 * - one is a partition, migrated through the API between two workers on this machine
 *   (`POST /v1/partitions/{id}/migrate`, shared storage, max downtime 300 ms), timed from the
 *   request to the operation's success (the guest runs on the destination then);
 * - one is a bare `qemu-system-x86_64` with the same command line and a disk of the same size, migrated by this script over
 *   QMP with the same limits: start the destination paused with `-incoming defer`,
 *   `migrate-incoming`, `migrate` on the source, wait for `completed`, `cont` on the destination,
 *   quit the source. Timed from starting the destination to `cont` answered.
 * Downtime is QEMU's own figure (`query-migrate` on the source) on both sides. 11 pairs
 * (BENCH_PAIRS), after one warm-up pair on each side that is not counted (the first migration of
 * a freshly booted guest and the first request of a fresh process are not what either measures).
 * Which side goes first alternates from pair to pair (in a fixed order the second side always
 * started on a machine the first had just left busy, or quiet, which moved the ratio by 0.1-0.2);
 * each side starts once the other's old source QEMU is gone. BENCH_SKIP_MIGRATION=1 runs only the
 * snapshot pairs, BENCH_SKIP_SNAPSHOTS=1 only the migrations. BENCH_VERBOSE=1 prints each step, and
 * the CPU the API side's processes used per migration.
 * Then snapshot save (memory + disk) and revert, API (`POST .../snapshots`, `.../revert`, to
 * the operation's success) against QMP `snapshot-save` / `snapshot-load` jobs, as many pairs.
 * Prints each figure and medians; the last line is JSON.
 */
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import { createConnection } from 'node:net';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { QmpClient } from '@hyperplane/qmp';
import { buildQemuArgs, RUNTIME_FILES } from '@hyperplane/worker/dist/drivers/qemu/qemu-args';
import { waitJob, watchEvent } from '@hyperplane/worker/dist/drivers/qemu/qemu-jobs';
import { ROOT, cleanUpOnInterrupt, freePort, logTo, projectHeaders, sleep, startControlPlane, stopAll, sum, ticksOf, ticksOfComm, withBenchDatabase } from './bench-lib';

const PAIRS = Number(process.env.BENCH_PAIRS ?? 11);
const GUEST = resolve(process.env.HYPERPLANE_GUEST_DIR ?? join(ROOT, '.hyperplane/guest'));
const MAX_DOWNTIME_MS = 300;
const MEMORY_MIB = 256;
/**
 * Typed on the guest's console: 96 MiB of random data kept in tmpfs (memory in use, as a real
 * guest has: not zero pages, which QEMU sends almost for free), then 1 MiB of an 8 MiB tmpfs file
 * rewritten every 125 ms, round the file, alternating two random patterns per round.
 */
const DIRTIER = `dd if=/dev/urandom of=/dev/shm/resident bs=1M count=96 2>/dev/null; dd if=/dev/urandom of=/run/pa bs=1M count=1 2>/dev/null; dd if=/dev/urandom of=/run/pb bs=1M count=1 2>/dev/null; (n=0; i=0; while :; do p=/run/pa; [ $((n%2)) = 0 ] && p=/run/pb; dd if=$p of=/dev/shm/dirty bs=1M seek=$i count=1 conv=notrunc 2>/dev/null; i=$(((i+1)%8)); [ $i = 0 ] && n=$((n+1)) && echo $n >/run/dirty.n; usleep 125000; done) &`;

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** Types a line on a serial console socket (the guest's shell). */
function typeOn(socket: string, text: string): Promise<void> {
  return new Promise((res, rej) => {
    const c = createConnection(socket, () => c.end(`\n${text}\n`, () => setTimeout(res, 300)));
    c.on('error', rej);
  });
}

/** A bare QEMU guest run by this script (the worker's command line, its own dir). */
interface Bare {
  dir: string;
  proc: ChildProcess;
  qmp: QmpClient;
}

async function bareStart(dir: string, disk: string, incoming: boolean): Promise<Bare> {
  mkdirSync(dir, { recursive: true });
  const args = buildQemuArgs({ id: '00000000-0000-4000-8000-000000000001', name: 'bare', dir, vcpus: 1, memoryMiB: MEMORY_MIB, accel: 'tcg', incoming }).map((a) => a.replace(join(dir, RUNTIME_FILES.disk), disk));
  const proc = spawn('qemu-system-x86_64', args, { stdio: 'ignore', cwd: dir, detached: true });
  let qmp: QmpClient | undefined;
  for (let i = 0; i < 200 && !qmp; i++) {
    qmp = await QmpClient.connect(join(dir, RUNTIME_FILES.qmp)).catch(() => undefined);
    if (!qmp) await sleep(10);
  }
  if (!qmp) throw new Error('bare QEMU did not answer on QMP');
  return { dir, proc, qmp };
}

/** Pids of the processes with a file under `dir` on their command line. */
function qemusUnder(dir: string): string[] {
  return readdirSync('/proc').filter((pid) => {
    try {
      return /^\d+$/.test(pid) && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir);
    } catch {
      return false; // gone meanwhile
    }
  });
}

async function bareQuit(b: Bare): Promise<void> {
  await b.qmp.quit().catch(() => undefined);
  if (b.proc.exitCode === null && b.proc.signalCode === null) await new Promise((r) => b.proc.once('exit', r));
}

async function main(): Promise<void> {
  if (!existsSync(join(GUEST, 'sample.qcow2'))) throw new Error(`no sample guest in ${GUEST}: run npm run guest:build`);
  await withBenchDatabase('hp_bench_migrate', run);
}

async function run(database: { url: string; name: string }): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'hp-bench-mig-'));
  const children: ChildProcess[] = [];
  const bares: Bare[] = [];
  /** Stops every process this run started: the bare QEMUs and the workers' guests run detached, so an interrupt does not reach them. */
  const cleanUp = cleanUpOnInterrupt(async () => {
    for (const b of bares) b.proc.kill('SIGKILL');
    await stopAll(children);
    try {
      execFileSync('bash', ['-c', `for f in ${dir}/*/partitions/*/qemu.pid; do [ -f "$f" ] && kill -9 $(cat "$f") 2>/dev/null; done; true`]);
    } catch {
      /* none */
    }
    rmSync(dir, { recursive: true, force: true });
  });
  try {
    const cp = await startControlPlane(database, join(dir, 'cp'), { HYPERPLANE_GUEST_DIR: GUEST });
    children.push(cp.proc);
    const nodes = [{ name: 'bench-a', address: '127.0.0.81' }, { name: 'bench-b', address: '127.0.0.82' }];
    const workers: ChildProcess[] = [];
    for (const n of nodes) {
      workers.push(spawn(process.execPath, [...(process.env.BENCH_WORKER_NODE_ARGS ?? '').split(' ').filter(Boolean), join(ROOT, 'apps/worker/dist/main.js'), '--node', n.name, '--address', n.address, '--control-plane', cp.grpcAddress, '--data-dir', join(dir, n.name), '--driver', 'qemu'], { env: cp.env, stdio: ['ignore', logTo(`worker-${n.name}`), 'inherit'] }));
    }
    children.push(...workers);
    /** CPU ticks used so far by the API side's processes (BENCH_VERBOSE: CPU per migration). */
    const apiCpu = () => ({ controlPlane: ticksOf(cp.proc.pid!), workers: sum(workers.map((w) => ticksOf(w.pid!))), postgres: ticksOfComm('postgres'), redis: ticksOfComm('redis-server') });
    const cpuUsed = { controlPlane: 0, workers: 0, postgres: 0, redis: 0 };
    const h = cp.adminHeaders();
    for (let i = 0; i < 150; i++) {
      const ready = ((await (await fetch(`${cp.base}/v1/nodes?state=ready`, { headers: h })).json()) as { items: unknown[] }).items.length;
      if (ready === 2) break;
      await sleep(200);
    }
    const th = (await projectHeaders(cp, 'operator')).headers;
    const call = async (method: string, path: string, body?: unknown) => (await (await fetch(cp.base + path, { method, headers: th, body: body === undefined ? undefined : JSON.stringify(body) })).json()) as any;
    const wait = async (op: string) => {
      const r = await call('GET', `/v1/operations/${op}/wait?timeoutSeconds=120`);
      if (r.status !== 'succeeded') throw new Error(`operation ${op}: ${JSON.stringify(r)}`);
      return r;
    };

    // The partition, dirtying memory.
    const created = await call('POST', '/v1/partitions', { name: 'mig', vcpus: 1, memoryMiB: MEMORY_MIB, image: 'sample', placement: { node: 'bench-a' } });
    await wait(created.operation.id);
    const id = created.partition.id;
    const consoleOf = (node: string) => join(dir, node, 'partitions', id, RUNTIME_FILES.console);
    for (let i = 0; i < 100 && !String((await call('GET', `/v1/partitions/${id}/console`)).data ?? '').includes('HYPERPLANE-GUEST-READY'); i++) await sleep(200);
    await typeOn(consoleOf('bench-a'), DIRTIER);
    await sleep(15_000); // the resident data written, the dirtier running

    // The bare guest: the same image and command line, its disk an overlay both bare QEMUs open
    // (shared storage), of the partition's disk size (a node makes the overlay that size: the
    // memory a snapshot saves lies in the image beyond it).
    const disk = join(dir, 'bare-disk.qcow2');
    const diskGiB = Number(created.partition.diskGiB);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', join(GUEST, 'sample.qcow2'), disk, ...(diskGiB > 0 ? [`${diskGiB}G`] : [])]);
    let src = await bareStart(join(dir, 'bare-0'), disk, false);
    bares.push(src);
    await src.qmp.resume();
    await sleep(6000); // boot
    await typeOn(join(src.dir, RUNTIME_FILES.console), DIRTIER);
    await sleep(10_000);
    const idle0 = apiCpu();
    await sleep(5_000);
    const idle1 = apiCpu();
    const idlePerSecond = Object.fromEntries(Object.entries(idle1).map(([k, v]) => [k, ((v - idle0[k as keyof typeof idle0]) * 10) / 5]));

    const breakdown: string[] = [];
    const apiTotal: number[] = [];
    const apiDown: number[] = [];
    const bareTotal: number[] = [];
    const bareDown: number[] = [];
    // i = -1: the warm-up pair, not counted.
    for (let i = -1; i < (process.env.BENCH_SKIP_MIGRATION ? -1 : PAIRS); i++) {
      const counted = i >= 0;
      let apiMs = 0, apiDownMs = NaN, bareMs = 0;
      let mt: Record<string, unknown> = {};
      let info: Awaited<ReturnType<QmpClient['queryMigrate']>> = {};
      const viaApi = async () => {
        // To the other node.
        const to = nodes[(i + 2) % 2]!.name;
        const cpu0 = apiCpu();
        const t0 = performance.now();
        const m = await call('POST', `/v1/partitions/${id}/migrate`, { targetNode: to, storage: 'shared', maxDowntimeMs: MAX_DOWNTIME_MS });
        if (!m.operation) throw new Error(`migrate: ${JSON.stringify(m)}`);
        const done = await wait(m.operation.id);
        apiMs = performance.now() - t0;
        const cpu1 = apiCpu();
        if (counted) for (const k of Object.keys(cpuUsed) as (keyof typeof cpuUsed)[]) cpuUsed[k] += cpu1[k] - cpu0[k];
        mt = done.migration ?? {};
        breakdown.push(`migrate${counted ? '' : ' (warm-up)'}: api ${apiMs.toFixed(0)} ms, queued ${Date.parse(done.startedAt) - Date.parse(done.createdAt)} ms, handler ${Date.parse(done.finishedAt) - Date.parse(done.startedAt)} ms (prepare ${mt.prepareMs}, source ${mt.sourceMs} [QEMU total ${mt.totalTimeMs}], finish ${mt.finishMs})`);
        apiDownMs = Number(mt.downtimeMs ?? NaN);
        // The source's paused QEMU quits 100 ms after the migration, and its worker reaps it: the
        // next migration waits for neither (the bare side waits for its quit too).
        const left = qemusUnder(join(dir, nodes[(i + 3) % 2]!.name, 'partitions', id));
        for (let k = 0; k < 500 && left.some((pid) => existsSync(`/proc/${pid}`)); k++) await sleep(10);
        await sleep(20); // the worker's own cleanup after the exit
      };
      const bare = async () => {
        // The same limits, over QMP.
        const b0 = performance.now();
        const port = await freePort();
        const dst = await bareStart(join(dir, `bare-${i + 2}`), disk, true);
        bares.push(dst);
        await dst.qmp.migrateSetCapabilities({ events: true, 'return-path': true });
        await dst.qmp.migrateIncoming(`tcp:127.0.0.1:${port}`);
        await src.qmp.migrateSetCapabilities({ events: true, 'return-path': true });
        await src.qmp.migrateSetParameters({ 'downtime-limit': MAX_DOWNTIME_MS, 'max-bandwidth': 2 ** 40 });
        const changes = watchEvent(src.qmp, 'MIGRATION');
        await src.qmp.migrate(`tcp:127.0.0.1:${port}`);
        info = await src.qmp.queryMigrate();
        while (info.status !== 'completed') {
          if (info.status === 'failed') throw new Error(`bare migration failed: ${info['error-desc']}`);
          await changes.next(200);
          info = await src.qmp.queryMigrate();
        }
        changes.close();
        for (let s = await dst.qmp.queryMigrate(); s.status !== 'completed'; s = await dst.qmp.queryMigrate()) await sleep(5);
        await dst.qmp.resume();
        bareMs = performance.now() - b0;
        await bareQuit(src);
        src = dst;
      };
      // Which side goes first alternates from pair to pair, and the second starts as soon as the
      // first's old source QEMU is gone (no pause: on these machines a migration that starts after a
      // second or more of quiet took 400-600 ms instead of 150-250, whichever side it was).
      for (const side of i % 2 === 0 ? [viaApi, bare] : [bare, viaApi]) await side();
      if (counted) {
        apiTotal.push(apiMs);
        apiDown.push(apiDownMs);
        bareTotal.push(bareMs);
        bareDown.push(Number(info.downtime ?? NaN));
      }
      console.log(`migration ${counted ? i + 1 : 'warm-up'}: api ${apiMs.toFixed(0)} ms (downtime ${apiDownMs} ms), bare QMP ${bareMs.toFixed(0)} ms (downtime ${info.downtime} ms)${process.env.BENCH_VERBOSE ? ` [QEMU total: api ${mt.totalTimeMs} ms, bare ${info['total-time']} ms]` : ''}`);
    }

    const apiSave: number[] = [];
    const apiRevert: number[] = [];
    const bareSave: number[] = [];
    const bareRevert: number[] = [];
    for (let i = -1; i < (process.env.BENCH_SKIP_SNAPSHOTS ? -1 : PAIRS); i++) {
      const counted = i >= 0; // i = -1: the warm-up pair, not counted
      const tag = counted ? String(i) : 'warm';
      let saveMs = 0, revertMs = 0, bareSaveMs = 0, bareRevertMs = 0;
      const viaApi = async () => {
        let t0 = performance.now();
        const s = await call('POST', `/v1/partitions/${id}/snapshots`, { name: `s${tag}` });
        if (!s.operation) throw new Error(`snapshot: ${JSON.stringify(s)}`);
        await wait(s.operation.id);
        saveMs = performance.now() - t0;
        await sleep(1000);
        t0 = performance.now();
        const r = await call('POST', `/v1/partitions/${id}/snapshots/${s.snapshot.id}/revert`);
        const rev = await wait(r.operation.id);
        revertMs = performance.now() - t0;
        breakdown.push(`revert${counted ? '' : ' (warm-up)'}: api ${revertMs.toFixed(0)} ms, queued ${Date.parse(rev.startedAt) - Date.parse(rev.createdAt)} ms, handler ${Date.parse(rev.finishedAt) - Date.parse(rev.startedAt)} ms`);
      };
      const bare = async () => {
        let t0 = performance.now();
        await src.qmp.snapshotSave(`save-${tag}`, `b${tag}`, 'disk0', ['disk0']);
        await waitJob(src.qmp, `save-${tag}`, 300_000, 20); // woken by the job's events, a 20 ms poll besides
        bareSaveMs = performance.now() - t0;
        await sleep(1000);
        t0 = performance.now();
        await src.qmp.snapshotLoad(`load-${tag}`, `b${tag}`, 'disk0', ['disk0']);
        await waitJob(src.qmp, `load-${tag}`, 300_000, 20);
        bareRevertMs = performance.now() - t0;
      };
      // Which side goes first alternates from pair to pair, so neither always follows the other's writes.
      for (const side of i % 2 === 0 ? [viaApi, bare] : [bare, viaApi]) {
        await side();
        await sleep(1000);
      }
      if (counted) {
        apiSave.push(saveMs);
        apiRevert.push(revertMs);
        bareSave.push(bareSaveMs);
        bareRevert.push(bareRevertMs);
      }
      console.log(`snapshot ${counted ? i + 1 : 'warm-up'}: save api ${saveMs.toFixed(0)} ms, bare ${bareSaveMs.toFixed(0)} ms; revert api ${revertMs.toFixed(0)} ms, bare ${bareRevertMs.toFixed(0)} ms`);
    }

    if (process.env.BENCH_VERBOSE) {
      console.log(breakdown.join('\n'));
      const n = Math.max(1, apiTotal.length);
      console.log(`CPU per API migration, request to success (ms, /proc ticks): ${Object.entries(cpuUsed).map(([k, v]) => `${k} ${((v * 10) / n).toFixed(1)}`).join(', ')}; while idle (ms per second): ${Object.entries(idlePerSecond).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ')}`);
    }
    const r = (a: number[], b: number[]) => Number((median(a) / median(b)).toFixed(3));
    const out = {
      migrateTotalRatio: r(apiTotal, bareTotal),
      downtimeRatio: r(apiDown, bareDown),
      snapshotSaveRatio: r(apiSave, bareSave),
      snapshotRevertRatio: r(apiRevert, bareRevert),
    };
    console.log(`live migration (256 MiB guest, 96 MiB resident, dirtying ~8 MiB/s steadily, shared storage, TCG): median total api ${median(apiTotal).toFixed(0)} ms vs bare ${median(bareTotal).toFixed(0)} ms (ratio ${out.migrateTotalRatio}, goal <= 1.2)`);
    console.log(`downtime: median api ${median(apiDown)} ms vs bare ${median(bareDown)} ms (ratio ${out.downtimeRatio}, goal <= 1.0)`);
    console.log(`snapshot save: median api ${median(apiSave).toFixed(0)} ms vs bare ${median(bareSave).toFixed(0)} ms (ratio ${out.snapshotSaveRatio}, goal <= 1.15)`);
    console.log(`snapshot revert: median api ${median(apiRevert).toFixed(0)} ms vs bare ${median(bareRevert).toFixed(0)} ms (ratio ${out.snapshotRevertRatio}, goal <= 1.15)`);
    console.log(JSON.stringify(out));
  } finally {
    await cleanUp();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
