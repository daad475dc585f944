import { backoffDelay, RECONNECT_BACKOFF } from './backoff';

describe('backoffDelay', () => {
  it('doubles from 0.5 s and stays at 10 s (no jitter at random = 0)', () => {
    expect([0, 1, 2, 3, 4, 5, 6, 20].map((n) => backoffDelay(n, RECONNECT_BACKOFF, () => 0))).toEqual([500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]);
  });

  it('jitter takes off at most a quarter', () => {
    expect(backoffDelay(0, RECONNECT_BACKOFF, () => 0.999999)).toBe(375);
    expect(backoffDelay(10, RECONNECT_BACKOFF, () => 0.5)).toBe(8750);
  });
});
