/**
 * The gRPC door against a real control plane: the same names, validation and errors as REST;
 * health checking and reflection; the event stream scoped to the caller's project.
 */
import * as grpc from '@grpc/grpc-js';
import { HealthClient } from 'grpc-health-check/build/src/generated/grpc/health/v1/Health';
import { Api, clusterAdminToken, startInProcess, InProcess } from '../helpers/control-plane';
import { counts, seedNode } from '../helpers/db';
import { GrpcApi } from '../helpers/grpc-client';
import { loadSync } from '@grpc/proto-loader';
import { join, dirname } from 'node:path';

jest.setTimeout(60_000);

let cp: InProcess;
let admin: GrpcApi;
let restAdmin: Api;
let a: GrpcApi;
let b: GrpcApi;
let aProject: string;

beforeAll(async () => {
  cp = await startInProcess();
  const token = await clusterAdminToken();
  admin = new GrpcApi(cp.grpcAddress, token);
  restAdmin = new Api(cp.url, token);
  const pa = await admin.call('ProjectService', 'CreateProject', { name: 'grpc-a', requestId: 'grpc-a-create' });
  aProject = pa.id;
  const ta = await admin.call('ProjectService', 'CreateToken', { project: 'grpc-a', role: 'admin' });
  a = new GrpcApi(cp.grpcAddress, ta.token);
  const { token: tb } = await restAdmin.newProject('grpc-b');
  b = new GrpcApi(cp.grpcAddress, tb);
  await seedNode('grpc-node-1');
});

afterAll(async () => {
  for (const c of [admin, a, b]) c?.close();
  await cp?.close();
});

const createReq = (name: string, extra: object = {}) => ({ name, vcpus: 1, memoryMib: 128, image: 'sample', ...extra });

describe('gRPC', () => {
  it('rejects a missing or wrong token with UNAUTHENTICATED', async () => {
    const anon = new GrpcApi(cp.grpcAddress);
    const wrong = new GrpcApi(cp.grpcAddress, 'hp_wrong');
    try {
      for (const [svc, m, req] of [
        ['PartitionService', 'ListPartitions', {}], ['PartitionService', 'CreatePartition', createReq('x')], ['ProjectService', 'ListProjects', {}],
        ['NodeService', 'ListNodes', {}], ['OperationService', 'ListOperations', {}], ['OperationService', 'WaitOperation', { id: 'x' }],
      ] as const) {
        expect((await anon.fail(svc, m, req)).code).toBe(grpc.status.UNAUTHENTICATED);
        expect((await wrong.fail(svc, m, req)).code).toBe(grpc.status.UNAUTHENTICATED);
      }
    } finally {
      anon.close();
      wrong.close();
    }
  });

  it('validates exactly as REST does, and changes nothing', async () => {
    const before = await counts();
    const cases: Array<[object, string]> = [
      [createReq('ok-1', { vcpus: 0 }), 'vcpus: must not be less than 1'],
      [createReq('ok-1', { vcpus: 10000 }), 'vcpus: must not be greater than 512'],
      [createReq('ok-1', { memoryMib: 1024 ** 3 }), 'memoryMiB: must not be greater than 4194304'],
      [createReq('Web_1'), 'name: must be a DNS label'],
      [createReq('a'.repeat(64)), 'name: must be at most 63 characters (got 64)'],
    ];
    for (const [req, message] of cases) {
      const err = await a.fail('PartitionService', 'CreatePartition', req);
      expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(err.details).toContain(message);
      const details = JSON.parse(String(err.metadata.get('hp-error-details')[0]));
      expect(details.errors.length).toBeGreaterThan(0);
      const rest = await restAdmin.as(undefined).get('/healthz');
      expect(rest.status).toBe(200);
    }
    expect(await counts()).toEqual(before);
  });

  it('creates, gets, lists and patches partitions; a duplicate is ALREADY_EXISTS', async () => {
    const r = await a.call('PartitionService', 'CreatePartition', createReq('g-1', { labels: { env: 'prod' }, requestId: 'g-1-req' }));
    expect(r.partition).toMatchObject({ name: 'g-1', state: 'scheduled', memoryMib: 128, labels: { env: 'prod' } });
    expect(r.operation).toMatchObject({ kind: 'partition.create', status: 'pending', mayCancel: true });
    const replay = await a.call('PartitionService', 'CreatePartition', createReq('g-1', { labels: { env: 'prod' }, requestId: 'g-1-req' }));
    expect(replay.operation.id).toBe(r.operation.id);
    const dup = await a.fail('PartitionService', 'CreatePartition', createReq('g-1'));
    expect(dup.code).toBe(grpc.status.ALREADY_EXISTS);
    expect(dup.details).toBe("partition named 'g-1' already exists in this project");
    const got = await a.call('PartitionService', 'GetPartition', { id: r.partition.id });
    expect(got.id).toBe(r.partition.id);
    const list = await a.call('PartitionService', 'ListPartitions', { label: ['env:prod'] });
    expect(list.items.map((p: any) => p.id)).toContain(r.partition.id);
    const stale = await a.fail('PartitionService', 'UpdatePartition', { id: r.partition.id, labels: { a: 'b' }, etag: '"999"' });
    expect(stale.code).toBe(grpc.status.ABORTED);
    const op = await a.call('OperationService', 'WaitOperation', { id: r.operation.id, timeoutSeconds: 30 });
    expect(op.status).toBe('failed');
    expect(op.error).toMatchObject({ code: 'UNAVAILABLE', message: 'node grpc-node-1 is unreachable' });
    const illegal = await a.fail('PartitionService', 'RebootPartition', { id: r.partition.id });
    expect(illegal.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(illegal.details).toBe('cannot reboot partition g-1: it is failed');
  });

  it('answers NOT_FOUND for another project\'s resources and empty lists', async () => {
    const r = await a.call('PartitionService', 'CreatePartition', createReq('g-tenant'));
    const id = r.partition.id;
    for (const [svc, m, req] of [
      ['PartitionService', 'GetPartition', { id }], ['PartitionService', 'UpdatePartition', { id, description: 'x' }],
      ['PartitionService', 'StartPartition', { id }], ['PartitionService', 'StopPartition', { id }], ['PartitionService', 'RebootPartition', { id }],
      ['PartitionService', 'DeletePartition', { id }], ['PartitionService', 'GetConsole', { id }],
      ['OperationService', 'GetOperation', { id: r.operation.id }], ['OperationService', 'CancelOperation', { id: r.operation.id }],
      ['OperationService', 'WaitOperation', { id: r.operation.id }], ['ProjectService', 'GetProject', { project: aProject }],
      ['ProjectService', 'ListTokens', { project: aProject }],
    ] as const) {
      const err = await b.fail(svc, m, req);
      expect({ m, code: err.code }).toEqual({ m, code: grpc.status.NOT_FOUND });
    }
    expect((await b.call('PartitionService', 'ListPartitions', {})).items ?? []).toEqual([]);
    expect((await b.call('OperationService', 'ListOperations', {})).items ?? []).toEqual([]);
  });

  it('cluster admins address a project with metadata; nodes are theirs', async () => {
    const list = await admin.call('PartitionService', 'ListPartitions', {}, { project: 'grpc-a' });
    expect(list.items.length).toBeGreaterThan(0);
    const nodes = await admin.call('NodeService', 'ListNodes', { pageSize: 1000 }); // the run's other files register nodes too
    expect(nodes.items.some((n: any) => n.name === 'grpc-node-1')).toBe(true);
    expect((await a.fail('NodeService', 'ListNodes', {})).code).toBe(grpc.status.PERMISSION_DENIED);
  });

  it('streams the caller\'s events through EventService.Watch', async () => {
    const client = b.clients.EventService as unknown as { Watch: (req: object, md: grpc.Metadata) => grpc.ClientReadableStream<any> };
    const stream = client.Watch({ types: ['partition'] }, b.metadata());
    const seen: any[] = [];
    stream.on('data', (e) => seen.push(e));
    stream.on('error', () => undefined);
    await new Promise((r) => setTimeout(r, 300));
    await a.call('PartitionService', 'CreatePartition', createReq('g-ev-a'));
    const mine = await b.call('PartitionService', 'CreatePartition', createReq('g-ev-b'));
    await new Promise((r) => setTimeout(r, 1000));
    stream.cancel();
    expect(seen.some((e) => e.resourceId === mine.partition.id && e.type === 'partition.created')).toBe(true);
    expect(seen.every((e) => e.resourceType === 'partition' && !String(e.dataJson).includes('g-ev-a'))).toBe(true);
  });

  it('implements the health checking protocol and server reflection', async () => {
    const healthDef = loadSync(join(dirname(require.resolve('grpc-health-check/package.json')), 'proto/health/v1/health.proto'), { enums: String });
    const pkg = grpc.loadPackageDefinition(healthDef) as any;
    const health = new pkg.grpc.health.v1.Health(cp.grpcAddress, grpc.credentials.createInsecure()) as HealthClient;
    const res = await new Promise<any>((resolve, reject) => health.check({ service: 'hyperplane.v1.PartitionService' }, (e, r) => (e ? reject(e) : resolve(r))));
    expect(res.status).toBe('SERVING');
    health.close();

    const reflDef = loadSync(join(dirname(require.resolve('@grpc/reflection/package.json')), 'build/proto/grpc/reflection/v1alpha/reflection.proto'));
    const rpkg = grpc.loadPackageDefinition(reflDef) as any;
    const refl = new rpkg.grpc.reflection.v1alpha.ServerReflection(cp.grpcAddress, grpc.credentials.createInsecure());
    const call = refl.ServerReflectionInfo();
    const services: string[] = await new Promise((resolve, reject) => {
      call.on('data', (m: any) => resolve(m.listServicesResponse.service.map((s: any) => s.name)));
      call.on('error', reject);
      call.write({ listServices: '' });
    });
    call.end();
    refl.close();
    expect(services).toEqual(expect.arrayContaining(['hyperplane.v1.PartitionService', 'hyperplane.v1.OperationService', 'hyperplane.agent.v1.AgentService']));
  });
});
