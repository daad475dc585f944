export * from './qmp-errors';
export * from './qmp-types';
export * from './qmp-client';
export * from './fake-qmp-peer';
