import { PARTITION_STATES, PartitionAction, PartitionState, assertCanPerform, assertTransition, canPerform, canTransition, PartitionStateError } from './partition-state';

describe('partition state machine', () => {
  const table: Array<[PartitionAction, PartitionState, boolean]> = [
    ['start', 'stopped', true],
    ['start', 'failed', true],
    ['start', 'running', false],
    ['start', 'deleting', false],
    ['stop', 'running', true],
    ['stop', 'starting', true],
    ['stop', 'stopped', false],
    ['reboot', 'running', true],
    ['reboot', 'stopped', false],
    ['reboot', 'starting', false],
    ['delete', 'running', true],
    ['delete', 'failed', true],
    ['delete', 'deleting', false],
    ['update', 'deleting', false],
  ];

  it.each(table)('%s from %s → allowed=%s', (action, state, allowed) => {
    expect(canPerform(action, state)).toBe(allowed);
  });

  it('names the partition and its current state in the 409 message', () => {
    expect(() => assertCanPerform('start', { name: 'web-1', state: 'running' })).toThrow(
      new PartitionStateError('start', 'web-1', 'running'),
    );
    try {
      assertCanPerform('reboot', { name: 'db', state: 'stopped' });
      throw new Error('expected a PartitionStateError');
    } catch (e) {
      expect(e).toBeInstanceOf(PartitionStateError);
      expect((e as PartitionStateError).code).toBe('FAILED_PRECONDITION');
      expect((e as Error).message).toBe('cannot reboot partition db: it is stopped');
    }
  });

  it('walks the happy path', () => {
    const path: PartitionState[] = ['pending', 'scheduled', 'starting', 'running', 'stopping', 'stopped', 'deleting'];
    for (let i = 1; i < path.length; i++) expect(canTransition(path[i - 1]!, path[i]!)).toBe(true);
  });

  it('lets every live state fail, and nothing leave deleting but failed', () => {
    for (const s of PARTITION_STATES) if (s !== 'failed') expect(canTransition(s, 'failed')).toBe(true);
    expect(canTransition('deleting', 'running')).toBe(false);
    expect(() => assertTransition('x', 'deleting', 'starting')).toThrow('partition x cannot go from deleting to starting');
  });

  it('refuses skipping straight from pending to running', () => {
    expect(canTransition('pending', 'running')).toBe(false);
  });
});
