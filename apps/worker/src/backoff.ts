/** Reconnect delays: exponential from 0.5 s, capped at 10 s, with jitter. */

/** Bounds of the reconnect backoff. */
export interface BackoffPolicy {
  initialMs: number;
  maxMs: number;
}

/** The agent's policy: 0.5 s, doubling, at most 10 s. */
export const RECONNECT_BACKOFF: BackoffPolicy = { initialMs: 500, maxMs: 10_000 };

/**
 * Delay before reconnect attempt number `attempt` (0 for the first retry): `initialMs * 2^attempt`
 * capped at `maxMs`, less a random 0-25 % so that many nodes losing the same control plane do not
 * come back in lockstep.
 */
export function backoffDelay(attempt: number, policy: BackoffPolicy = RECONNECT_BACKOFF, random: () => number = Math.random): number {
  const ceiling = Math.min(policy.maxMs, policy.initialMs * 2 ** Math.min(Math.max(0, attempt), 30));
  return Math.round(ceiling * (1 - 0.25 * random()));
}
