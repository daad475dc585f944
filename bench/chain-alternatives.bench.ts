/**
 * `npm run bench:chain-alternatives`: how long a guest's I/O stalls, and whether it sees errors,
 * when the provider serving its disk is SIGKILLed, under three failover mechanisms QEMU 7.2
 * offers. No control plane: one qemu-system-x86_64 guest (TCG, 128 MiB) and qemu-storage-daemon
 * processes driven over QMP directly, so only the mechanism differs.
 * - quorum: the disk is a quorum (vote-threshold 1, fifo reads) over NBD clients to two providers,
 *   each with its own copy; one provider is killed, nothing else is done.
 * - reconnect: the disk is one NBD client with reconnect-delay 15 s to one provider; it is
 *   killed and a new provider is started at once on the same socket over the same file (what a
 *   local restart can do; it needs the same node and the same file).
 * - reopen: the disk is a raw node over an NBD client to provider A, the device stops the VM on
 *   I/O errors (werror/rerror=stop); provider B serves the same file (shared storage). On the
 *   BLOCK_IO_ERROR event: blockdev-add an NBD client to B, blockdev-reopen the raw node onto it,
 *   cont (the failed request is retried).
 * The guest writes 64 KiB blocks in a loop, stamping each with its uptime; the longest gap
 * between two completed writes is the stall. Last line JSON with each figure (-1: never recovered).
 */
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { QmpClient } from '@hyperplane/qmp';
import { ROOT, sleep } from './bench-lib';
import { GuestConsole, median, writeLoop } from './chain-guest';

const GUEST = resolve(process.env.HYPERPLANE_GUEST_DIR ?? join(ROOT, '.hyperplane/guest'));
const TRIALS = Number(process.env.BENCH_TRIALS ?? 3);

interface Daemon {
  proc: ChildProcess;
  qmp: QmpClient;
}

async function connect(path: string): Promise<QmpClient> {
  for (let i = 0; ; i++) {
    try {
      return await QmpClient.connect(path);
    } catch (error) {
      if (i > 400) throw error;
      await sleep(25);
    }
  }
}

/** A provider serving `node` (blockdev options) on `socket`. */
async function provider(dir: string, name: string, node: object, socket: string): Promise<Daemon> {
  const qmpPath = join(dir, `${name}-${Date.now()}.qmp`);
  const proc = spawn('qemu-storage-daemon', ['--chardev', `socket,id=m,path=${qmpPath},server=on,wait=off`, '--monitor', 'chardev=m'], { stdio: 'ignore' });
  const qmp = await connect(qmpPath);
  await qmp.blockdevAdd(node as { driver: string });
  await qmp.nbdServerStart({ type: 'unix', path: socket });
  await qmp.blockExportAdd({ type: 'nbd', id: 'e', 'node-name': (node as { 'node-name': string })['node-name'], name: 'link', writable: true });
  return { proc, qmp };
}

const nbd = (nodeName: string, socket: string, extra: object = {}) => ({ driver: 'nbd', 'node-name': nodeName, server: { type: 'unix', path: socket }, export: 'link', ...extra });
const sharedRaw = (file: string) => ({ driver: 'raw', 'node-name': 'store', file: { driver: 'file', filename: file, locking: 'off' } });

async function guest(dir: string, drive: string[]): Promise<{ proc: ChildProcess; qmp: QmpClient; console: GuestConsole }> {
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', join(GUEST, 'sample.qcow2'), join(dir, 'root.qcow2')]);
  const proc = spawn('qemu-system-x86_64', [
    '-no-user-config', '-nodefaults', '-M', 'pc', '-accel', 'tcg', '-m', '128', '-display', 'none', '-vga', 'none',
    '-chardev', `socket,id=ser0,path=${join(dir, 'console.sock')},server=on,wait=off`, '-serial', 'chardev:ser0',
    '-chardev', `socket,id=qmp,path=${join(dir, 'vm.qmp')},server=on,wait=off`, '-mon', 'chardev=qmp,mode=control',
    '-drive', `file=${join(dir, 'root.qcow2')},format=qcow2,if=virtio`,
    ...drive,
  ], { stdio: 'ignore' });
  const qmp = await connect(join(dir, 'vm.qmp'));
  const console = await GuestConsole.open(join(dir, 'console.sock'));
  await console.waitFor('HYPERPLANE-GUEST-READY');
  await sleep(1000);
  await console.run(`yes HP-ALTERNATIVES | head -c 4194304 > /tmp/pat; echo "PAT-$((40+2))"`, /PAT-42/);
  return { proc, qmp, console };
}

/** One kill under a running write loop; returns the longest gap (ms), the median gap and the guest's failed writes. */
async function trial(c: GuestConsole, kill: () => Promise<void>): Promise<{ stallMs: number; medianMs: number; errors: number }> {
  const loop = writeLoop(c, 'vdb', 300);
  await loop.started;
  await kill();
  const r = await loop.done;
  const dmesg = await c.run('echo "E $(dmesg | grep -ci "i/o error")-$((40+2))"', /E (\d+)-42/);
  return { stallMs: Math.max(...r.gaps) * 1000, medianMs: median(r.gaps) * 1000, errors: r.errors + Number(dmesg[1]) };
}

async function main(): Promise<void> {
  if (!existsSync(join(GUEST, 'sample.qcow2'))) throw new Error(`no sample guest in ${GUEST}: run npm run guest:build`);
  const root = mkdtempSync(join(tmpdir(), 'hp-bench-alt-'));
  const out: Record<string, { stallMs: number; errors: number }> = {};
  const all: ChildProcess[] = [];
  try {
    // quorum
    {
      const dir = join(root, 'quorum');
      execFileSync('mkdir', ['-p', dir]);
      const stalls: number[] = [];
      let errors = 0;
      let generation = 0;
      const replicas: Daemon[] = [];
      const make = async () => {
        const f = join(dir, `r${generation++}.qcow2`);
        execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', f, '64M']);
        const d = await provider(dir, `r${generation}`, { driver: 'qcow2', 'node-name': 'store', file: { driver: 'file', filename: f } }, join(dir, `r${generation}.nbd`));
        all.push(d.proc);
        return { d, socket: join(dir, `r${generation}.nbd`), child: `c${generation}` };
      };
      const a = await make();
      const b = await make();
      replicas.push(a.d, b.d);
      const g = await guest(dir, ['-blockdev', JSON.stringify({ driver: 'quorum', 'node-name': 'q', 'vote-threshold': 1, 'read-pattern': 'fifo', children: [nbd(a.child, a.socket), nbd(b.child, b.socket)] }), '-device', 'virtio-blk-pci,drive=q,id=d1,addr=0x10']);
      all.push(g.proc);
      let live = [a, b];
      for (let t = 0; t < TRIALS; t++) {
        const victim = live[0]!;
        const r = await trial(g.console, async () => { victim.d.proc.kill('SIGKILL'); });
        stalls.push(r.stallMs);
        errors += r.errors;
        // Bring the pair back (a fresh empty replica is enough for timing the next kill).
        const fresh = await make();
        await g.qmp.blockdevAdd(nbd(fresh.child, fresh.socket) as { driver: string });
        await g.qmp.xBlockdevChange({ parent: 'q', node: fresh.child });
        const graph = await g.qmp.blockGraph();
        const id = graph.nodes.find((n) => n.name === victim.child)?.id;
        const edge = graph.edges.find((e) => e.child === id);
        if (edge) await g.qmp.xBlockdevChange({ parent: 'q', child: edge.name });
        live = [live[1]!, fresh];
      }
      out.quorum = { stallMs: Math.round(Math.max(...stalls)), errors };
      process.stdout.write(`quorum over 2 replicas: longest stall ${out.quorum.stallMs} ms over ${TRIALS} kills, ${errors} I/O errors seen by the guest\n`);
      g.console.close();
      g.proc.kill('SIGKILL');
      for (const r of live) r.d.proc.kill('SIGKILL');
    }
    // reconnect-delay, with a restart of the provider in place
    {
      const dir = join(root, 'reconnect');
      execFileSync('mkdir', ['-p', dir]);
      const file = join(dir, 'disk.raw');
      execFileSync('truncate', ['-s', '64M', file]);
      const socket = join(dir, 'p.nbd');
      let p = await provider(dir, 'p', sharedRaw(file), socket);
      all.push(p.proc);
      const g = await guest(dir, ['-blockdev', JSON.stringify(nbd('n', socket, { 'reconnect-delay': 15 })), '-device', 'virtio-blk-pci,drive=n,id=d1,addr=0x10']);
      all.push(g.proc);
      const stalls: number[] = [];
      let errors = 0;
      for (let t = 0; t < TRIALS; t++) {
        const r = await trial(g.console, async () => {
          p.proc.kill('SIGKILL');
          await new Promise((res) => p.proc.once('exit', res));
          p = await provider(dir, 'p', sharedRaw(file), socket);
          all.push(p.proc);
        });
        stalls.push(r.stallMs);
        errors += r.errors;
      }
      out.reconnect = { stallMs: Math.round(Math.max(...stalls)), errors };
      process.stdout.write(`one NBD client, reconnect-delay 15 s, provider restarted in place: longest stall ${out.reconnect.stallMs} ms over ${TRIALS} kills, ${errors} I/O errors seen by the guest\n`);
      g.console.close();
      g.proc.kill('SIGKILL');
      p.proc.kill('SIGKILL');
    }
    // blockdev-reopen onto a second provider of the same (shared) file, VM stopped on the error
    {
      const dir = join(root, 'reopen');
      execFileSync('mkdir', ['-p', dir]);
      const file = join(dir, 'disk.raw');
      execFileSync('truncate', ['-s', '64M', file]);
      let serial = 0;
      const start = async () => {
        const socket = join(dir, `p${++serial}.nbd`);
        const d = await provider(dir, `p${serial}`, sharedRaw(file), socket);
        all.push(d.proc);
        return { d, socket, node: `n${serial}` };
      };
      let active = await start();
      let standby = await start();
      const g = await guest(dir, ['-blockdev', JSON.stringify(nbd(active.node, active.socket)), '-blockdev', JSON.stringify({ driver: 'raw', 'node-name': 'dev', file: active.node }), '-device', 'virtio-blk-pci,drive=dev,id=d1,addr=0x10,werror=stop,rerror=stop']);
      all.push(g.proc);
      let switching = false;
      let failure = '';
      let failed!: () => void;
      const reopenFailed = new Promise<void>((r) => (failed = r));
      g.qmp.on('event', (e) => {
        if (e.event !== 'BLOCK_IO_ERROR' || switching) return;
        switching = true;
        void (async () => {
          const dead = active;
          active = standby;
          await g.qmp.blockdevAdd(nbd(active.node, active.socket) as { driver: string });
          await g.qmp.execute('blockdev-reopen', { options: [{ driver: 'raw', 'node-name': 'dev', file: active.node }] });
          await g.qmp.blockdevDel(dead.node).catch(() => undefined);
          await g.qmp.resume();
          standby = await start();
          switching = false;
        })().catch((error: unknown) => {
          failure = (error as Error).message;
          failed();
        });
      });
      const stalls: number[] = [];
      let errors = 0;
      for (let t = 0; t < TRIALS && !failure; t++) {
        const r = await Promise.race([trial(g.console, async () => { active.d.proc.kill('SIGKILL'); }), reopenFailed.then(() => undefined)]);
        if (!r) break;
        stalls.push(r.stallMs);
        errors += r.errors;
        while (switching) await sleep(50);
      }
      if (failure) {
        out.reopen = { stallMs: -1, errors };
        process.stdout.write(`blockdev-reopen onto a standby provider of the same file (werror/rerror=stop, then cont): does not recover: ${failure}; the guest stays paused\n`);
      } else {
        out.reopen = { stallMs: Math.round(Math.max(...stalls)), errors };
        process.stdout.write(`blockdev-reopen onto a standby provider of the same file (werror/rerror=stop, then cont): longest stall ${out.reopen.stallMs} ms over ${TRIALS} kills, ${errors} I/O errors seen by the guest\n`);
      }
      g.console.close();
      g.proc.kill('SIGKILL');
    }
    process.stdout.write(`${JSON.stringify({ quorumStallMs: out.quorum!.stallMs, quorumErrors: out.quorum!.errors, reconnectStallMs: out.reconnect!.stallMs, reconnectErrors: out.reconnect!.errors, reopenStallMs: out.reopen!.stallMs, reopenErrors: out.reopen!.errors })}\n`);
  } finally {
    for (const p of all) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    await sleep(300);
    rmSync(root, { recursive: true, force: true });
  }
}

main().then(() => process.exit(0), (error: unknown) => {
  process.stderr.write(`bench:chain-alternatives failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
