import type { DataSource } from 'typeorm';
import type { AgentSessions } from '../agents/agent-sessions';
import type { Config } from '../config';
import type { EventBus, HpEvent } from '../events/event-bus';
import type { PartitionImages } from '../images/partition-images';
import type { NodeRepository } from '../nodes/node.repository';
import type { OperationContext, OperationRunner } from '../operations/operation-runner';
import type { OperationRow } from '../operations/operation.repository';
import { PartitionOperations } from './partition-operations';
import type { PartitionRepository, PartitionRow } from './partition.repository';

const base = { id: 'p1', name: 'vm', node_id: 'n1', project_id: 'pr', generation: 3, observed_generation: 2, version: 1, labels: {}, memory_mib: 64, created_at: new Date(), updated_at: new Date() } as unknown as PartitionRow;
const rowOf = (r: Partial<PartitionRow>): PartitionRow => ({ ...base, ...r }) as PartitionRow;

/**
 * The handlers over fakes: `db` is the partition as the database holds it (what a read answers);
 * `node` plays the agent for the stop command (it may change `db` and report before it answers).
 */
function setup(db: { row: PartitionRow }, node: { onStop: () => void }) {
  const listeners = new Set<(e: HpEvent, record?: unknown) => void>();
  const events = {
    subscribeTo: (_id: string, fn: (e: HpEvent, record?: unknown) => void) => {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
    publish: async (e: Omit<HpEvent, 'id' | 'at'>, record?: unknown) => {
      for (const fn of [...listeners]) fn({ ...e, id: 'e', at: '' }, record);
    },
  } as unknown as EventBus;
  const reads: string[] = [];
  const partitions = {
    getById: async (id: string) => {
      reads.push(id);
      return db.row;
    },
    setDesired: async (_db: unknown, _id: string, desired: string, state: string) => {
      db.row = rowOf({ ...db.row, desired, state, generation: Number(db.row.generation) + 1 } as Partial<PartitionRow>);
      return db.row;
    },
  } as unknown as PartitionRepository;
  const sessions = {
    sync: async () => true,
    command: async () => {
      node.onStop();
      return { ok: true };
    },
  } as unknown as AgentSessions;
  const ops = new PartitionOperations({} as OperationRunner, partitions, {} as NodeRepository, sessions, events, { manager: {} } as unknown as DataSource, { operationTimeoutMs: 60_000 } as Config, {} as PartitionImages);
  const ctx: OperationContext = { signal: new AbortController().signal, progress: async () => undefined, succeedWith: () => undefined };
  return { ops, ctx, reads, events };
}

describe('PartitionOperations', () => {
  it('a stop whose node reported the guest stopped before answering the command ends at once, not at the next poll', async () => {
    const db = { row: rowOf({ state: 'running', desired: 'running', observed_state: 'running' } as Partial<PartitionRow>) };
    const { ops, ctx, reads, events } = setup(db, {
      // The agent stops the guest and reports it (recorded, and told to this replica's listeners)
      // before its answer to the command: nobody waits on the partition yet.
      onStop: () => {
        db.row = rowOf({ ...db.row, state: 'stopped', observed_state: 'stopped', observed_generation: db.row.generation } as Partial<PartitionRow>);
        void events.publish({ type: 'partition.updated', resourceType: 'partition', resourceId: 'p1', projectId: 'pr', data: null }, db.row);
      },
    });
    const op = { id: 'o1', kind: 'partition.stop', target_id: 'p1', params: { force: true } } as unknown as OperationRow;
    const t0 = Date.now();
    await ops.handleStop(op, ctx);
    expect(Date.now() - t0).toBeLessThan(500); // the poll runs every 1,000 ms
    expect(reads).toEqual(['p1', 'p1']); // the start of the handler, and the first check of the wait
  });

  it('a start judges the row it wrote and the rows the node\'s reports carry, without reading them', async () => {
    const db = { row: rowOf({ state: 'stopped', desired: 'stopped', observed_state: 'stopped' } as Partial<PartitionRow>) };
    const { ops, ctx, reads, events } = setup(db, { onStop: () => undefined });
    (ops as unknown as { images: Partial<PartitionImages> }).images = { beforeStart: async () => undefined };
    const op = { id: 'o2', kind: 'partition.start', target_id: 'p1', params: {} } as unknown as OperationRow;
    const done = ops.handleStart(op, ctx, db.row);
    await new Promise((r) => setImmediate(r));
    const report = (observed: string, state: string) => {
      db.row = rowOf({ ...db.row, state, observed_state: observed, observed_generation: db.row.generation } as Partial<PartitionRow>);
      void events.publish({ type: 'partition.updated', resourceType: 'partition', resourceId: 'p1', projectId: 'pr', data: null }, db.row);
    };
    report('starting', 'starting');
    report('running', 'running');
    await done;
    expect(reads).toEqual([]);
  });

  it('a create cancelled while its image comes to the node ends cancelled with the partition stopped, and the node is never told to run it', async () => {
    const db = { row: rowOf({ state: 'scheduled', desired: 'running', observed_state: '' } as Partial<PartitionRow>) };
    const { ops, reads } = setup(db, { onStop: () => undefined });
    const told: unknown[] = [];
    (ops as unknown as { sessions: Partial<AgentSessions> }).sessions = { sync: async (...a: unknown[]) => (told.push(a), true) };
    const ac = new AbortController();
    const ctx: OperationContext = { signal: ac.signal, progress: async () => undefined, succeedWith: () => undefined };
    // The image fetch to the node stops on the cancel (ImageDistribution honours the signal).
    (ops as unknown as { images: Partial<PartitionImages> }).images = {
      beforeStart: (_op, _row, c) => new Promise((_r, reject) => c.signal.addEventListener('abort', () => reject(new Error('fetch aborted')))),
    };
    const op = { id: 'o3', kind: 'partition.create', target_id: 'p1', params: {} } as unknown as OperationRow;
    const done = ops.handleStart(op, ctx, db.row);
    ac.abort();
    await expect(done).rejects.toThrow('start cancelled; the partition is stopped');
    expect(db.row).toMatchObject({ state: 'stopped', desired: 'stopped' });
    expect(told).toEqual([]);
    expect(reads).toEqual(['p1']);
  });
});
