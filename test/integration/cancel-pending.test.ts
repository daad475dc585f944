/**
 * An operation cancelled before any handler ran undoes what its request recorded: a migration
 * leaves the partition where it was with the destination's capacity given back; a snapshot being
 * created is not listed; a snapshot being deleted is ready again. An undo that fails leaves the
 * operation pending with its cancel asked for, to be undone again. The control plane here only
 * serves the API (HYPERPLANE_ROLE=api), so every operation stays pending until it is cancelled.
 */
import { Api, clusterAdminToken, InProcess, startInProcess } from '../helpers/control-plane';
import { Client } from 'pg';
import { seedNode, sql } from '../helpers/db';
import { PartitionRepository } from '../../apps/control-plane/src/partitions/partition.repository';
import { UNDO_LEASE_MS } from '../../apps/control-plane/src/operations/operations.service';

jest.setTimeout(60_000);

let cp: InProcess;
let api: Api;
let partitionId: string;
const nodeIds: Record<string, string> = {};

/** Lets the partition's pending operations count as done, as a worker would have made them. */
async function settle(id: string, state = 'running'): Promise<void> {
  await sql(`UPDATE operations SET status = 'succeeded', finished_at = now() WHERE target_id = $1 AND status IN ('pending', 'running')`, [id]);
  await sql(`UPDATE partitions SET state = $2 WHERE id = $1`, [id, state]);
}

const allocated = async (node: string) => Number((await sql<{ m: string }>(`SELECT allocated_memory_mib AS m FROM nodes WHERE id = $1`, [nodeIds[node]]))[0]!.m);

beforeAll(async () => {
  cp = await startInProcess({ HYPERPLANE_ROLE: 'api' });
  nodeIds.a = await seedNode('cancel-pending-a');
  nodeIds.b = await seedNode('cancel-pending-b');
  const admin = new Api(cp.url, await clusterAdminToken());
  api = (await admin.newProject('cancel-pending', 'operator')).api;
  const created = await api.post('/v1/partitions', { name: 'p', vcpus: 1, memoryMiB: 256, image: 'sample', placement: { node: 'cancel-pending-a' } });
  expect(created.status).toBe(202);
  partitionId = created.body.partition.id;
  await settle(partitionId);
});

afterAll(async () => {
  await cp?.close();
});

it('a migration cancelled while pending leaves the partition on its node and frees the destination', async () => {
  const m = await api.post(`/v1/partitions/${partitionId}/migrate`, { targetNode: 'cancel-pending-b', storage: 'shared' });
  expect(m.status).toBe(202);
  expect(m.body.partition.state).toBe('migrating');
  expect(await allocated('b')).toBe(256); // held while it migrates

  const c = await api.post(`/v1/operations/${m.body.operation.id}/cancel`);
  expect(c.status).toBe(200);
  expect(c.body.status).toBe('cancelled');

  const p = await api.get(`/v1/partitions/${partitionId}`);
  expect(p.body).toMatchObject({ state: 'running', node: nodeIds.a });
  expect((await sql<{ t: string | null }>(`SELECT target_node_id AS t FROM partitions WHERE id = $1`, [partitionId]))[0]!.t).toBeNull();
  expect(await allocated('b')).toBe(0);
  expect(await allocated('a')).toBe(256);
  // And it can migrate again.
  const again = await api.post(`/v1/partitions/${partitionId}/migrate`, { targetNode: 'cancel-pending-b', storage: 'shared' });
  expect(again.status).toBe(202);
  await api.post(`/v1/operations/${again.body.operation.id}/cancel`);
  expect(await allocated('b')).toBe(0);
});

it('a snapshot cancelled while pending is not listed; a delete cancelled while pending leaves it ready', async () => {
  const s = await api.post(`/v1/partitions/${partitionId}/snapshots`, { name: 'never' });
  expect(s.status).toBe(202);
  expect((await api.post(`/v1/operations/${s.body.operation.id}/cancel`)).body.status).toBe('cancelled');
  expect((await api.get(`/v1/partitions/${partitionId}/snapshots`)).body.items).toEqual([]);

  const kept = await api.post(`/v1/partitions/${partitionId}/snapshots`, { name: 'kept' });
  await sql(`UPDATE snapshots SET state = 'ready' WHERE id = $1`, [kept.body.snapshot.id]);
  await settle(partitionId);
  const d = await api.delete(`/v1/partitions/${partitionId}/snapshots/${kept.body.snapshot.id}`);
  expect(d.status).toBe(202);
  expect((await api.post(`/v1/operations/${d.body.operation.id}/cancel`)).body.status).toBe('cancelled');
  const list = (await api.get(`/v1/partitions/${partitionId}/snapshots`)).body.items;
  expect(list).toEqual([expect.objectContaining({ name: 'kept', state: 'ready' })]);

  // A revert is recorded as current with its request; cancelled while pending, the snapshot
  // current before (here: none) is current again.
  expect((await api.get(`/v1/partitions/${partitionId}/snapshots/${kept.body.snapshot.id}`)).body.current).toBe(false);
  const r = await api.post(`/v1/partitions/${partitionId}/snapshots/${kept.body.snapshot.id}/revert`);
  expect(r.status).toBe(202);
  expect(r.body.snapshot.current).toBe(true);
  expect((await api.post(`/v1/operations/${r.body.operation.id}/cancel`)).body.status).toBe('cancelled');
  expect((await api.get(`/v1/partitions/${partitionId}/snapshots/${kept.body.snapshot.id}`)).body.current).toBe(false);
  expect((await sql<{ c: string | null }>(`SELECT current_snapshot_id AS c FROM partitions WHERE id = $1`, [partitionId]))[0]!.c).toBeNull();
});

it('a running operation whose kind cannot stop halfway refuses a cancel with the reason and is left as it was; one that can is flagged', async () => {
  const kept = await api.post(`/v1/partitions/${partitionId}/snapshots`, { name: 'running-revert' });
  await sql(`UPDATE snapshots SET state = 'ready' WHERE id = $1`, [kept.body.snapshot.id]);
  await settle(partitionId);
  const r = await api.post(`/v1/partitions/${partitionId}/snapshots/${kept.body.snapshot.id}/revert`);
  expect(r.status).toBe(202);
  expect(r.body.operation.mayCancel).toBe(true); // pending: its request's records would be undone
  const op = r.body.operation.id;
  // A node is loading the snapshot now.
  await sql(`UPDATE operations SET status = 'running', started_at = now() WHERE id = $1`, [op]);
  expect((await api.get(`/v1/operations/${op}`)).body).toMatchObject({ status: 'running', mayCancel: false });
  const c = await api.post(`/v1/operations/${op}/cancel`);
  expect(c.status).toBe(409);
  expect(c.headers.get('content-type')).toContain('application/problem+json');
  expect(c.body.code).toBe('FAILED_PRECONDITION');
  expect(c.body.detail).toBe(`cannot cancel operation ${op}: a snapshot.revert operation cannot be cancelled once it has started: QEMU's snapshot load is not stopped halfway (the guest's state would be neither the old nor the new)`);
  expect((await sql<{ c: boolean; s: string }>(`SELECT cancel_requested AS c, status AS s FROM operations WHERE id = $1`, [op]))[0]).toEqual({ c: false, s: 'running' });
  expect((await api.get(`/v1/partitions/${partitionId}/snapshots/${kept.body.snapshot.id}`)).body.current).toBe(true);
  // Another action meanwhile is refused for it, and told to wait, not to cancel.
  const stop = await api.post(`/v1/partitions/${partitionId}/stop`, { force: true });
  expect(stop.status).toBe(409);
  expect(stop.body.detail).toBe(`cannot stop partition p: operation ${op} (snapshot.revert) is in progress; wait for it (it cannot be cancelled now)`);
  await settle(partitionId);

  // A running start can be cancelled (it stops the partition again): flagged for its handler.
  const s = await api.post(`/v1/partitions/${partitionId}/stop`, { force: true });
  await settle(partitionId, 'stopped');
  const started = await api.post(`/v1/partitions/${partitionId}/start`);
  expect(started.status).toBe(202);
  await sql(`UPDATE operations SET status = 'running', started_at = now() WHERE id = $1`, [started.body.operation.id]);
  const ok = await api.post(`/v1/operations/${started.body.operation.id}/cancel`);
  expect(ok.status).toBe(200);
  expect(ok.body).toMatchObject({ status: 'running', mayCancel: true });
  expect((await sql<{ c: boolean }>(`SELECT cancel_requested AS c FROM operations WHERE id = $1`, [started.body.operation.id]))[0]!.c).toBe(true);
  expect(s.status).toBe(202);
  await settle(partitionId);
});

it('an undo that fails (here: the database refuses the partition update) leaves the operation pending with its cancel asked for; the next cancel undoes it and cancels it', async () => {
  const m = await api.post(`/v1/partitions/${partitionId}/migrate`, { targetNode: 'cancel-pending-b', storage: 'shared' });
  expect(m.status).toBe(202);
  const op = m.body.operation.id;
  // A failure injected where the undo writes: every update of this migrating partition fails.
  await sql(`CREATE OR REPLACE FUNCTION hp_test_refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql`);
  await sql(`CREATE TRIGGER hp_test_refuse BEFORE UPDATE ON partitions FOR EACH ROW WHEN (OLD.id = '${partitionId}' AND OLD.state = 'migrating') EXECUTE FUNCTION hp_test_refuse()`);
  try {
    const c = await api.post(`/v1/operations/${op}/cancel`);
    expect(c.status).toBe(200);
    expect(c.body.status).toBe('pending');
    expect((await sql<{ c: boolean }>(`SELECT cancel_requested AS c FROM operations WHERE id = $1`, [op]))[0]!.c).toBe(true);
    expect((await api.get(`/v1/partitions/${partitionId}`)).body.state).toBe('migrating');
    expect(await allocated('b')).toBe(256); // still held: the migration is not undone yet
  } finally {
    await sql(`DROP TRIGGER IF EXISTS hp_test_refuse ON partitions`);
    await sql(`DROP FUNCTION IF EXISTS hp_test_refuse()`);
  }
  // The operation says why; the partition stays blocked for other actions until it is undone.
  // (A database error is not shown to the project: its text may name internals.)
  expect((await api.get(`/v1/operations/${op}`)).body.phase).toBe('cancelling: the undo failed (an internal error: see the control plane log); it is tried again');
  expect((await sql<{ m: Record<string, unknown> }>(`SELECT metadata AS m FROM operations WHERE id = $1`, [op]))[0]!.m).not.toHaveProperty('undoClaim'); // given up
  expect((await api.post(`/v1/partitions/${partitionId}/stop`, {})).status).toBe(409);

  // An undo under way elsewhere (its claim is fresh) is not run a second time alongside it.
  const claim = (ageMs: number) => sql(`UPDATE operations SET metadata = metadata || jsonb_build_object('undoClaim', jsonb_build_object('token', 'elsewhere', 'at', floor(extract(epoch FROM now()) * 1000)::bigint - $2)) WHERE id = $1`, [op, ageMs]);
  await claim(0);
  expect((await api.post(`/v1/operations/${op}/cancel`)).body.status).toBe('pending');
  expect((await api.get(`/v1/partitions/${partitionId}`)).body.state).toBe('migrating');
  // A claim older than the lease is one whose replica died: the next cancel takes it over.
  await claim(UNDO_LEASE_MS + 1_000);
  const again = await api.post(`/v1/operations/${op}/cancel`);
  expect(again.status).toBe(200);
  expect(again.body.status).toBe('cancelled');
  expect(again.body.phase).toBe(''); // what the failed undo said is gone with it
  expect((await api.get(`/v1/partitions/${partitionId}`)).body).toMatchObject({ state: 'running', node: nodeIds.a });
  expect(await allocated('b')).toBe(0);
});

it('the end of a migration on behalf of one operation (an undo that ran late) leaves a newer migration of the partition alone', async () => {
  const repo = new PartitionRepository({} as never);
  const c = new Client({ connectionString: process.env.DATABASE_URL });
  await c.connect();
  const db = { query: async (text: string, params: unknown[]) => (await c.query(text, params)).rows } as never;
  try {
    const newer = await api.post(`/v1/partitions/${partitionId}/migrate`, { targetNode: 'cancel-pending-b', storage: 'shared' });
    expect(newer.status).toBe(202);
    const older = (await sql<{ id: string }>(`SELECT id FROM operations WHERE target_id = $1 AND kind = 'partition.migrate' AND status = 'cancelled' ORDER BY id LIMIT 1`, [partitionId]))[0]!.id;
    expect(await repo.endMigrationReleasing(db, partitionId, false, 'running', '', nodeIds.b!, older)).toBeUndefined();
    expect((await api.get(`/v1/partitions/${partitionId}`)).body.state).toBe('migrating');
    expect(await allocated('b')).toBe(256);
    // On behalf of the newer one itself, it ends.
    expect(await repo.endMigrationReleasing(db, partitionId, false, 'running', '', nodeIds.b!, newer.body.operation.id)).toMatchObject({ state: 'running' });
    expect(await allocated('b')).toBe(0);
    expect((await api.post(`/v1/operations/${newer.body.operation.id}/cancel`)).body.status).toBe('cancelled');
    expect(await allocated('b')).toBe(0); // given back once
  } finally {
    await c.end();
  }
});
