/**
 * The REST contract (API.md) against a real control plane on real PostgreSQL and Redis: auth on
 * every endpoint, tenancy, validation that changes nothing, idempotency, etags, pagination.
 * Nodes here are database rows with no agent, so placement works and operations fail "unreachable".
 */
import { Api, clusterAdminToken, startInProcess, InProcess } from '../helpers/control-plane';
import { counts, seedNode, sql } from '../helpers/db';

jest.setTimeout(60_000);

let cp: InProcess;
let admin: Api;
let a: { api: Api; projectId: string; token: string };
let b: { api: Api; projectId: string; token: string };
let nodeId: string;

beforeAll(async () => {
  cp = await startInProcess();
  admin = new Api(cp.url, await clusterAdminToken());
  a = await admin.newProject('rest-a');
  b = await admin.newProject('rest-b');
  nodeId = await seedNode('rest-node-1');
});

afterAll(async () => {
  await cp?.close();
});

const create = (api: Api, name: string, extra: Record<string, unknown> = {}, headers?: Record<string, string>) =>
  api.post('/v1/partitions', { name, vcpus: 1, memoryMiB: 128, image: 'sample', ...extra }, headers);

describe('health', () => {
  it('answers /healthz and /readyz without a token', async () => {
    const anon = admin.as(undefined);
    expect((await anon.get('/healthz')).status).toBe(200);
    const r = await anon.get('/readyz');
    expect(r.status).toBe(200);
    expect(r.body.checks.postgres.status).toBe('ok');
    expect(r.body.checks.redis.status).toBe('ok');
  });

  it('puts a request id on every response', async () => {
    const r = await admin.get('/v1/projects', { 'x-request-id': 'req-abc-123' });
    expect(r.headers.get('x-request-id')).toBe('req-abc-123');
  });
});

describe('authentication', () => {
  const id = '01a209ee-e8e9-7db9-902b-d379e7272ce6';
  const endpoints: Array<[string, string]> = [
    ['GET', '/v1/projects'], ['POST', '/v1/projects'], ['GET', `/v1/projects/${id}`],
    ['POST', `/v1/projects/${id}/tokens`], ['GET', `/v1/projects/${id}/tokens`], ['DELETE', `/v1/projects/${id}/tokens/${id}`],
    ['GET', '/v1/nodes'], ['GET', `/v1/nodes/${id}`], ['POST', `/v1/nodes/${id}/cordon`], ['POST', `/v1/nodes/${id}/uncordon`],
    ['POST', '/v1/partitions'], ['GET', '/v1/partitions'], ['GET', `/v1/partitions/${id}`], ['PATCH', `/v1/partitions/${id}`],
    ['DELETE', `/v1/partitions/${id}`], ['POST', `/v1/partitions/${id}/start`], ['POST', `/v1/partitions/${id}/stop`],
    ['POST', `/v1/partitions/${id}/reboot`], ['GET', `/v1/partitions/${id}/console`],
    ['GET', '/v1/operations'], ['GET', `/v1/operations/${id}`], ['GET', `/v1/operations/${id}/wait`], ['POST', `/v1/operations/${id}/cancel`],
    ['GET', '/v1/events'],
  ];

  it.each(endpoints)('%s %s rejects a missing token and a wrong one with 401', async (method, path) => {
    const body = method === 'POST' || method === 'PATCH' ? {} : undefined;
    const none = await admin.as(undefined).call(method, path, body);
    expect(none.status).toBe(401);
    expect(none.headers.get('content-type')).toContain('application/problem+json');
    expect(none.body.code).toBe('UNAUTHENTICATED');
    const wrong = await admin.as('hp_not-a-real-token').call(method, path, body);
    expect(wrong.status).toBe(401);
  });

  it('stops accepting a deleted token at once', async () => {
    const t = await admin.post(`/v1/projects/${a.projectId}/tokens`, { role: 'viewer' });
    const viewer = admin.as(t.body.token);
    expect((await viewer.get('/v1/partitions')).status).toBe(200);
    expect((await a.api.delete(`/v1/projects/${a.projectId}/tokens/${t.body.id}`)).status).toBe(204);
    expect((await viewer.get('/v1/partitions')).status).toBe(401);
  });

  it('enforces roles', async () => {
    const t = await admin.post(`/v1/projects/${a.projectId}/tokens`, { role: 'viewer' });
    const viewer = admin.as(t.body.token);
    const r = await create(viewer, 'viewer-try');
    expect(r.status).toBe(403);
    expect(r.body.detail).toBe('role viewer may not create partitions: it needs operator');
    expect((await a.api.post('/v1/projects', { name: 'not-allowed' })).status).toBe(403);
    expect((await a.api.get('/v1/nodes')).status).toBe(403);
    expect((await admin.get(`/v1/projects/${a.projectId}/tokens`)).status).toBe(200);
    const list = await a.api.get(`/v1/projects/${a.projectId}/tokens`);
    expect(list.body.items.every((x: any) => x.token === undefined)).toBe(true);
  });
});

describe('projects', () => {
  it('creates, refuses a duplicate name, and lists', async () => {
    const r = await admin.post('/v1/projects', { name: 'proj-x', description: 'x' });
    expect(r.status).toBe(201);
    expect(r.body).toMatchObject({ name: 'proj-x', description: 'x', etag: '"1"' });
    const dup = await admin.post('/v1/projects', { name: 'proj-x' });
    expect(dup.status).toBe(409);
    expect(dup.body.detail).toBe("project named 'proj-x' already exists in the cluster");
    const byName = await admin.get('/v1/projects/proj-x');
    expect(byName.body.id).toBe(r.body.id);
    const own = await a.api.get('/v1/projects');
    expect(own.body.items.map((p: any) => p.id)).toEqual([a.projectId]);
  });
});

describe('quotas', () => {
  it('refuses a create over the project quota with 422 naming the limit, creating nothing', async () => {
    const q = await admin.newProject('quota-proj');
    const got = await admin.get('/v1/projects/quota-proj');
    const stale = await admin.patch('/v1/projects/quota-proj', { quota: { maxPartitions: 2 } }, { 'if-match': '"999"' });
    expect(stale.status).toBe(412);
    const set = await admin.patch('/v1/projects/quota-proj', { quota: { maxPartitions: 2 } }, { 'if-match': got.body.etag });
    expect(set.status).toBe(200);
    expect(set.body.quota).toEqual({ maxPartitions: 2 });
    expect((await q.api.patch('/v1/projects/quota-proj', { quota: { maxPartitions: 100 } })).status).toBe(403);
    expect((await admin.patch('/v1/projects/quota-proj', { quota: { maxPartitions: -1 } })).body.detail).toContain('quota.maxPartitions: must not be less than 0');
    expect((await create(q.api, 'q-1')).status).toBe(202);
    expect((await create(q.api, 'q-2')).status).toBe(202);
    const before = await counts();
    const over = await create(q.api, 'q-3');
    expect(over.status).toBe(422);
    expect(over.body.detail).toContain('project quota: 2 of 2 partitions used');
    expect(over.body.reasons[0].reason).toBe('quota');
    expect(await counts()).toEqual(before);
  });
});

describe('bad input gets a clear error and changes nothing', () => {
  const cases: Array<[string, unknown, number, string | RegExp]> = [
    ['unknown field', { name: 'ok-1', vcpus: 1, memoryMiB: 128, image: 'sample', colour: 'red' }, 400, 'colour: is not a known field'],
    ['missing field', { name: 'ok-1', memoryMiB: 128, image: 'sample' }, 400, /^vcpus: must be an integer number/],
    ['wrong type', { name: 'ok-1', vcpus: '1', memoryMiB: 128, image: 'sample' }, 400, 'vcpus: must be an integer number'],
    ['vcpus 0', { name: 'ok-1', vcpus: 0, memoryMiB: 128, image: 'sample' }, 400, 'vcpus: must not be less than 1'],
    ['vcpus 10,000', { name: 'ok-1', vcpus: 10000, memoryMiB: 128, image: 'sample' }, 400, 'vcpus: must not be greater than 512'],
    ['memory of 1 PiB', { name: 'ok-1', vcpus: 1, memoryMiB: 1024 ** 3, image: 'sample' }, 400, 'memoryMiB: must not be greater than 4194304'],
    ['a name that is not a DNS label', { name: 'Web_1', vcpus: 1, memoryMiB: 128, image: 'sample' }, 400, /^name: must be a DNS label/],
    ['a name longer than 63', { name: 'a'.repeat(64), vcpus: 1, memoryMiB: 128, image: 'sample' }, 400, 'name: must be at most 63 characters (got 64)'],
    ['labels that are not strings', { name: 'ok-1', vcpus: 1, memoryMiB: 128, image: 'sample', labels: { env: 1 } }, 400, 'labels: value of "env" must be a string'],
    ['an unknown image', { name: 'ok-1', vcpus: 1, memoryMiB: 128, image: 'nope' }, 400, "image: image 'nope' does not exist"],
    ['a body that is an array', [1, 2], 400, 'request body must be a JSON object'],
    ['malformed JSON', '{"name": "ok-1",', 400, /malformed JSON/],
  ];

  it.each(cases)('%s', async (_what, body, status, detail) => {
    const before = await counts();
    const r = await a.api.post('/v1/partitions', body);
    expect(r.status).toBe(status);
    expect(r.headers.get('content-type')).toContain('application/problem+json');
    expect(r.body).toMatchObject({ status, type: expect.any(String), title: expect.any(String) });
    if (typeof detail === 'string') expect(r.body.detail).toContain(detail);
    else expect(r.body.detail).toMatch(detail);
    if (status === 400 && typeof body === 'object' && !Array.isArray(body)) expect(r.body.errors.length).toBeGreaterThan(0);
    expect(await counts()).toEqual(before);
  });

  it('refuses a body over 1 MiB with 413', async () => {
    const before = await counts();
    const r = await a.api.post('/v1/partitions', { name: 'big', vcpus: 1, memoryMiB: 128, image: 'sample', description: 'x'.repeat(1024 * 1024 + 10) });
    expect(r.status).toBe(413);
    expect(r.body.code).toBe('PAYLOAD_TOO_LARGE');
    expect(await counts()).toEqual(before);
  });

  it('refuses a duplicate name with 409 and unknown ids with 404', async () => {
    expect((await create(a.api, 'dup-1')).status).toBe(202);
    const before = await counts();
    const dup = await create(a.api, 'dup-1');
    expect(dup.status).toBe(409);
    expect(dup.body.detail).toBe("partition named 'dup-1' already exists in this project");
    const missing = await a.api.get('/v1/partitions/01a209ee-e8e9-7db9-902b-d379e7272ce6');
    expect(missing.status).toBe(404);
    expect((await a.api.get('/v1/partitions/not-a-uuid')).status).toBe(404);
    expect((await a.api.get('/v1/operations/01a209ee-e8e9-7db9-902b-d379e7272ce6')).status).toBe(404);
    expect(await counts()).toEqual(before);
  });

  it('answers 422 with counts per reason when no node fits, creating nothing', async () => {
    const before = await counts();
    const r = await create(a.api, 'huge', { memoryMiB: 4 * 1024 * 1024 });
    expect(r.status).toBe(422);
    expect(r.body.code).toBe('RESOURCE_EXHAUSTED');
    expect(r.body.detail).toMatch(/^no node fits: /);
    expect(r.body.reasons).toEqual(expect.arrayContaining([expect.objectContaining({ reason: 'memory', message: 'not enough memory' })]));
    expect(await counts()).toEqual(before);
  });
});

describe('idempotency and etags', () => {
  it('replays the first response for a repeated Idempotency-Key and creates one operation', async () => {
    const key = { 'idempotency-key': 'create-idem-1' };
    const first = await create(a.api, 'idem-1', {}, key);
    expect(first.status).toBe(202);
    const [again, concurrent] = await Promise.all([create(a.api, 'idem-1', {}, key), create(a.api, 'idem-1', {}, key)]);
    for (const r of [again, concurrent]) {
      expect(r.status).toBe(202);
      expect(r.body.operation.id).toBe(first.body.operation.id);
      expect(r.body.partition.id).toBe(first.body.partition.id);
    }
    const ops = await sql(`SELECT id FROM operations WHERE target_id = $1`, [first.body.partition.id]);
    expect(ops).toHaveLength(1);
    const other = await create(a.api, 'idem-2', {}, key);
    expect(other.status).toBe(400);
    expect(other.body.detail).toContain("key 'create-idem-1' was already used with a different request");
  });

  it('honours If-Match and answers 412 for a stale etag, changing nothing', async () => {
    const c = await create(a.api, 'etag-1');
    const id = c.body.partition.id;
    await a.api.waitOperation(c.body.operation.id); // its state changes would move the etag under us
    const got = await a.api.get(`/v1/partitions/${id}`);
    expect(got.headers.get('etag')).toBe(got.body.etag);
    const ok = await a.api.patch(`/v1/partitions/${id}`, { labels: { tier: 'web' } }, { 'if-match': got.body.etag });
    expect(ok.status).toBe(200);
    expect(ok.body.labels).toEqual({ tier: 'web' });
    const stale = await a.api.patch(`/v1/partitions/${id}`, { labels: { tier: 'db' } }, { 'if-match': got.body.etag });
    expect(stale.status).toBe(412);
    expect(stale.body.code).toBe('ABORTED');
    expect((await a.api.get(`/v1/partitions/${id}`)).body.labels).toEqual({ tier: 'web' });
    const removed = await a.api.patch(`/v1/partitions/${id}`, { labels: { tier: null } });
    expect(removed.body.labels).toEqual({});
  });
});

describe('operations and state', () => {
  it('answers 202 with partition, operation and Location; the operation reaches a final status', async () => {
    const r = await create(a.api, 'op-1', { labels: { env: 'prod' } });
    expect(r.status).toBe(202);
    expect(r.headers.get('location')).toBe(`/v1/operations/${r.body.operation.id}`);
    expect(r.body.partition).toMatchObject({ name: 'op-1', state: 'scheduled', node: expect.any(String), vcpus: 1, memoryMiB: 128, image: 'sample', labels: { env: 'prod' } });
    expect(r.body.operation).toMatchObject({ kind: 'partition.create', target: { type: 'partition', id: r.body.partition.id } });
    const op = await a.api.waitOperation(r.body.operation.id);
    // No agent is behind the seeded node: the operation fails and says why.
    expect(op.status).toBe('failed');
    expect(op.error.code).toBe('UNAVAILABLE');
    expect(op.error.message).toMatch(/^node [a-z0-9-]+ is unreachable$/);
    const p = await a.api.get(`/v1/partitions/${r.body.partition.id}`);
    expect(p.body.state).toBe('failed');
    const illegal = await a.api.post(`/v1/partitions/${r.body.partition.id}/reboot`);
    expect(illegal.status).toBe(409);
    expect(illegal.body.detail).toBe('cannot reboot partition op-1: it is failed');
    const ops = await a.api.get(`/v1/operations?targetId=${r.body.partition.id}`);
    expect(ops.body.items.map((o: any) => o.id)).toEqual([r.body.operation.id]);
    const cancelDone = await a.api.post(`/v1/operations/${r.body.operation.id}/cancel`);
    expect(cancelDone.status).toBe(409);
  });

  it('wait returns at its timeout with the current status', async () => {
    const r = await create(a.api, 'wait-1');
    const t0 = Date.now();
    const w = await a.api.get(`/v1/operations/${r.body.operation.id}/wait?timeoutSeconds=0`);
    expect(w.status).toBe(200);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect((await a.api.get(`/v1/operations/${r.body.operation.id}/wait?timeoutSeconds=9999`)).status).toBe(400);
  });
});

describe('tenancy: another project sees only 404s and empty lists', () => {
  it('walks every endpoint as project B over project A resources', async () => {
    const c = await create(a.api, 'tenant-a-1');
    const pid = c.body.partition.id;
    const oid = c.body.operation.id;
    const B = b.api;
    const expect404: Array<[string, string, unknown?]> = [
      ['GET', `/v1/partitions/${pid}`], ['PATCH', `/v1/partitions/${pid}`, { labels: { x: 'y' } }], ['DELETE', `/v1/partitions/${pid}`],
      ['POST', `/v1/partitions/${pid}/start`], ['POST', `/v1/partitions/${pid}/stop`, {}], ['POST', `/v1/partitions/${pid}/reboot`],
      ['GET', `/v1/partitions/${pid}/console`], ['GET', `/v1/operations/${oid}`], ['GET', `/v1/operations/${oid}/wait?timeoutSeconds=0`],
      ['POST', `/v1/operations/${oid}/cancel`], ['GET', `/v1/projects/${a.projectId}`], ['GET', `/v1/projects/${a.projectId}/tokens`],
      ['POST', `/v1/projects/${a.projectId}/tokens`, { role: 'admin' }], ['GET', `/v1/partitions?project=${a.projectId}`],
    ];
    for (const [m, path, body] of expect404) {
      const r = await B.call(m, path, body);
      expect({ m, path, status: r.status }).toEqual({ m, path, status: 404 });
    }
    for (const path of ['/v1/partitions', '/v1/operations', `/v1/partitions?label=env:prod`]) {
      const r = await B.get(path);
      expect(r.status).toBe(200);
      expect(r.body.items).toEqual([]);
    }
    const projects = await B.get('/v1/projects');
    expect(projects.body.items.map((p: any) => p.id)).toEqual([b.projectId]);
    // Project A's partition is untouched.
    expect((await a.api.get(`/v1/partitions/${pid}`)).body.labels).toEqual({});
  });

  it('streams only the caller\'s project events', async () => {
    const seen: string[] = [];
    const ac = new AbortController();
    const res = await fetch(`${cp.url}/v1/events`, { headers: { authorization: `Bearer ${b.token}` }, signal: ac.signal });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/event-stream');
    const reader = res.body!.getReader();
    const pump = (async () => {
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          seen.push(Buffer.from(value).toString());
        }
      } catch { /* aborted */ }
    })();
    await create(a.api, 'events-a-1');
    const mine = await create(b.api, 'events-b-1');
    await new Promise((r) => setTimeout(r, 1000));
    ac.abort();
    await pump;
    const text = seen.join('');
    expect(text).toContain(mine.body.partition.id);
    expect(text).not.toContain('events-a-1');
    expect(text).not.toContain(a.projectId);
  });
});

describe('lists', () => {
  it('pages with keyset tokens, without gaps or repeats', async () => {
    const { api } = await admin.newProject('paging');
    const names = Array.from({ length: 7 }, (_, i) => `page-${i}`);
    for (const n of names) expect((await create(api, n)).status).toBe(202);
    const seen: string[] = [];
    let token = '';
    let pages = 0;
    do {
      const r = await api.get(`/v1/partitions?pageSize=3${token ? `&pageToken=${token}` : ''}`);
      expect(r.status).toBe(200);
      seen.push(...r.body.items.map((p: any) => p.name));
      token = r.body.nextPageToken;
      pages++;
    } while (token);
    expect(pages).toBe(3);
    expect(seen).toEqual(names);
    expect((await api.get('/v1/partitions?pageSize=1001')).status).toBe(400);
    expect((await api.get('/v1/partitions?pageToken=garbage')).status).toBe(400);
    expect((await api.get('/v1/partitions?state=bogus')).status).toBe(400);
    const filtered = await api.get('/v1/partitions?label=nope:x');
    expect(filtered.body.items).toEqual([]);
  });

  it('lists nodes and cordons them (cluster admin)', async () => {
    const n = await admin.get(`/v1/nodes/${nodeId}`);
    expect(n.status).toBe(200);
    expect(n.body).toMatchObject({ name: 'rest-node-1', state: 'ready', capacity: { vcpus: 64 } });
    const c = await admin.post(`/v1/nodes/rest-node-1/cordon`);
    expect(c.body.state).toBe('cordoned');
    const before = await counts();
    const refused = await create(a.api, 'on-cordoned', { placement: { node: 'rest-node-1' } });
    expect(refused.status).toBe(422);
    expect(refused.body.detail).toBe('no node fits: 1 node: cordoned');
    expect(await counts()).toEqual(before);
    const u = await admin.post(`/v1/nodes/${nodeId}/uncordon`);
    expect(u.body.state).toBe('ready');
    const cordonedList = await admin.get('/v1/nodes?state=cordoned');
    expect(cordonedList.body.items.find((x: any) => x.id === nodeId)).toBeUndefined();
  });
});
