import pino from 'pino';
import { Principal } from '@hyperplane/domain';
import { AgentSessions, CommandBody, CommandOptions } from '../agents/agent-sessions';
import { PartitionRow } from '../partitions/partition.repository';
import { MigrationOperations } from './migration-operations';
import { MigrateParams, MigrationService } from './migration.service';

const P = '01900000-0000-7000-8000-0000000000c1';
const SOURCE = { id: '01900000-0000-7000-8000-0000000000a1', name: 'a', tls: false, status: 'ready', cordoned: false };
const TARGET = { id: '01900000-0000-7000-8000-0000000000b1', name: 'b', tls: false, status: 'ready', cordoned: false };
const row = { id: P, name: 'p', project_id: 'proj', state: 'running', node_id: SOURCE.id, vcpus: 1, memory_mib: '256', disk_gib: 1, image: 'sample', image_id: null, desired: 'running', generation: '3', placement: {} } as unknown as PartitionRow;
const principal = { roles: [] } as unknown as Principal;

/** The commands a node got, in order; each answered by `answer` (ok by default). */
function fakeSessions(answer: (body: CommandBody) => Promise<{ ok: boolean; payload?: string }> = async (body) => ({ ok: true, payload: body.migrationOutcome ? '{"present":true,"diskPath":"/d/disk.qcow2"}' : '{"host":"127.0.0.1","port":4000}' })) {
  const sent: Array<{ node: string; kind: string; migrationId?: string; atOnce?: boolean }> = [];
  const sessions = {
    command: async (node: string, body: CommandBody, _timeoutMs: number, opts: CommandOptions = {}) => {
      const kind = Object.keys(body)[0]!;
      const b = (body as Record<string, { migrationId?: string }>)[kind];
      sent.push({ node, kind, ...(b?.migrationId ? { migrationId: b.migrationId } : {}), ...(opts.atOnce ? { atOnce: true } : {}) });
      const r = await answer(body);
      return { commandId: 'c', errorCode: r.ok ? '' : 'INTERNAL', errorMessage: r.ok ? '' : 'refused', payload: r.payload ?? '', ok: r.ok };
    },
  } as unknown as AgentSessions;
  return { sessions, sent };
}

function operations(sessions: AgentSessions): MigrationOperations {
  const none = {} as never;
  return new MigrationOperations(none, none, none, none, none, none, sessions, none, none, none, pino({ level: 'silent' }), none);
}

/**
 * The service with fakes around it; `act` plays PartitionsService.act: it runs the request's
 * checks with the operation id, then commits (the afterCommit hook runs) or fails at the commit.
 */
function service(ops: MigrationOperations, commit: 'ok' | 'fails', o: { target?: typeof TARGET; attachments?: unknown[]; steps?: string[]; prepared?: unknown[] } = {}) {
  const target = o.target ?? TARGET;
  const steps = o.steps ?? [];
  const partitionsService = {
    act: async (_p: unknown, _proj: string, _id: string, _action: string, _kind: string, _params: unknown, _opts: unknown, prepare: (db: unknown, r: PartitionRow, opId: string) => Promise<unknown>, afterCommit?: () => Promise<void>) => {
      const prepared = await prepare({}, row, 'op-1');
      o.prepared?.push(prepared);
      if (commit === 'fails') throw new Error('could not serialize access');
      await afterCommit?.();
      return { partition: { id: P }, operation: { id: 'op-1' } };
    },
  };
  const find = (ref: string) => [SOURCE, target].find((n) => n.id === ref || n.name === ref);
  const nodes = { findByIdOrName: async (ref: string) => find(ref), findWithRef: async (id: string, ref?: string) => [find(id), ref === undefined ? undefined : find(ref)] };
  return new MigrationService(
    partitionsService as never,
    { beginMigration: async () => ({ ...row, state: 'migrating', target_node_id: TARGET.id }) } as never,
    nodes as never,
    { count: async () => 0 } as never,
    {
      place: async () => {
        steps.push('placed');
        if (target.cordoned) throw new Error('no node fits: 1 node: cordoned');
        return [target.id];
      },
    } as never,
    { requirements: async () => ({ requirements: {}, inLibrary: false }) } as never,
    {
      attachmentsOf: async () => {
        steps.push('attachments checked');
        return o.attachments ?? [];
      },
    } as never,
    ops,
  );
}

const settled = () => new Promise((r) => setTimeout(r, 10));

describe('MigrationService.migrate: the destination is prepared ahead of the commit', () => {
  it('sends the prepare, with the operation id, before the request commits; the operation then takes its answer', async () => {
    const { sessions, sent } = fakeSessions();
    const ops = operations(sessions);
    await service(ops, 'ok').migrate(principal, 'proj', P, { targetNode: 'b', storage: 'shared' });
    await settled();
    expect(sent).toEqual([
      { node: SOURCE.id, kind: 'migrationOutcome', atOnce: true }, // where the shared disk is
      { node: TARGET.id, kind: 'migrationPrepareTarget', migrationId: 'op-1', atOnce: true },
    ]);
    const ahead = (ops as unknown as { takeAhead(id: string): Promise<unknown> | undefined }).takeAhead('op-1');
    await expect(ahead).resolves.toEqual({ host: '127.0.0.1', port: 4000 });
    expect((ops as unknown as { takeAhead(id: string): unknown }).takeAhead('op-1')).toBeUndefined(); // taken once
  });

  it('gives its handler what the request committed (the migrating partition, both nodes), which it then reads neither again', async () => {
    const { sessions } = fakeSessions();
    const ops = operations(sessions);
    const prepared: unknown[] = [];
    await service(ops, 'ok', { prepared }).migrate(principal, 'proj', P, { targetNode: 'b', storage: 'shared' });
    expect(prepared).toEqual([expect.objectContaining({ read: { row: { ...row, state: 'migrating', target_node_id: TARGET.id }, source: SOURCE, target: TARGET } })]);
  });

  it('aborts what it prepared, by migration id, when the request does not commit (after the prepare answered)', async () => {
    let answerPrepare!: () => void;
    const prepareAnswered = new Promise<void>((r) => (answerPrepare = r));
    const { sessions, sent } = fakeSessions(async (body) => {
      if (body.migrationPrepareTarget) await prepareAnswered;
      return { ok: true, payload: body.migrationOutcome ? '{"present":true,"diskPath":"/d/disk.qcow2"}' : '{}' };
    });
    const ops = operations(sessions);
    await expect(service(ops, 'fails').migrate(principal, 'proj', P, { targetNode: 'b', storage: 'shared' })).rejects.toThrow('could not serialize access');
    await settled();
    // The abort waits for the prepare's answer: sent before it, it could overtake it on the node.
    expect(sent.map((s) => s.kind)).toEqual(['migrationOutcome', 'migrationPrepareTarget']);
    answerPrepare();
    await settled();
    expect(sent.at(-1)).toEqual({ node: TARGET.id, kind: 'migrationAbortTarget', migrationId: 'op-1', atOnce: true });
    expect((ops as unknown as { takeAhead(id: string): unknown }).takeAhead('op-1')).toBeUndefined();
  });

  it('prepares a named destination as soon as it is read, before the checks and the placement that follow', async () => {
    const steps: string[] = [];
    const { sessions, sent } = fakeSessions(async (body) => {
      if (body.migrationPrepareTarget) steps.push('prepare sent');
      return { ok: true, payload: body.migrationOutcome ? '{"present":true,"diskPath":"/d/disk.qcow2"}' : '{"host":"127.0.0.1","port":4000}' };
    });
    // (Copy storage: a shared disk's prepare waits for the source to say where the disk is.)
    await service(operations(sessions), 'ok', { steps }).migrate(principal, 'proj', P, { targetNode: 'b', storage: 'copy' });
    expect(steps).toEqual(['prepare sent', 'attachments checked', 'placed']);
    expect(sent.filter((s) => s.kind === 'migrationPrepareTarget')).toHaveLength(1); // not again once placed
  });

  it('aborts the early prepare when a check after it refuses the request', async () => {
    const { sessions, sent } = fakeSessions();
    const ops = operations(sessions);
    await expect(service(ops, 'ok', { attachments: [{ id: 'disk-1' }] }).migrate(principal, 'proj', P, { targetNode: 'b', storage: 'shared' })).rejects.toThrow('service-chain disk');
    await settled();
    expect(sent.map((s) => s.kind)).toEqual(['migrationOutcome', 'migrationPrepareTarget', 'migrationAbortTarget']);
    expect(sent.at(-1)).toEqual({ node: TARGET.id, kind: 'migrationAbortTarget', migrationId: 'op-1', atOnce: true });
  });

  it('does not prepare a named destination that takes no partitions (cordoned): the placement refuses it first', async () => {
    const { sessions, sent } = fakeSessions();
    await expect(service(operations(sessions), 'ok', { target: { ...TARGET, cordoned: true } }).migrate(principal, 'proj', P, { targetNode: 'b', storage: 'shared' })).rejects.toThrow('cordoned');
    await settled();
    expect(sent.map((s) => s.kind)).toEqual(['migrationOutcome']);
  });

  it('prepares nothing ahead for a cold migration', async () => {
    const { sessions, sent } = fakeSessions();
    const ops = operations(sessions);
    const p = { live: false } as MigrateParams;
    expect(ops.prepareAhead('op-2', row, p)).toBe(false);
    await settled();
    expect(sent).toEqual([]);
  });
});
