export * from './errors';
export * from './partition-state';
export * from './operation-status';
export * from './roles';
export * from './names';
export * from './limits';
export * from './ids';
export * from './store-paths';
