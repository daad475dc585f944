import { OPERATION_STATUSES, assertOperationTransition, canTransitionOperation, isCancellable, isFinal } from './operation-status';

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

  it('only cancels live operations', () => {
    expect(isCancellable('running')).toBe(true);
    expect(isCancellable('failed')).toBe(false);
  });
});
