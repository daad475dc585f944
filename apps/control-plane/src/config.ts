/**
 * Control-plane configuration from the environment (API.md, Configuration). Every variable has a
 * default; a bad value stops the start with one line naming it.
 */
import { resolve } from 'node:path';

/** Validated configuration. */
export interface Config {
  databaseUrl: string;
  redisUrl: string;
  httpPort: number;
  grpcPort: number;
  /** Address both servers listen on. */
  bindAddress: string;
  dataDir: string;
  /** Prefix for every Redis key and channel, so several clusters (or test runs) share one Redis. */
  redisPrefix: string;
  logLevel: string;
  /** Milliseconds without a heartbeat before a node is unreachable. */
  nodeHeartbeatTimeoutMs: number;
  /** Shared secret a worker must present to join; empty allows any local worker. */
  joinToken: string;
  /** How long an operation waits for a node to act before failing it. */
  operationTimeoutMs: number;
  /** Cluster default placement strategy; a request may choose the other. */
  placementStrategy: 'binpack' | 'spread';
  /**
   * Most feasible nodes one placement scores (HYPERPLANE_SCHEDULER_MAX_CANDIDATES): a number,
   * `Infinity` for every node (`all`), or undefined for the scheduler's default (`auto`:
   * max(32, ⌈log₂ nodes⌉) for spread, every node for binpack; see libs/scheduler defaultMaxCandidates).
   */
  schedulerMaxCandidates?: number;
  /** Largest image file an upload may send (bytes). */
  maxImageBytes: number;
  /** Largest virtual disk size an image may declare (bytes). */
  maxImageVirtualBytes: number;
  /** Operations one replica runs at once (most of them only wait for a node's report). */
  operationConcurrency: number;
  /**
   * Whether an action on one partition runs in the replica that accepted it, under a lease
   * (OperationRunner.leaseHere), rather than through the queue. Off while replicas older than the
   * leases (2026-12-06) still run: they would start a leased operation a second time.
   */
  runAccepted: boolean;
  /** What this process does: everything, the public API only, or operations and agent streams only. */
  role: ControlPlaneRole;
  /**
   * Key that seals secrets kept in the database (service-chain encryption keys); undefined: a key
   * made once in `dataDir/secrets.key` (every replica of a cluster must then share that file).
   */
  secretsKey?: Buffer;
}

/** See {@link CONTROL_PLANE_ROLES}. */
export type ControlPlaneRole = 'all' | 'api' | 'operations';

/**
 * The process roles (HYPERPLANE_ROLE): `all` (default) serves the public API (REST and gRPC),
 * runs operations and holds agent streams; `api` serves the public API only; `operations` runs
 * operations and holds agent streams (workers connect to it), with only health probes on REST.
 * Replicas of each role share PostgreSQL and Redis; any mix works, as long as some replica runs
 * operations and some holds the agents.
 */
export const CONTROL_PLANE_ROLES: readonly ControlPlaneRole[] = ['all', 'api', 'operations'];

/** True when a process of `role` serves the public API. */
export const servesApi = (role: ControlPlaneRole): boolean => role !== 'operations';

/** True when a process of `role` runs operations and holds agent streams. */
export const runsOperations = (role: ControlPlaneRole): boolean => role !== 'api';

/** A configuration value that does not parse; the message names the variable. */
export class ConfigError extends Error {}

function port(env: NodeJS.ProcessEnv, name: string, def: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || n < 1 || n > 65535) {
    throw new ConfigError(`${name}=${JSON.stringify(raw)} is not a TCP port (1-65535)`);
  }
  return n;
}

function positiveInt(env: NodeJS.ProcessEnv, name: string, def: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return def;
  if (!/^\d+$/.test(raw) || Number(raw) <= 0) throw new ConfigError(`${name}=${JSON.stringify(raw)} is not a positive integer`);
  return Number(raw);
}

function url(env: NodeJS.ProcessEnv, name: string, def: string, protocols: string[]): string {
  const raw = env[name] || def;
  let parsed: URL;
  try {
    parsed = new URL(raw);
  } catch {
    throw new ConfigError(`${name}=${JSON.stringify(raw)} is not a URL`);
  }
  if (!protocols.includes(parsed.protocol)) {
    throw new ConfigError(`${name}=${JSON.stringify(raw)} must use ${protocols.join(' or ')}`);
  }
  return raw;
}

function role(env: NodeJS.ProcessEnv): ControlPlaneRole {
  const raw = env.HYPERPLANE_ROLE || 'all';
  if (!(CONTROL_PLANE_ROLES as readonly string[]).includes(raw)) throw new ConfigError(`HYPERPLANE_ROLE=${JSON.stringify(raw)} must be one of ${CONTROL_PLANE_ROLES.join(', ')}`);
  return raw as ControlPlaneRole;
}

function onOff(env: NodeJS.ProcessEnv, name: string, def: boolean): boolean {
  const raw = env[name];
  if (raw === undefined || raw === '') return def;
  if (['1', 'true', 'on'].includes(raw)) return true;
  if (['0', 'false', 'off'].includes(raw)) return false;
  throw new ConfigError(`${name}=${JSON.stringify(raw)} must be on or off (1/0, true/false)`);
}

function strategy(env: NodeJS.ProcessEnv): 'binpack' | 'spread' {
  const raw = env.HYPERPLANE_PLACEMENT_STRATEGY || 'spread';
  if (raw !== 'binpack' && raw !== 'spread') throw new ConfigError(`HYPERPLANE_PLACEMENT_STRATEGY=${JSON.stringify(raw)} must be binpack or spread`);
  return raw;
}

function maxCandidates(env: NodeJS.ProcessEnv): { schedulerMaxCandidates?: number } {
  const raw = env.HYPERPLANE_SCHEDULER_MAX_CANDIDATES;
  if (raw === undefined || raw === '' || raw === 'auto') return {};
  if (raw === 'all') return { schedulerMaxCandidates: Infinity };
  if (!/^\d+$/.test(raw) || Number(raw) <= 0) throw new ConfigError(`HYPERPLANE_SCHEDULER_MAX_CANDIDATES=${JSON.stringify(raw)} must be auto, all or a positive integer`);
  return { schedulerMaxCandidates: Number(raw) };
}

function secretsKey(env: NodeJS.ProcessEnv): { secretsKey?: Buffer } {
  const raw = env.HYPERPLANE_SECRETS_KEY;
  if (raw === undefined || raw === '') return {};
  const key = /^[A-Za-z0-9+/]+={0,2}$/.test(raw) ? Buffer.from(raw, 'base64') : Buffer.alloc(0);
  if (key.length !== 32) throw new ConfigError('HYPERPLANE_SECRETS_KEY must be 32 bytes, base64-encoded (openssl rand -base64 32)');
  return { secretsKey: key };
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** Reads and validates the configuration; throws {@link ConfigError} naming the first bad variable. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const logLevel = env.HYPERPLANE_LOG_LEVEL || 'info';
  if (!LOG_LEVELS.includes(logLevel)) {
    throw new ConfigError(`HYPERPLANE_LOG_LEVEL=${JSON.stringify(logLevel)} must be one of ${LOG_LEVELS.join(', ')}`);
  }
  const httpPort = port(env, 'HYPERPLANE_HTTP_PORT', 8080);
  const grpcPort = port(env, 'HYPERPLANE_GRPC_PORT', 9090);
  if (httpPort === grpcPort) throw new ConfigError(`HYPERPLANE_HTTP_PORT and HYPERPLANE_GRPC_PORT are both ${httpPort}`);
  return {
    databaseUrl: url(env, 'DATABASE_URL', 'postgres://postgres@127.0.0.1:5432/hyperplane', ['postgres:', 'postgresql:']),
    redisUrl: url(env, 'REDIS_URL', 'redis://127.0.0.1:6379', ['redis:', 'rediss:']),
    httpPort,
    grpcPort,
    bindAddress: env.HYPERPLANE_BIND_ADDRESS || '0.0.0.0',
    dataDir: resolve(env.HYPERPLANE_DATA_DIR || '.hyperplane'),
    redisPrefix: env.HYPERPLANE_REDIS_PREFIX || 'hp',
    logLevel,
    nodeHeartbeatTimeoutMs: positiveInt(env, 'HYPERPLANE_NODE_TIMEOUT_MS', 15000),
    joinToken: env.HYPERPLANE_JOIN_TOKEN ?? '',
    operationTimeoutMs: positiveInt(env, 'HYPERPLANE_OPERATION_TIMEOUT_MS', 300000),
    placementStrategy: strategy(env),
    ...maxCandidates(env),
    maxImageBytes: positiveInt(env, 'HYPERPLANE_MAX_IMAGE_BYTES', 16 * 1024 ** 3),
    maxImageVirtualBytes: positiveInt(env, 'HYPERPLANE_MAX_IMAGE_VIRTUAL_BYTES', 4 * 1024 ** 4),
    operationConcurrency: positiveInt(env, 'HYPERPLANE_OPERATION_CONCURRENCY', 512),
    runAccepted: onOff(env, 'HYPERPLANE_RUN_ACCEPTED', true),
    role: role(env),
    ...secretsKey(env),
  };
}

/** Nest injection token for {@link Config}. */
export const CONFIG = Symbol('CONFIG');
