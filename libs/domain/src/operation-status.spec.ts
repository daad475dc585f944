import { OPERATION_STATUSES, assertOperationTransition, canTransitionOperation, cancelRefusal, isFinal } from './operation-status';

describe('operation status', () => {
  it('has three final statuses that never change', () => {
    const finals = OPERATION_STATUSES.filter(isFinal);
    expect(finals).toEqual(['succeeded', 'failed', 'cancelled']);
    for (const f of finals) for (const to of OPERATION_STATUSES) expect(canTransitionOperation(f, to)).toBe(false);
  });

  it.each([
    ['pending', 'running', true],
    ['pending', 'cancelled', true],
    ['running', 'succeeded', true],
    ['running', 'pending', false],
    ['succeeded', 'failed', false],
  ] as const)('%s → %s allowed=%s', (from, to, ok) => {
    expect(canTransitionOperation(from, to)).toBe(ok);
  });

  it('throws with both statuses in the message', () => {
    expect(() => assertOperationTransition('op1', 'succeeded', 'running')).toThrow('operation op1 cannot go from succeeded to running');
  });

  it.each([
    // Any live operation before it started (its request's records are undone).
    ['snapshot.revert', 'pending', {}, undefined, undefined],
    ['partition.delete', 'pending', {}, undefined, undefined],
    // Running: kinds that stop halfway without leaving anything half done.
    ['partition.create', 'running', {}, undefined, undefined],
    ['partition.start', 'running', {}, undefined, undefined],
    ['node.drain', 'running', {}, undefined, undefined],
    ['image.import', 'running', {}, undefined, undefined],
    ['partition.migrate', 'running', { live: true }, undefined, undefined],
    ['partition.migrate', 'running', { live: true }, { mode: 'live', phase: 'preparing' }, undefined],
    ['partition.migrate', 'running', { live: true }, { mode: 'live', phase: 'storage' }, undefined],
    ['partition.migrate', 'running', { live: true }, { mode: 'live', phase: 'memory' }, undefined],
    // Running: the rest.
    ['partition.migrate', 'running', { live: true }, { mode: 'live', phase: 'postcopy' }, 'past pre-copy (phase postcopy)'],
    ['partition.migrate', 'running', { live: true }, { mode: 'live', phase: 'switchover' }, 'past pre-copy (phase switchover)'],
    ['partition.migrate', 'running', { live: true }, { mode: 'live', phase: 'cancelled' }, 'the migration is ending (phase cancelled)'],
    ['partition.migrate', 'running', { live: false }, { mode: 'cold', phase: 'storage' }, 'a cold migration is not stopped halfway'],
    ['partition.migrate', 'running', { live: false }, { mode: 'cold', phase: 'preparing' }, undefined],
    ['partition.migrate', 'running', {}, undefined, undefined],
    ['partition.stop', 'running', {}, undefined, 'a partition.stop operation cannot be cancelled once it has started: the node is stopping the guest'],
    ['partition.delete', 'running', {}, undefined, 'the node is removing the guest and its files'],
    ['snapshot.create', 'running', {}, undefined, "QEMU's snapshot save is not stopped halfway"],
    ['snapshot.revert', 'running', {}, undefined, "QEMU's snapshot load is not stopped halfway"],
    ['service-chain.add-link', 'running', {}, undefined, 'its steps are not stopped halfway'],
    // Final: nothing to cancel.
    ['partition.create', 'succeeded', {}, undefined, 'it is succeeded'],
    ['partition.migrate', 'cancelled', { live: true }, undefined, 'it is cancelled'],
  ] as const)('%s %s %j %j: refused for %s', (kind, status, params, migration, refusal) => {
    const why = cancelRefusal({ kind, status, params, migration });
    if (refusal === undefined) expect(why).toBeUndefined();
    else expect(why).toContain(refusal);
  });
});
