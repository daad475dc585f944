/** Nest injection tokens for infrastructure that is not a class. */
export const DATA_SOURCE = Symbol('DATA_SOURCE');
export const REDIS = Symbol('REDIS');
export const REDIS_SUB = Symbol('REDIS_SUB');
export const LOGGER = Symbol('LOGGER');
