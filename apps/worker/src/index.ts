/** The worker agent as a library (tests, benchmarks): node wiring, reconciler, drivers. */
export * from './agent';
export * from './agent-client';
export * from './backoff';
export * from './cli';
export * from './console-sessions';
export * from './drivers/driver';
export * from './drivers/qemu/qemu.driver';
export * from './drivers/simulated/simulated.driver';
export * from './inventory';
export * from './partition-record';
export * from './partition-store';
export * from './reconciler';
export * from './reverter';
export * from './ticker';
