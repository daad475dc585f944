/**
 * With TLS credentials on both nodes, a live migration is encrypted: a marker the guest keeps in
 * its memory crosses the network in a plaintext migration (checked first, between two nodes
 * without TLS, so the check can fail) and does not in an encrypted one. Also: a node with TLS and
 * one without cannot migrate to each other (clear error, nothing changed). Real workers, real
 * QEMU, tcpdump on loopback, certificates made with openssl.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Api, clusterAdminToken, InProcess, startInProcess, waitUntil } from '../helpers/control-plane';
import { captureHost } from '../helpers/capture';
import { typeOnConsole } from '../helpers/console';
import { describeWithGuest, GUEST, killQemusUnder } from '../helpers/guest';
import { retireAllNodes, sql } from '../helpers/db';
import { makeTlsDirs } from '../helpers/tls';
import { spawnWorker, WorkerProcess } from '../helpers/worker';

const d = describeWithGuest('the migration TLS test', ['tcpdump', 'openssl']);

jest.setTimeout(240_000);

const dir = mkdtempSync(join(tmpdir(), 'hp-tls-e2e-'));
const NODES = [
  { name: 'tls-a', address: '127.0.0.71', tls: true },
  { name: 'tls-b', address: '127.0.0.72', tls: true },
  { name: 'plain-c', address: '127.0.0.73', tls: false },
  { name: 'plain-d', address: '127.0.0.74', tls: false },
];
let cp: InProcess;
let api: Api;
let token: string;
const workers: WorkerProcess[] = [];

/** A guest that holds a marker in memory many times over (a shell variable). */
async function guestWithMarker(name: string, node: string, marker: string): Promise<string> {
  const c = await api.post('/v1/partitions', { name, vcpus: 1, memoryMiB: 128, image: 'sample', placement: { node } });
  expect((await api.waitOperation(c.body.operation.id, 120)).status).toBe('succeeded');
  const id = c.body.partition.id;
  await waitUntil(async () => String((await api.get(`/v1/partitions/${id}/console`)).body.data ?? '').includes('HYPERPLANE-GUEST-READY'), 90_000, 'guest ready');
  // The marker is built in the guest, so only its memory has it whole (what is typed is split).
  const [left, right] = [marker.slice(0, 6), marker.slice(6)];
  await typeOnConsole(cp.url, token, id, `M=$(i=0; while [ $i -lt 3000 ]; do printf '%s%s ' ${left} ${right}; i=$((i+1)); done); echo held-\${#M}`, 'held-');
  return id;
}

/** Migrates `id` to `to` while capturing the traffic of `to`; returns the captured bytes. */
async function migrateCaptured(id: string, to: { name: string; address: string }): Promise<Buffer> {
  const cap = await captureHost(to.address, join(dir, `${to.name}.pcap`));
  const m = await api.post(`/v1/partitions/${id}/migrate`, { targetNode: to.name });
  expect(m.status).toBe(202);
  const op = await api.waitOperation(m.body.operation.id, 120);
  const bytes = await cap.stop();
  expect(op).toMatchObject({ status: 'succeeded', migration: { phase: 'completed' } });
  return bytes;
}

d('encrypted migration', () => {
  beforeAll(async () => {
    await retireAllNodes();
    const tls = makeTlsDirs(join(dir, 'tls'), NODES.filter((n) => n.tls).map((n) => n.name));
    cp = await startInProcess({ HYPERPLANE_GUEST_DIR: GUEST });
    for (const n of NODES) {
      workers.push(spawnWorker({ name: n.name, address: n.address, controlPlane: cp.grpcAddress, dataDir: join(dir, n.name), driver: 'qemu', extra: n.tls ? ['--tls-dir', tls[n.name]!] : [], env: { HYPERPLANE_GUEST_DIR: GUEST, HYPERPLANE_DATA_DIR: dir } }));
    }
    const admin = new Api(cp.url, await clusterAdminToken());
    await waitUntil(async () => ((await admin.get('/v1/nodes?state=ready')).body.items ?? []).filter((n: any) => NODES.some((x) => x.name === n.name)).length === NODES.length, 60_000, 'workers registered');
    ({ api, token } = await admin.newProject('tls-e2e', 'operator'));
  });

  afterAll(async () => {
    await Promise.all(workers.map((w) => w.stop()));
    killQemusUnder(dir);
    await cp?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('without TLS the guest memory crosses the network in clear; with TLS it does not', async () => {
    const marker = `hpmark${Date.now().toString(36)}q`;
    const plain = await guestWithMarker('plain-vm', 'plain-c', marker);
    const clear = await migrateCaptured(plain, NODES[3]!);
    expect(clear.includes(Buffer.from(marker))).toBe(true);

    const secret = await guestWithMarker('tls-vm', 'tls-a', marker);
    const enc = await migrateCaptured(secret, NODES[1]!);
    expect(enc.length).toBeGreaterThan(1024 * 1024); // the stream was captured
    expect(enc.includes(Buffer.from(marker))).toBe(false);
    // The guest runs on the destination, heartbeat going.
    const p = (await api.get(`/v1/partitions/${secret}`)).body;
    expect(p.state).toBe('running');
    await waitUntil(async () => /hb \d+/.test(String((await api.get(`/v1/partitions/${secret}/console`)).body.data ?? '')), 30_000, 'heartbeat on the destination');
  });

  it('a node with TLS and one without cannot migrate to each other', async () => {
    const id = (await api.get('/v1/partitions?pageSize=10')).body.items.find((p: any) => p.name === 'tls-vm').id;
    const before = await sql(`SELECT state, node_id, version FROM partitions WHERE id = $1`, [id]);
    const r = await api.post(`/v1/partitions/${id}/migrate`, { targetNode: 'plain-c' });
    expect(r.status).toBe(409);
    expect(r.body.detail).toBe('cannot migrate partition tls-vm from node tls-b to node plain-c: node tls-b encrypts migrations (TLS) and node plain-c has no TLS credentials');
    expect(await sql(`SELECT state, node_id, version FROM partitions WHERE id = $1`, [id])).toEqual(before);
  });
});
