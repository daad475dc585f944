import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, loadConfig } from './config';

describe('configuration', () => {
  it('has the documented defaults', () => {
    const c = loadConfig({});
    expect(c).toMatchObject({
      databaseUrl: 'postgres://postgres@127.0.0.1:5432/hyperplane',
      redisUrl: 'redis://127.0.0.1:6379',
      httpPort: 8080,
      grpcPort: 9090,
    });
    expect(c.dataDir.endsWith('.hyperplane')).toBe(true);
    expect(c.role).toBe('all');
    expect(c.operationConcurrency).toBe(512);
    expect(c.runAccepted).toBe(true);
  });

  it.each([
    ['0', false],
    ['off', false],
    ['false', false],
    ['1', true],
    ['on', true],
  ])('takes HYPERPLANE_RUN_ACCEPTED=%s as %s', (raw, expected) => {
    expect(loadConfig({ HYPERPLANE_RUN_ACCEPTED: raw }).runAccepted).toBe(expected);
  });

  it.each([
    [undefined, undefined],
    ['auto', undefined],
    ['all', Infinity],
    ['10', 10],
  ])('takes HYPERPLANE_SCHEDULER_MAX_CANDIDATES=%s as %s', (raw, expected) => {
    expect(loadConfig(raw === undefined ? {} : { HYPERPLANE_SCHEDULER_MAX_CANDIDATES: raw }).schedulerMaxCandidates).toBe(expected);
  });

  it('takes the process role', () => {
    expect(loadConfig({ HYPERPLANE_ROLE: 'api' }).role).toBe('api');
    expect(loadConfig({ HYPERPLANE_ROLE: 'operations' }).role).toBe('operations');
  });

  it.each([
    [{ HYPERPLANE_HTTP_PORT: 'eighty' }, 'HYPERPLANE_HTTP_PORT="eighty" is not a TCP port (1-65535)'],
    [{ HYPERPLANE_GRPC_PORT: '70000' }, 'HYPERPLANE_GRPC_PORT="70000" is not a TCP port (1-65535)'],
    [{ DATABASE_URL: 'mysql://x' }, 'DATABASE_URL="mysql://x" must use postgres: or postgresql:'],
    [{ REDIS_URL: 'not a url' }, 'REDIS_URL="not a url" is not a URL'],
    [{ HYPERPLANE_HTTP_PORT: '9000', HYPERPLANE_GRPC_PORT: '9000' }, 'HYPERPLANE_HTTP_PORT and HYPERPLANE_GRPC_PORT are both 9000'],
    [{ HYPERPLANE_LOG_LEVEL: 'loud' }, 'HYPERPLANE_LOG_LEVEL="loud" must be one of'],
    [{ HYPERPLANE_ROLE: 'worker' }, 'HYPERPLANE_ROLE="worker" must be one of all, api, operations'],
    [{ HYPERPLANE_OPERATION_CONCURRENCY: '0' }, 'HYPERPLANE_OPERATION_CONCURRENCY="0" is not a positive integer'],
    [{ HYPERPLANE_RUN_ACCEPTED: 'maybe' }, 'HYPERPLANE_RUN_ACCEPTED="maybe" must be on or off (1/0, true/false)'],
    [{ HYPERPLANE_SCHEDULER_MAX_CANDIDATES: '0' }, 'HYPERPLANE_SCHEDULER_MAX_CANDIDATES="0" must be auto, all or a positive integer'],
    [{ HYPERPLANE_SCHEDULER_MAX_CANDIDATES: 'many' }, 'HYPERPLANE_SCHEDULER_MAX_CANDIDATES="many" must be auto, all or a positive integer'],
  ])('rejects %j naming the variable', (env, message) => {
    expect(() => loadConfig(env)).toThrow(ConfigError);
    expect(() => loadConfig(env)).toThrow(message);
  });

  const main = join(__dirname, '../dist/main.js');
  (existsSync(main) ? it : it.skip)('stops the start with exit code 2 and one line naming the variable', () => {
    const r = spawnSync(process.execPath, [main], { env: { ...process.env, HYPERPLANE_HTTP_PORT: 'abc' }, encoding: 'utf8', timeout: 20_000 });
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split('\n')).toEqual(['hyperplane: configuration error: HYPERPLANE_HTTP_PORT="abc" is not a TCP port (1-65535)']);
  });
});
