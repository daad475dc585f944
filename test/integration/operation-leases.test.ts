/**
 * The leases under which a replica runs an operation it accepted, without a queued job, against
 * the real database: a job cannot start an operation while a live replica holds it; once the
 * lease has run out (the replica died), a job takes it over as a new attempt.
 */
import { DataSource } from 'typeorm';
import { createDataSource, migrate } from '../../apps/control-plane/src/database/database';
import { uuidv7 } from '@hyperplane/domain';
import { OperationRepository } from '../../apps/control-plane/src/operations/operation.repository';
import { sql } from '../helpers/db';

let ds: DataSource;
let ops: OperationRepository;

beforeAll(async () => {
  ds = await createDataSource(process.env.DATABASE_URL!, 2).initialize();
  await migrate(ds); // the schema, when this file runs first
  ops = new OperationRepository(ds);
});

afterAll(async () => {
  await ds?.destroy();
});

const newOp = () => ({ id: uuidv7(), projectId: null, kind: 'lease.test', targetType: 'partition', targetId: uuidv7() });

it('an operation recorded under a lease is running, first attempt; a job does not start it while the lease holds', async () => {
  const op = await ops.insert(ds.manager, newOp(), { owner: 'replica-a', ms: 10_000 });
  expect(op).toMatchObject({ status: 'running', attempts: 1, lease_owner: 'replica-a' });
  expect(op.started_at).not.toBeNull();
  expect(op.lease_until!.getTime() - op.started_at!.getTime()).toBeGreaterThanOrEqual(9_900);

  expect(await ops.markRunning(op.id)).toBeUndefined();
  expect((await ops.live()).find((o) => o.id === op.id)).toMatchObject({ leased: true });
  expect((await ops.get(op.id))).toMatchObject({ status: 'running', attempts: 1, lease_owner: 'replica-a' });
});

it('only the owner renews a lease, and only while the operation runs', async () => {
  const op = await ops.insert(ds.manager, newOp(), { owner: 'replica-a', ms: 1_000 });
  expect(await ops.renewLeases('replica-b', [op.id], 60_000)).toEqual([]);
  expect(await ops.renewLeases('replica-a', [op.id], 60_000)).toEqual([op.id]);
  const renewed = (await ops.get(op.id))!;
  expect(renewed.lease_until!.getTime() - Date.now()).toBeGreaterThan(30_000);
  await ops.finish(op.id, 'succeeded', null);
  expect(await ops.renewLeases('replica-a', [op.id], 60_000)).toEqual([]);
});

it('once the lease ran out, a job takes the operation over as its next attempt', async () => {
  const op = await ops.insert(ds.manager, newOp(), { owner: 'replica-a', ms: 10_000 });
  await sql(`UPDATE operations SET lease_until = now() - interval '1 second' WHERE id = $1`, [op.id]);
  expect((await ops.live()).find((o) => o.id === op.id)).toMatchObject({ leased: false });
  const taken = await ops.markRunning(op.id);
  expect(taken).toMatchObject({ status: 'running', attempts: 2, lease_owner: null, lease_until: null });
  expect(await ops.renewLeases('replica-a', [op.id], 10_000)).toEqual([]); // the old owner lost it
});

it('without a lease an operation is recorded pending, for its job to start', async () => {
  const op = await ops.insert(ds.manager, newOp());
  expect(op).toMatchObject({ status: 'pending', attempts: 0, started_at: null, lease_owner: null, lease_until: null });
  expect(await ops.markRunning(op.id)).toMatchObject({ status: 'running', attempts: 1 });
});

it('records the first `leased` operations of a batch running under the lease, the rest pending, in order', async () => {
  const batch = [newOp(), newOp(), newOp()];
  const rows = await ops.insertRows(ds.manager, batch, { owner: 'replica-a', ms: 10_000 }, 2);
  expect(rows.map((r) => r.id)).toEqual(batch.map((o) => o.id));
  expect(rows.map((r) => [r.status, r.attempts, r.lease_owner])).toEqual([['running', 1, 'replica-a'], ['running', 1, 'replica-a'], ['pending', 0, null]]);
  expect(rows[0]!.lease_until!.getTime() - rows[0]!.started_at!.getTime()).toBeGreaterThanOrEqual(9_900);
  expect(rows[2]).toMatchObject({ started_at: null, lease_until: null });
  expect(await ops.markRunning(rows[0]!.id)).toBeUndefined(); // a job does not start a leased one
  expect(await ops.markRunning(rows[2]!.id)).toMatchObject({ status: 'running', attempts: 1 });
  const none = await ops.insertRows(ds.manager, [newOp()]);
  expect(none[0]).toMatchObject({ status: 'pending', lease_owner: null });
});
