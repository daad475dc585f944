/**
 * Service chains end to end: real control plane, three real workers (with TLS credentials made by
 * openssl, so providers on other nodes are reached over NBD with TLS), real qemu-storage-daemon
 * providers and real guests writing and reading through them on their serial console.
 * - bad input is refused with clear errors and creates nothing;
 * - a guest writes and reads back a pattern through base (2 replicas) -> encrypt -> throttle
 *   while a base replica is SIGKILLed: the pattern is intact, the guest saw no I/O error, the
 *   control plane replaces the replica (copied from the survivor) and the chain is ready again;
 *   then the other original replica is killed too and the data is still all there (the copy was
 *   complete); the base replicas' files never hold the guest's plaintext;
 * - a client attached at an earlier link sees only the lower layers' data;
 * - deleting a chain a partition uses is a 409 naming it; another project's chain is a 404;
 *   a deleted chain leaves no provider process or file behind.
 */
import { execFileSync, execSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { Api, clusterAdminToken, InProcess, ROOT, startInProcess, waitUntil } from '../helpers/control-plane';
import { GrpcApi } from '../helpers/grpc-client';
import { retireAllNodes } from '../helpers/db';
import { makeTlsDirs } from '../helpers/tls';
import { spawnWorker, WorkerProcess } from '../helpers/worker';

const GUEST = process.env.HYPERPLANE_GUEST_DIR ?? join(ROOT, '.hyperplane/guest');
const have = (cmd: string) => {
  try {
    execSync(`command -v ${cmd}`, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};
const ready = have('qemu-system-x86_64') && have('qemu-storage-daemon') && have('openssl') && existsSync(join(GUEST, 'sample.qcow2'));
const d = ready ? describe : describe.skip;
if (!ready) console.warn('skipping the service-chain end-to-end test: it needs qemu-system-x86_64, qemu-storage-daemon, openssl and the sample guest');

jest.setTimeout(300_000);

const dir = mkdtempSync(join(tmpdir(), 'hp-chain-e2e-'));
const NODES = [
  { name: 'chain-a', address: '127.0.0.91' },
  { name: 'chain-b', address: '127.0.0.92' },
  { name: 'chain-c', address: '127.0.0.93' },
];
const MiB = 1024 * 1024;
const PLAINTEXT = 'HP-PLAINTEXT-PATTERN-0123456789';
const KEY = Buffer.alloc(32, 0x42).toString('base64');

let cp: InProcess;
let admin: Api;
let api: Api;
let token: string;
let other: Api;
let otherToken: string;
const workers: WorkerProcess[] = [];
const events: any[] = [];
let eventStream: AbortController | undefined;

/** Pids of the processes whose command line names this test's directory and `needle`. */
function processes(bin: string, needle = ''): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8');
      if (cmd.includes(bin) && cmd.includes(dir) && cmd.includes(needle)) out.push(Number(e));
    } catch {
      continue;
    }
  }
  return out;
}

/** The provider daemon of a replica (not its TCP gateway). */
function providerPid(replicaId: string): number {
  const pids = processes('qemu-storage-daemon', `${replicaId}/provider.qmp`);
  if (pids.length !== 1) throw new Error(`expected one provider process for ${replicaId}, found ${pids.length}`);
  return pids[0]!;
}

async function opOk(r: { status: number; body: any }, timeoutSeconds = 180): Promise<any> {
  if (r.status !== 202) throw new Error(`expected 202, got ${r.status}: ${JSON.stringify(r.body)}`);
  const op = await api.waitOperation(r.body.operation.id, timeoutSeconds);
  if (op.status !== 'succeeded') throw new Error(`operation ${op.kind} ${op.status}: ${JSON.stringify(op.error)}`);
  return r.body;
}

/**
 * One interactive console per guest for the whole test (QEMU's serial port takes one client at a
 * time, so a session per command could race with the previous one's release).
 */
const consoles = new Map<string, { ws: WebSocket; seen: string }>();
async function consoleOf(id: string): Promise<{ ws: WebSocket; seen: string }> {
  const open = consoles.get(id);
  if (open && open.ws.readyState === WebSocket.OPEN) return open;
  const ws = new WebSocket(`${cp.url.replace('http', 'ws')}/v1/partitions/${id}/console`, { headers: { authorization: `Bearer ${token}` } });
  const c = { ws, seen: '' };
  ws.on('message', (m) => (c.seen += m.toString()));
  await new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });
  consoles.set(id, c);
  return c;
}

/** Types a command on a guest's serial console and waits for output matching `until` (after what was typed). */
async function run(id: string, command: string, until: RegExp, timeoutMs = 60_000): Promise<RegExpMatchArray> {
  const c = await consoleOf(id);
  const from = c.seen.length;
  c.ws.send(Buffer.from(`\n${command}\n`));
  let match: RegExpMatchArray | null = null;
  try {
    await waitUntil(() => (match = c.seen.slice(from).replaceAll('\r', '').match(until)) !== null, timeoutMs, `console output ${until}`);
  } catch (e) {
    throw new Error(`${(e as Error).message}; the console showed: ${JSON.stringify(c.seen.slice(-1500))}`);
  }
  return match!;
}

async function newGuest(name: string, node: string): Promise<string> {
  const c = await opOk(await api.post('/v1/partitions', { name, vcpus: 1, memoryMiB: 128, image: 'sample', placement: { node } }));
  const id = c.partition.id;
  await waitUntil(async () => ((await api.get(`/v1/partitions/${id}/console?tailBytes=65536`)).body.data ?? '').includes('HYPERPLANE-GUEST-READY'), 90_000, `${name} ready`);
  return id;
}

/** Waits until the guest lists `disk` in /sys/block. */
async function seesDisk(id: string, disk: string): Promise<void> {
  await waitUntil(async () => {
    const m = await run(id, `ls /sys/block | tr '\\n' ' '; echo ":LS-$((40+2))"`, /([a-z ]*):LS-42/, 10_000);
    return m[1]!.split(' ').includes(disk);
  }, 30_000, `${disk} in the guest`);
}

async function chain(id: string): Promise<any> {
  return (await api.get(`/v1/service-chains/${id}`)).body;
}

/** Bytes of a provider's data file (qcow2 read as raw; the file is in use, so with -U). */
function dataOf(node: string, replicaId: string): Buffer {
  const out = join(dir, `${replicaId}.raw`);
  execFileSync('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', join(dir, node, 'providers', replicaId, 'data.qcow2'), out]);
  return readFileSync(out);
}

d('service chains end to end', () => {
  beforeAll(async () => {
    await retireAllNodes();
    cp = await startInProcess({ HYPERPLANE_GUEST_DIR: GUEST, HYPERPLANE_NODE_TIMEOUT_MS: '8000' });
    const tls = makeTlsDirs(join(dir, 'tls'), NODES.map((n) => n.name));
    for (const n of NODES) {
      workers.push(spawnWorker({ name: n.name, address: n.address, controlPlane: cp.grpcAddress, dataDir: join(dir, n.name), driver: 'qemu', extra: ['--tls-dir', tls[n.name]!], env: { HYPERPLANE_GUEST_DIR: GUEST, HYPERPLANE_DATA_DIR: dir } }));
    }
    admin = new Api(cp.url, await clusterAdminToken());
    await waitUntil(async () => (await admin.get('/v1/nodes?state=ready&pageSize=100')).body.items.filter((x: any) => NODES.some((n) => n.name === x.name)).length === NODES.length, 60_000, 'workers registered');
    ({ api, token } = await admin.newProject('chain-e2e', 'operator'));
    ({ api: other, token: otherToken } = await admin.newProject('chain-e2e-other', 'operator'));
    eventStream = new AbortController();
    void (async () => {
      const res = await fetch(`${cp.url}/v1/events?type=service-chain`, { headers: { authorization: `Bearer ${token}` }, signal: eventStream!.signal });
      const reader = res.body!.getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += Buffer.from(value).toString();
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = block.split('\n').find((l) => l.startsWith('data: '));
          if (data) events.push(JSON.parse(data.slice(6)));
        }
      }
    })().catch(() => undefined);
  });

  afterAll(async () => {
    eventStream?.abort();
    for (const c of consoles.values()) c.ws.close();
    if (process.env.HP_CHAIN_DEBUG) for (const w of workers) console.log(`---- ${w.name}\n${w.output()}`);
    await Promise.all(workers.map((w) => w.stop()));
    for (const pid of [...processes('qemu-system'), ...processes('qemu-storage-daemon')]) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
    await cp?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses bad input with clear errors and creates nothing', async () => {
    const consumesItself = await api.post('/v1/service-chains', { name: 'bad-1', links: [{ name: 'base', kind: 'base', sizeBytes: 32 * MiB }, { name: 'ov', kind: 'overlay', consumes: 'ov' }] });
    expect(consumesItself.status).toBe(400);
    expect(consumesItself.body.errors).toContainEqual({ field: 'links[1].consumes', message: 'link ov consumes itself' });
    const tooMany = await api.post('/v1/service-chains', { name: 'bad-2', links: [{ name: 'base', kind: 'base', sizeBytes: 32 * MiB, replicas: 4 }] });
    expect(tooMany.status).toBe(422);
    expect(tooMany.body.detail).toMatch(/^no node fits: link base needs 4 replicas on different nodes and 3 nodes can run providers/);
    const shortKey = await api.post('/v1/service-chains', { name: 'bad-3', links: [{ name: 'base', kind: 'base', sizeBytes: 32 * MiB }, { name: 'enc', kind: 'encrypt', key: Buffer.alloc(16).toString('base64') }] });
    expect(shortKey.status).toBe(400);
    expect(shortKey.body.errors).toContainEqual({ field: 'links[1].key', message: 'must be 32 bytes (256 bits), base64-encoded; got 16 bytes' });
    // The same through gRPC: same code, same message.
    const g = new GrpcApi(cp.grpcAddress, token);
    try {
      const err = await g.fail('ServiceChainService', 'CreateServiceChain', { name: 'bad-4', links: [{ name: 'base', kind: 'base', sizeBytes: 32 * MiB }, { name: 'ov', kind: 'overlay', consumes: 'ov' }] });
      expect(err.code).toBe(3); // INVALID_ARGUMENT
      expect(err.details).toBe('links[1].consumes: link ov consumes itself');
    } finally {
      g.close();
    }
    expect((await api.get('/v1/service-chains')).body.items).toEqual([]);
    expect(processes('qemu-storage-daemon')).toEqual([]);
  });

  let vm1 = '';
  it('keeps guest I/O intact with no error while a base replica is SIGKILLed; the control plane replaces it and the chain is ready again', async () => {
    const created = await opOk(await api.post('/v1/service-chains', {
      name: 'secure',
      links: [
        { name: 'base', kind: 'base', sizeBytes: 64 * MiB, replicas: 2, nodes: ['chain-a', 'chain-b'] },
        { name: 'enc', kind: 'encrypt', key: KEY, nodes: ['chain-a'] },
        { name: 'qos', kind: 'throttle', throttle: { iopsTotal: 20000, bpsTotal: 400 * MiB }, nodes: ['chain-a'] },
      ],
    }));
    const chainId = created.serviceChain.id;
    let c = await chain(chainId);
    expect(c).toMatchObject({ state: 'ready', head: 'qos' });
    expect(c.links.map((l: any) => [l.name, l.state, l.healthyReplicas])).toEqual([['base', 'ready', 2], ['enc', 'ready', 1], ['qos', 'ready', 1]]);
    expect(JSON.stringify(c)).not.toContain(KEY);
    const nodes = (await admin.get('/v1/nodes?pageSize=100')).body.items;
    const nodeName = (id: string) => nodes.find((n: any) => n.id === id)?.name;
    expect(c.links[0].replicaStatus.map((r: any) => nodeName(r.node)).sort()).toEqual(['chain-a', 'chain-b']);
    const baseA = c.links[0].replicaStatus.find((r: any) => nodeName(r.node) === 'chain-a');
    const baseB = c.links[0].replicaStatus.find((r: any) => nodeName(r.node) === 'chain-b');

    vm1 = await newGuest('chain-vm1', 'chain-a');
    const att = await opOk(await api.post(`/v1/partitions/${vm1}/attachments`, { chainId }));
    expect(att.attachment).toMatchObject({ link: 'qos', readOnly: false, deviceIndex: 0 });
    expect((await api.get(`/v1/partitions/${vm1}/attachments`)).body.items).toEqual([expect.objectContaining({ id: att.attachment.id, state: 'attached' })]);
    await seesDisk(vm1, 'vdb');

    // 4 MiB of a recognisable pattern, written block by block (and read back) in a loop with timestamps.
    await run(vm1, `yes ${PLAINTEXT} | head -c 4194304 > /tmp/pat; echo "PAT-$((40+2))"`, /PAT-42/);
    const loop = run(vm1, 'i=0; e=0; while [ $i -lt 320 ]; do b=$((i % 64)); dd if=/tmp/pat of=/dev/vdb bs=64k skip=$b seek=$b count=1 oflag=direct 2>/dev/null || e=$((e+1)); read u x </proc/uptime; echo "T $i $u"; i=$((i+1)); done; echo "LOOP $e-$((40+2))"', /LOOP (\d+)-42/, 240_000);
    const before = events.length;
    await waitUntil(async () => ((await api.get(`/v1/partitions/${vm1}/console?tailBytes=4096`)).body.data ?? '').includes('T 60 '), 120_000, 'the write loop under way');
    process.kill(providerPid(baseA.id), 'SIGKILL');
    const loopErrors = Number((await loop)[1]);
    expect(loopErrors).toBe(0);
    const verify = await run(vm1, 'dd if=/dev/vdb of=/tmp/back bs=64k count=64 iflag=direct 2>/dev/null; echo "SUM $(md5sum </tmp/pat | cut -c1-32) $(md5sum </tmp/back | cut -c1-32) ERR $(dmesg | grep -ci "i/o error")-$((40+2))"', /SUM ([0-9a-f]{32}) ([0-9a-f]{32}) ERR (\d+)-42/);
    expect(verify[1]).toBe(verify[2]);
    expect(verify[3]).toBe('0');

    // The control plane saw it, replaced it on the third node (copied from the survivor), and the chain is ready again.
    await waitUntil(async () => {
      c = await chain(chainId);
      return c.state === 'ready' && c.links[0].healthyReplicas === 2 && c.links[0].replicaStatus.every((r: any) => r.id !== baseA.id);
    }, 180_000, 'the chain repaired');
    const replacement = c.links[0].replicaStatus.find((r: any) => r.id !== baseB.id);
    expect(nodeName(replacement.node)).toBe('chain-c');
    const seen = () => events.slice(before).filter((e) => e.resourceId === chainId).map((e) => e.data.state);
    await waitUntil(() => seen().includes('degraded') && seen()[seen().length - 1] === 'ready', 10_000, 'degraded, then ready, in the event stream');
    const status = (await api.get(`/v1/service-chains/${chainId}/status`)).body;
    expect(status.links[0]).toMatchObject({ name: 'base', healthyReplicas: 2, replicas: 2 });
    // The guest's disk uses the replacement now (the attachment updated); the killed one is gone for good.
    expect(processes('qemu-storage-daemon', baseA.id)).toEqual([]);
    // The providers' logs tell it: the encrypt link dropped the killed replica, the replacement was copied from the survivor.
    const encLog = await api.get(`/v1/service-chains/${chainId}/links/enc/replicas/${c.links[1].replicaStatus[0].id}/log`);
    expect(encLog.status).toBe(200);
    expect(encLog.body.data).toContain(`dropped replica ${baseA.id} of the link below`);
    const newLog = (await api.get(`/v1/service-chains/${chainId}/links/base/replicas/${replacement.id}/log?tailBytes=4096`)).body.data;
    expect(newLog).toContain(`copying from replica ${baseB.id}`);
    expect(newLog).toContain('copy complete');

    // The other original replica dies too: the copy on chain-c has everything.
    process.kill(providerPid(baseB.id), 'SIGKILL');
    const again = await run(vm1, 'dd if=/dev/vdb of=/tmp/back bs=64k count=64 iflag=direct 2>/dev/null; echo "SUM2 $(md5sum </tmp/back | cut -c1-32) ERR $(dmesg | grep -ci "i/o error")-$((40+2))"', /SUM2 ([0-9a-f]{32}) ERR (\d+)-42/);
    expect(again[1]).toBe(verify[1]);
    expect(again[2]).toBe('0');

    // No base replica's file holds the plaintext (the encrypt link sits above them). A flush first,
    // so the replicas' qcow2 metadata is on disk for the reader.
    await run(vm1, 'dd if=/dev/null of=/dev/vdb conv=fsync 2>/dev/null; echo "F $?-$((40+2))"', /F 0-42/);
    const healthy = (await chain(chainId)).links[0].replicaStatus.filter((x: any) => x.state === 'healthy');
    expect(healthy.length).toBeGreaterThan(0);
    for (const r of healthy) {
      const bytes = dataOf(nodeName(r.node), r.id);
      expect({ replica: r.id, magic: bytes.subarray(0, 6).toString('latin1') }).toEqual({ replica: r.id, magic: 'LUKS\xba\xbe' });
      expect(bytes.includes(Buffer.from(PLAINTEXT))).toBe(false);
    }
  });

  it('shows a client attached at an earlier link only the lower layers', async () => {
    const created = await opOk(await api.post('/v1/service-chains', { name: 'layers', links: [{ name: 'base', kind: 'base', sizeBytes: 32 * MiB, nodes: ['chain-b'] }] }));
    const chainId = created.serviceChain.id;
    // Written into the base while it is the head.
    let att = await opOk(await api.post(`/v1/partitions/${vm1}/attachments`, { chainId }));
    await seesDisk(vm1, 'vdc');
    await run(vm1, `printf 'LOWER-LAYER-DATA' | dd of=/dev/vdc bs=512 seek=0 conv=notrunc,fsync 2>/dev/null; echo "W-$((40+2))"`, /W-42/);
    await opOk(await api.delete(`/v1/partitions/${vm1}/attachments/${att.attachment.id}`));
    expect((await api.get(`/v1/partitions/${vm1}/attachments`)).body.items.map((a: any) => a.link)).toEqual(['qos']);

    // An overlay on top; the guest writes through it.
    await opOk(await api.post(`/v1/service-chains/${chainId}/links`, { name: 'ov', kind: 'overlay', nodes: ['chain-b'] }));
    att = await opOk(await api.post(`/v1/partitions/${vm1}/attachments`, { chainId }));
    expect(att.attachment.link).toBe('ov');
    await waitUntil(async () => (await run(vm1, `ls /sys/block | tr '\\n' ' '; echo ":LS-$((40+2))"`, /([a-z ]*):LS-42/)).at(1)!.split(' ').filter((x) => x.startsWith('vd')).length === 3, 30_000, 'the overlay disk');
    const upper = await run(vm1, `d=$(ls /sys/block | grep vd | tail -1); printf 'UPPER-LAYER-DATA' | dd of=/dev/$d bs=512 seek=2048 conv=notrunc,fsync 2>/dev/null; echo "U $d $(dd if=/dev/$d bs=16 count=1 2>/dev/null)-$((40+2))"`, /U (vd[a-z]) (\S*)-42/);
    expect(upper[2]).toBe('LOWER-LAYER-DATA');

    // A second guest, on another node, attached at the base (read-only): the lower data, not the upper.
    const writable = await api.post(`/v1/partitions/${vm1}/attachments`, { chainId, link: 'base', readOnly: false });
    expect(writable.status).toBe(409);
    expect(writable.body.detail).toBe('cannot attach link base writable: link base is consumed by link ov: a client attaches to it read-only');
    const vm2 = await newGuest('chain-vm2', 'chain-c');
    const low = await opOk(await api.post(`/v1/partitions/${vm2}/attachments`, { chainId, link: 'base' }));
    expect(low.attachment).toMatchObject({ link: 'base', readOnly: true });
    await seesDisk(vm2, 'vdb');
    const seenLow = await run(vm2, `echo "L $(dd if=/dev/vdb bs=16 count=1 2>/dev/null) $(dd if=/dev/vdb bs=512 skip=2048 count=1 2>/dev/null | tr -d '\\000' | wc -c)-$((40+2))"`, /L (\S+) (\d+)-42/);
    expect(seenLow[1]).toBe('LOWER-LAYER-DATA');
    expect(seenLow[2]).toBe('0'); // the overlay's write is not in the base
    const ro = await run(vm2, 'printf x | dd of=/dev/vdb bs=512 conv=notrunc 2>/dev/null; echo "RO $?-$((40+2))"', /RO (\d+)-42/);
    expect(ro[1]).not.toBe('0');

    // Stopped and started again, the guest has the disk from its first instruction (on the command line, not hot-plugged).
    consoles.get(vm2)?.ws.close();
    consoles.delete(vm2);
    await opOk(await api.post(`/v1/partitions/${vm2}/stop`, { force: true }));
    await opOk(await api.post(`/v1/partitions/${vm2}/start`));
    await waitUntil(async () => /hp\.disks: vda vdb\r?\n/.test((await api.get(`/v1/partitions/${vm2}/console?tailBytes=65536`)).body.data ?? ''), 90_000, 'vdb at boot');
    expect((await run(vm2, `echo "L2 $(dd if=/dev/vdb bs=16 count=1 2>/dev/null)-$((40+2))"`, /L2 (\S+)-42/))[1]).toBe('LOWER-LAYER-DATA');

    // The same chain through gRPC: status per link, the partition's attachments.
    const g = new GrpcApi(cp.grpcAddress, token);
    try {
      const st = await g.call('ServiceChainService', 'GetServiceChainStatus', { id: chainId });
      expect(st.links.map((l: any) => [l.name, l.state, l.healthyReplicas])).toEqual([['base', 'ready', 1], ['ov', 'ready', 1]]);
      const list = await g.call('ServiceChainService', 'ListAttachments', { partitionId: vm2 });
      expect(list.items.map((a: any) => [a.link, a.readOnly, a.state])).toEqual([['base', true, 'attached']]);
    } finally {
      g.close();
    }
    const og = new GrpcApi(cp.grpcAddress, otherToken);
    try {
      expect((await og.fail('ServiceChainService', 'GetServiceChain', { id: chainId })).code).toBe(5); // NOT_FOUND
    } finally {
      og.close();
    }

    // The overlay's file holds the upper write in clear (no encryption in this chain): the search above can see plaintext.
    const ov = (await chain(chainId)).links[1].replicaStatus[0];
    expect(dataOf('chain-b', ov.id).includes(Buffer.from('UPPER-LAYER-DATA'))).toBe(true);

    // Deleting a chain in use is refused, naming the partition; another project sees nothing.
    const inUse = await api.delete(`/v1/service-chains/${chainId}`);
    expect(inUse.status).toBe(409);
    expect(inUse.body.detail).toMatch(/^cannot delete service chain layers: partition chain-vm\d uses it/);
    expect((await other.get(`/v1/service-chains/${chainId}`)).status).toBe(404);
    expect((await other.post(`/v1/partitions/${vm1}/attachments`, { chainId })).status).toBe(404);

    // Detach everything, delete: no provider of the chain left, no file.
    await opOk(await api.delete(`/v1/partitions/${vm1}/attachments/${att.attachment.id}`));
    await opOk(await api.delete(`/v1/partitions/${vm2}/attachments/${low.attachment.id}`));
    const replicaIds = (await chain(chainId)).links.flatMap((l: any) => l.replicaStatus.map((r: any) => r.id));
    await opOk(await api.delete(`/v1/service-chains/${chainId}`));
    expect((await api.get(`/v1/service-chains/${chainId}`)).status).toBe(404);
    for (const id of replicaIds) {
      expect(processes('qemu-storage-daemon', id)).toEqual([]);
      for (const n of NODES) expect(existsSync(join(dir, n.name, 'providers', id))).toBe(false);
    }
  });
});
