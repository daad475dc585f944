export * from './types';
export * from './source';
export * from './cpu-baselines';
export * from './placement-context';
export * from './quota';
export * from './stack';
export * from './errors';
export type { Filter } from './filters';
export { freeResources, hostHasFeature } from './filters';
export type { Scorer } from './scorers';
export { utilisationAfter } from './scorers';
/** The filters one by one (`filters.memory`), for tests and explain output; their order lives in `FILTERS`. */
export * as filters from './filters';
/** The scorers one by one (`scorers.binpack`); their list lives in `SCORERS`. */
export * as scorers from './scorers';
