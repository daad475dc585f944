import { PartitionState } from '@hyperplane/domain';
import { impliedState } from './agents.service';
import { Desired } from '../partitions/partition.repository';

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
