import { INCOMING_MIGRATION_REASON, PartitionState } from '@hyperplane/domain';
import type { agentV1 } from '@hyperplane/proto';
import { AgentsService, impliedState } from './agents.service';
import { Desired, PartitionRow } from '../partitions/partition.repository';

describe('impliedState: what a node report means for the record', () => {
  const table: Array<[PartitionState, Desired, string, PartitionState | null]> = [
    ['starting', 'running', 'running', 'running'],
    ['scheduled', 'running', 'starting', 'starting'],
    // A node that has not acted on the start yet still says stopped: keep waiting.
    ['starting', 'running', 'stopped', null],
    // The guest powered itself off while it should run: the record says stopped.
    ['running', 'running', 'stopped', 'stopped'],
    // A stop is in progress and the guest still runs.
    ['stopping', 'stopped', 'running', 'stopping'],
    ['stopping', 'stopped', 'stopped', 'stopped'],
    ['running', 'running', 'failed', 'failed'],
    // The guest vanished from a node that should run it.
    ['running', 'running', 'absent', 'failed'],
    ['stopped', 'stopped', 'absent', null],
    // A partition being deleted stays deleting whatever the node says.
    ['deleting', 'absent', 'running', null],
    ['deleting', 'absent', 'absent', null],
    ['running', 'running', 'something-new', null],
    // A migration decides where a migrating partition is: "migrated away" from the source does not fail it.
    ['migrating', 'running', 'absent', null],
    ['migrating', 'running', 'running', null],
    ['migrating', 'stopped', 'stopped', null],
  ];

  it.each(table)('record %s (desired %s), node says %s → %s', (state, desired, observed, expected) => {
    expect(impliedState({ state, desired }, observed)).toBe(expected);
  });
});

describe('AgentsService.onStatus: a partition a node receives by live migration', () => {
  const NODE = '01900000-0000-7000-8000-0000000000b1';
  const OTHER = '01900000-0000-7000-8000-0000000000b2';
  const P = '01900000-0000-7000-8000-0000000000c1';
  const incoming = { id: P, state: 'starting', reason: INCOMING_MIGRATION_REASON, generation: '4', pid: 0 } as unknown as agentV1.PartitionStatus__Output;

  function service(row: Partial<PartitionRow> | undefined) {
    const sent: Array<[string, unknown]> = [];
    const observed: unknown[] = [];
    const partitions = { getById: async () => row, observe: async (...args: unknown[]) => void observed.push(args) };
    const sessions = { send: (nodeId: string, msg: unknown) => void sent.push([nodeId, msg]) };
    const s = new AgentsService({} as never, partitions as never, sessions as never, {} as never, {} as never, {} as never, {} as never, {} as never, {} as never, {} as never, {} as never);
    return { s, sent, observed };
  }

  it.each([
    ['the record says it migrates to the node', { node_id: OTHER, target_node_id: NODE, state: 'migrating' as const }],
    // The migration completed: the record names the node while it resumes the guest.
    ['the record moved to the node and the node still receives it', { node_id: NODE, target_node_id: null, state: 'running' as const }],
  ])('is left to the migration when %s: nothing recorded, nothing sent', async (_what, row) => {
    const { s, sent, observed } = service({ id: P, desired: 'running', ...row });
    await s.onStatus(NODE, incoming);
    expect(sent).toEqual([]);
    expect(observed).toEqual([]);
  });

  it.each([
    ['its migration ended without the node', { id: P, node_id: OTHER, target_node_id: null, state: 'running' as const, desired: 'running' as const }],
    ['the partition is gone', undefined],
  ])('is dropped when %s (the node reports it again every minute until it goes)', async (_what, row) => {
    const { s, sent, observed } = service(row);
    await s.onStatus(NODE, incoming);
    expect(sent).toEqual([[NODE, { upsert: { id: P, desired: 'absent', generation: 5 } }]]);
    expect(observed).toEqual([]);
  });
});
