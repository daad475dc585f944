/**
 * Live and cold migration through the public API between two real workers on one machine, each
 * running real guests under QEMU (TCG), with a control-plane process that the test SIGKILLs:
 * the guest's heartbeat counter goes on across a live migration; cancel, a destination killed
 * and a control plane killed mid-migration each leave the guest alive on exactly one node with
 * the record saying which and nothing left on the other; bad input changes nothing; a cold
 * migration keeps the snapshots; a drain moves partitions away live.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Api, ChildControlPlane, clusterAdminToken, freePort, spawnControlPlane, testEnv, waitUntil } from '../helpers/control-plane';
import { describeWithGuest, GUEST, killQemusUnder, qemusUnder } from '../helpers/guest';
import { retireAllNodes, sql } from '../helpers/db';
import { spawnWorker, WorkerProcess } from '../helpers/worker';

const d = describeWithGuest('migration end-to-end tests');

jest.setTimeout(300_000);

const dir = mkdtempSync(join(tmpdir(), 'hp-mig-e2e-'));
const NODES = { a: { name: 'mig-a', address: '127.0.0.61' }, b: { name: 'mig-b', address: '127.0.0.62' } } as const;
type NodeKey = keyof typeof NODES;
let env: Record<string, string>;
let cp: ChildControlPlane;
const workers: Partial<Record<NodeKey, WorkerProcess>> = {};
let admin: Api;
let api: Api;
const nodeIds: Record<string, string> = {};

function startWorker(k: NodeKey): void {
  workers[k] = spawnWorker({ name: NODES[k].name, address: NODES[k].address, controlPlane: cp.grpcAddress, dataDir: join(dir, k), driver: 'qemu', env: { HYPERPLANE_GUEST_DIR: GUEST, HYPERPLANE_DATA_DIR: dir } });
}

/** Pids of the QEMU processes of a partition on a node (found by its runtime dir). */
function qemuPids(k: NodeKey, id: string): number[] {
  return qemusUnder(join(dir, k, 'partitions', id));
}

/** Files a node keeps for a partition. */
function filesOn(k: NodeKey, id: string): string[] {
  const p = join(dir, k, 'partitions');
  return existsSync(p) ? readdirSync(p).filter((f) => f === id) : [];
}

/** Every heartbeat number on the partition's console (the console of the node it is on now). */
async function beats(id: string): Promise<number[]> {
  const r = await api.get(`/v1/partitions/${id}/console?tailBytes=65536`);
  const text = r.status === 200 ? String(r.body.data).replaceAll('\r', '') : '';
  return [...text.matchAll(/^hb (\d+)$/gm)].map((m) => Number(m[1]));
}

async function waitBeat(id: string, n: number): Promise<number> {
  let last = 0;
  try {
    await waitUntil(async () => (last = (await beats(id)).at(-1) ?? 0) >= n, 60_000, `heartbeat ${n}`, 250);
  } catch (e) {
    throw new Error(`${(e as Error).message} (last seen ${last})\n${await whereIs(id)}`);
  }
  return last;
}

/** What the test can see of a partition that stopped beating: its record, its QEMUs and console files on each node, the processes' last words. */
async function whereIs(id: string): Promise<string> {
  const lines = [`record: ${JSON.stringify((await api.get(`/v1/partitions/${id}`)).body)}`];
  const tail = await api.get(`/v1/partitions/${id}/console?tailBytes=300`);
  lines.push(`console API: ${tail.status} ${JSON.stringify(tail.body.data ?? tail.body)}`);
  for (const k of Object.keys(NODES) as NodeKey[]) {
    const procs = qemuPids(k, id).map((pid) => `${pid} ${existsSync(`/proc/${pid}/stat`) ? readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.slice(0, 1) : 'gone'}`);
    const log = join(dir, k, 'partitions', id, 'console.log');
    const file = existsSync(log) ? `${statSync(log).size} bytes, modified ${statSync(log).mtime.toISOString()}, ends ${JSON.stringify(readFileSync(log, 'utf8').slice(-200))}` : 'none';
    lines.push(`${NODES[k].name}: qemu [${procs.join(', ')}], files [${existsSync(join(dir, k, 'partitions', id)) ? readdirSync(join(dir, k, 'partitions', id)).join(' ') : ''}], console.log ${file}`);
    lines.push(`${NODES[k].name} worker log:\n${workers[k]?.output().slice(-6000)}`);
  }
  lines.push(`control plane log:\n${cp.output().slice(-6000)}`);
  return lines.join('\n');
}

/** The guest runs on exactly node `k`: one QEMU there, none on the other, the record says `k`, the heartbeat goes on. */
async function expectOnlyOn(k: NodeKey, id: string): Promise<void> {
  const other: NodeKey = k === 'a' ? 'b' : 'a';
  await waitUntil(() => qemuPids(other, id).length === 0 && filesOn(other, id).length === 0, 30_000, `nothing left of ${id} on ${NODES[other].name}`);
  expect(qemuPids(k, id)).toHaveLength(1);
  const p = (await api.get(`/v1/partitions/${id}`)).body;
  expect({ state: p.state, node: p.node }).toEqual({ state: 'running', node: nodeIds[NODES[k].name] });
  const n = (await beats(id)).at(-1) ?? 0;
  await waitBeat(id, n + 2);
}

async function create(name: string, node: NodeKey): Promise<string> {
  const c = await api.post('/v1/partitions', { name, vcpus: 1, memoryMiB: 128, image: 'sample', placement: { node: NODES[node].name } });
  expect(c.status).toBe(202);
  expect((await api.waitOperation(c.body.operation.id, 120)).status).toBe('succeeded');
  await waitBeat(c.body.partition.id, 2);
  return c.body.partition.id;
}

/** Starts a slow (bandwidth-limited) live migration and waits until its memory phase shows progress. */
async function slowMigration(id: string, to: NodeKey, bandwidthMiB = 1): Promise<string> {
  const m = await api.post(`/v1/partitions/${id}/migrate`, { targetNode: NODES[to].name, bandwidthBytesPerSec: bandwidthMiB * 1024 * 1024 });
  expect(m.status).toBe(202);
  await waitUntil(async () => {
    const op = (await api.get(`/v1/operations/${m.body.operation.id}`)).body;
    return op.migration?.phase === 'memory' && op.migration.bytesTransferred > 0;
  }, 60_000, 'migration copying memory');
  return m.body.operation.id;
}

/** The rows a refused request must not change. */
async function state(id: string) {
  return {
    partition: await sql(`SELECT state, node_id, target_node_id, version FROM partitions WHERE id = $1`, [id]),
    nodes: await sql(`SELECT name, allocated_vcpus, allocated_memory_mib FROM nodes WHERE id = ANY($1::uuid[]) ORDER BY name`, [Object.values(nodeIds)]),
    operations: await sql(`SELECT count(*)::int n FROM operations WHERE target_id = $1`, [id]),
  };
}

d('migration end to end', () => {
  beforeAll(async () => {
    await retireAllNodes();
    env = testEnv({ HYPERPLANE_HTTP_PORT: String(await freePort()), HYPERPLANE_GRPC_PORT: String(await freePort()), HYPERPLANE_DATA_DIR: join(dir, 'cp'), HYPERPLANE_GUEST_DIR: GUEST, HYPERPLANE_LOG_LEVEL: 'info' });
    cp = await spawnControlPlane(env);
    startWorker('a');
    startWorker('b');
    admin = new Api(cp.url, await clusterAdminToken());
    await waitUntil(async () => {
      const items = (await admin.get('/v1/nodes?state=ready')).body.items ?? [];
      for (const n of items) nodeIds[n.name] = n.id;
      return Boolean(nodeIds['mig-a'] && nodeIds['mig-b']);
    }, 60_000, 'both workers registered');
    ({ api } = await admin.newProject('mig-e2e', 'operator'));
  });

  afterAll(async () => {
    await Promise.all(Object.values(workers).map((w) => w?.stop()));
    killQemusUnder(dir);
    cp?.proc.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('live: the heartbeat goes on at the destination with no reset and no gap; progress is on the operation and in the event stream', async () => {
    const id = await create('live-vm', 'a');
    // Follow the event stream while it moves.
    const events: any[] = [];
    const ac = new AbortController();
    const sse = fetch(`${cp.url}/v1/events?type=operation`, { headers: { authorization: `Bearer ${api.token}` }, signal: ac.signal }).then(async (res) => {
      const reader = res.body!.getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += Buffer.from(value).toString();
        for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
          const data = buf.slice(0, i).split('\n').find((l) => l.startsWith('data: '));
          buf = buf.slice(i + 2);
          if (data) events.push(JSON.parse(data.slice(6)));
        }
      }
    }).catch(() => undefined);
    await waitBeat(id, 4);

    // 32 MiB/s: the memory copy outlasts the source's quiet start (MIGRATION_QUIET_MS), so its progress shows.
    const m = await api.post(`/v1/partitions/${id}/migrate`, { targetNode: NODES.b.name, maxDowntimeMs: 300, bandwidthBytesPerSec: 32 * 2 ** 20 });
    expect(m.status).toBe(202);
    expect(m.body.partition).toMatchObject({ state: 'migrating', node: nodeIds['mig-a'] });
    const before = await beats(id); // the source's console, up to the moment it was asked
    const op = await api.waitOperation(m.body.operation.id, 120);
    expect(op).toMatchObject({ status: 'succeeded', kind: 'partition.migrate', progress: 100 });
    expect(op.migration).toMatchObject({ sourceNode: 'mig-a', targetNode: 'mig-b', mode: 'live', storage: 'copy', phase: 'completed' });
    expect(op.migration.totalTimeMs).toBeGreaterThan(0);
    expect(op.migration.downtimeMs).toBeGreaterThanOrEqual(0);

    // The destination's console starts where the source's ended: the next numbers, none missing.
    const after = await (async () => { await waitBeat(id, 1); return beats(id); })();
    expect(after[0]).toBeGreaterThan(before.at(-1)!);
    expect(after[0]).toBeLessThanOrEqual(before.at(-1)! + 3);
    for (let i = 1; i < after.length; i++) expect(after[i]).toBe(after[i - 1]! + 1);
    await expectOnlyOn('b', id);

    ac.abort();
    await sse;
    const mine = events.filter((e) => e.resourceId === m.body.operation.id).map((e) => e.data);
    expect(mine.some((o) => o.migration?.phase === 'memory' && o.migration.bytesTotal > 0)).toBe(true);
    expect(mine.at(-1)).toMatchObject({ status: 'succeeded', migration: { phase: 'completed' } });

    // Back, with the scheduler choosing: the only other node.
    const back = await api.post(`/v1/partitions/${id}/migrate`, {});
    expect((await api.waitOperation(back.body.operation.id, 120)).status).toBe('succeeded');
    await expectOnlyOn('a', id);
    // Capacity is held by exactly the node it is on.
    expect(await sql(`SELECT name, allocated_memory_mib::int m FROM nodes WHERE id = ANY($1::uuid[]) ORDER BY name`, [Object.values(nodeIds)])).toEqual([
      { name: 'mig-a', m: 128 },
      { name: 'mig-b', m: 0 },
    ]);
  });

  it('bad input gets a clear error and changes nothing', async () => {
    const id = (await api.get('/v1/partitions?pageSize=10')).body.items.find((p: any) => p.name === 'live-vm').id;
    const before = await state(id);
    const same = await api.post(`/v1/partitions/${id}/migrate`, { targetNode: 'mig-a' });
    expect(same.status).toBe(400);
    expect(same.body.errors).toEqual([{ field: 'targetNode', message: 'partition live-vm is on node mig-a already' }]);
    const unknown = await api.post(`/v1/partitions/${id}/migrate`, { targetNode: 'nowhere' });
    expect(unknown.status).toBe(400);
    expect(unknown.body.errors).toEqual([{ field: 'targetNode', message: "node 'nowhere' does not exist" }]);
    expect((await admin.post('/v1/nodes/mig-b/cordon')).status).toBe(200);
    const cordoned = await api.post(`/v1/partitions/${id}/migrate`, { targetNode: 'mig-b' });
    expect(cordoned.status).toBe(422);
    expect(cordoned.body.detail).toBe('no node fits: 1 node: cordoned');
    const none = await api.post(`/v1/partitions/${id}/migrate`, {});
    expect(none.status).toBe(422);
    expect(none.body.detail).toMatch(/no node fits: .*1 node: the partition is there already/);
    expect((await admin.post('/v1/nodes/mig-b/uncordon')).status).toBe(200);
    const badOption = await api.post(`/v1/partitions/${id}/migrate`, { maxDowntimeMs: -1, storage: 'nfs' });
    expect(badOption.status).toBe(400);
    expect(badOption.body.errors.map((e: any) => e.field).sort()).toEqual(['maxDowntimeMs', 'storage']);
    expect(await state(id)).toEqual(before); // none of these changed the partition, the nodes' allocations or the operations

    // Snapshots do not travel with a copy-storage live migration: refused unless dropped on purpose.
    const s = await api.post(`/v1/partitions/${id}/snapshots`, { name: 'keep-me' });
    expect((await api.waitOperation(s.body.operation.id, 120)).status).toBe('succeeded');
    const withSnap = await state(id);
    const refused = await api.post(`/v1/partitions/${id}/migrate`, { targetNode: 'mig-b' });
    expect(refused.status).toBe(409);
    expect(refused.body.detail).toMatch(/cannot migrate partition live-vm live with copy storage: it has 1 snapshot\(s\)/);
    expect(await state(id)).toEqual(withSnap);
    const del = await api.delete(`/v1/partitions/${id}/snapshots/${s.body.snapshot.id}`);
    expect((await api.waitOperation(del.body.operation.id, 60)).status).toBe('succeeded');

    // A stopped partition cannot migrate live.
    const stopped = await create('stopped-vm', 'a');
    const stop = await api.post(`/v1/partitions/${stopped}/stop`, { force: true });
    expect((await api.waitOperation(stop.body.operation.id, 60)).status).toBe('succeeded');
    const st = await state(stopped);
    const live = await api.post(`/v1/partitions/${stopped}/migrate`, { live: true, targetNode: 'mig-b' });
    expect(live.status).toBe(409);
    expect(live.body.detail).toBe('cannot migrate partition stopped-vm live: it is stopped (a stopped partition migrates cold: leave live unset or false)');
    expect(await state(stopped)).toEqual(st);
  });

  it('cold: a stopped partition moves with its snapshots and starts on the destination', async () => {
    const id = (await api.get('/v1/partitions?pageSize=10')).body.items.find((p: any) => p.name === 'stopped-vm').id;
    const s = await api.post(`/v1/partitions/${id}/snapshots`, { name: 'cold-snap' });
    expect((await api.waitOperation(s.body.operation.id, 60)).status).toBe('succeeded');
    const m = await api.post(`/v1/partitions/${id}/migrate`, { targetNode: 'mig-b' });
    expect(m.status).toBe(202);
    const op = await api.waitOperation(m.body.operation.id, 120);
    expect(op).toMatchObject({ status: 'succeeded', migration: { mode: 'cold', sourceNode: 'mig-a', targetNode: 'mig-b' } });
    expect((await api.get(`/v1/partitions/${id}`)).body).toMatchObject({ state: 'stopped', node: nodeIds['mig-b'] });
    expect(filesOn('a', id)).toEqual([]);
    expect(filesOn('b', id)).toEqual([id]);
    // The snapshot came along: it reverts on the new node.
    const r = await api.post(`/v1/partitions/${id}/snapshots/${s.body.snapshot.id}/revert`);
    expect((await api.waitOperation(r.body.operation.id, 60)).status).toBe('succeeded');
    const start = await api.post(`/v1/partitions/${id}/start`);
    expect((await api.waitOperation(start.body.operation.id, 120)).status).toBe('succeeded');
    await waitBeat(id, 2);
    await expectOnlyOn('b', id);
    const rm = await api.delete(`/v1/partitions/${id}`);
    expect((await api.waitOperation(rm.body.operation.id, 60)).status).toBe('succeeded');
  });

  it('cancel during pre-copy leaves the guest running on the source', async () => {
    const id = (await api.get('/v1/partitions?pageSize=10')).body.items.find((p: any) => p.name === 'live-vm').id;
    const opId = await slowMigration(id, 'b');
    expect(qemuPids('b', id)).toHaveLength(1); // the destination waits
    const c = await api.post(`/v1/operations/${opId}/cancel`);
    expect(c.status).toBe(200);
    const op = await api.waitOperation(opId, 60);
    expect(op).toMatchObject({ status: 'cancelled', migration: { phase: 'cancelled' } });
    expect(op.error.message).toMatch(/keeps running on node mig-a/);
    await expectOnlyOn('a', id);
  });

  it('post-copy: a migration that does not converge in pre-copy switches over and completes', async () => {
    const id = (await api.get('/v1/partitions?pageSize=10')).body.items.find((p: any) => p.name === 'live-vm').id;
    const m = await api.post(`/v1/partitions/${id}/migrate`, { targetNode: 'mig-b', bandwidthBytesPerSec: 1024 * 1024, postcopy: true, postcopyAfterMs: 500 });
    expect(m.status).toBe(202);
    const op = await api.waitOperation(m.body.operation.id, 120);
    expect(op).toMatchObject({ status: 'succeeded', migration: { postcopy: true, phase: 'completed' } });
    await expectOnlyOn('b', id);
    const back = await api.post(`/v1/partitions/${id}/migrate`, { targetNode: 'mig-a' });
    expect((await api.waitOperation(back.body.operation.id, 120)).status).toBe('succeeded');
    await expectOnlyOn('a', id);
  });

  it('a destination SIGKILLed mid-migration leaves the guest on the source', async () => {
    const id = (await api.get('/v1/partitions?pageSize=10')).body.items.find((p: any) => p.name === 'live-vm').id;
    const opId = await slowMigration(id, 'b');
    const worker = workers.b!;
    const pids = qemuPids('b', id);
    expect(pids).toHaveLength(1);
    // The whole destination node dies: its agent and the receiving QEMU.
    worker.proc.kill('SIGKILL');
    for (const pid of pids) process.kill(pid, 'SIGKILL');
    const op = await api.waitOperation(opId, 120);
    expect(op.status).toBe('failed');
    expect((await api.get(`/v1/partitions/${id}`)).body).toMatchObject({ state: 'running', node: nodeIds['mig-a'] });
    // The node comes back and drops what was left of the incoming migration.
    if (worker.proc.exitCode === null && worker.proc.signalCode === null) await new Promise((r) => worker.proc.once('exit', r));
    startWorker('b');
    await waitUntil(async () => (await admin.get('/v1/nodes/mig-b')).body.state === 'ready', 60_000, 'mig-b back');
    await expectOnlyOn('a', id);
    expect(await sql(`SELECT name, allocated_memory_mib::int m FROM nodes WHERE id = ANY($1::uuid[]) ORDER BY name`, [Object.values(nodeIds)])).toEqual([
      { name: 'mig-a', m: 128 },
      { name: 'mig-b', m: 0 },
    ]);
  });

  it('a source worker restarted mid-migration cancels the migration nobody drives; the guest stays on the source', async () => {
    const id = (await api.get('/v1/partitions?pageSize=10')).body.items.find((p: any) => p.name === 'live-vm').id;
    const opId = await slowMigration(id, 'b');
    const worker = workers.a!;
    const guest = qemuPids('a', id);
    worker.proc.kill('SIGKILL'); // the agent only: its guests outlive it
    if (worker.proc.exitCode === null && worker.proc.signalCode === null) await new Promise((r) => worker.proc.once('exit', r));
    startWorker('a');
    const op = await api.waitOperation(opId, 120);
    expect(op.status).toBe('failed');
    expect(qemuPids('a', id)).toEqual(guest); // the same QEMU, adopted
    await expectOnlyOn('a', id);
  });

  it('a control plane SIGKILLed mid-migration is taken up by the next one; the guest ends on exactly one node', async () => {
    const id = (await api.get('/v1/partitions?pageSize=10')).body.items.find((p: any) => p.name === 'live-vm').id;
    const opId = await slowMigration(id, 'b', 3);
    cp.proc.kill('SIGKILL');
    await new Promise((r) => cp.proc.once('exit', r));
    cp = await spawnControlPlane(env);
    api = new Api(cp.url, api.token);
    admin = new Api(cp.url, admin.token);
    const op = await api.waitOperation(opId, 240);
    expect(op.status).toBe('succeeded');
    await expectOnlyOn('b', id);
    expect(await sql(`SELECT name, allocated_memory_mib::int m FROM nodes WHERE id = ANY($1::uuid[]) ORDER BY name`, [Object.values(nodeIds)])).toEqual([
      { name: 'mig-a', m: 0 },
      { name: 'mig-b', m: 128 },
    ]);
  });

  it('drain moves the partitions of a node away live and leaves it empty', async () => {
    const id = (await api.get('/v1/partitions?pageSize=10')).body.items.find((p: any) => p.name === 'live-vm').id;
    const dr = await admin.post('/v1/nodes/mig-b/drain', {});
    expect(dr.status).toBe(202);
    const op = await admin.waitOperation(dr.body.operation.id, 180);
    expect(op.status).toBe('succeeded');
    await expectOnlyOn('a', id);
    const migrations = (await api.get(`/v1/operations?targetId=${id}&pageSize=100`)).body.items.filter((o: any) => o.kind === 'partition.migrate');
    expect(migrations.at(-1)).toMatchObject({ status: 'succeeded', migration: { sourceNode: 'mig-b', targetNode: 'mig-a' } });
    expect((await admin.get('/v1/nodes/mig-b')).body.state).toBe('draining');
    expect((await admin.post('/v1/nodes/mig-b/uncordon')).status).toBe(200);
  });
});
