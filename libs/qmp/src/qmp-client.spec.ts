import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FakeQmpPeer, type FakeQmpPeerOptions } from './fake-qmp-peer';
import { QmpClient, type QmpClientOptions } from './qmp-client';
import { QmpCommandError, QmpDisconnectedError, QmpProtocolError, QmpTimeoutError } from './qmp-errors';
import type { QmpEvent } from './qmp-types';

const clients: QmpClient[] = [];

async function connected(options: QmpClientOptions = {}, peerOptions: FakeQmpPeerOptions = {}) {
  const { peer, clientStream } = FakeQmpPeer.pair(peerOptions);
  const client = await QmpClient.fromStream(clientStream, options);
  clients.push(client);
  return { peer, client, clientStream };
}

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

afterEach(async () => {
  jest.useRealTimers();
  await Promise.all(clients.splice(0).map((client) => client.close()));
});

describe('handshake', () => {
  it('reads the greeting, sends qmp_capabilities first and exposes the version', async () => {
    const { peer, client } = await connected({}, { version: { major: 7, minor: 2, micro: 5 } });

    expect(client.version).toEqual({ major: 7, minor: 2, micro: 5 });
    expect(client.greeting.QMP.capabilities).toEqual(['oob']);
    expect(peer.received).toEqual([{ execute: 'qmp_capabilities', id: expect.any(Number) }]);
    expect(client.closed).toBe(false);
  });

  it.each([
    ['not JSON', 'Welcome to QEMU'],
    ['JSON without a version', '{"QMP": {"capabilities": []}}'],
    ['a reply instead of a greeting', '{"return": {}, "id": 1}'],
    ['a JSON array', '[1, 2, 3]'],
  ])('rejects a bad greeting (%s) with QmpProtocolError and closes the connection', async (_what, greeting) => {
    const { peer, clientStream } = FakeQmpPeer.pair({ greeting });

    await expect(QmpClient.fromStream(clientStream)).rejects.toThrow(QmpProtocolError);
    await peer.closed;
    expect(peer.received).toEqual([]);
  });

  it('rejects with QmpCommandError when QEMU refuses qmp_capabilities', async () => {
    const { peer, clientStream } = FakeQmpPeer.pair({ autoHandshake: false });
    const connecting = QmpClient.fromStream(clientStream);

    peer.replyError(await peer.nextCommand(), 'GenericError', 'Capabilities negotiation is already complete');

    await expect(connecting).rejects.toMatchObject({ name: 'QmpCommandError', errorClass: 'GenericError' });
    await peer.closed;
  });

  it('rejects with QmpTimeoutError when the peer never greets, and closes the connection', async () => {
    const { peer, clientStream } = FakeQmpPeer.pair({ greeting: null });

    await expect(QmpClient.fromStream(clientStream, { connectTimeoutMs: 30 })).rejects.toMatchObject({
      name: 'QmpTimeoutError',
      operation: 'QMP handshake',
    });
    await peer.closed;
  });

  it('rejects with QmpDisconnectedError when the peer hangs up before greeting', async () => {
    const { peer, clientStream } = FakeQmpPeer.pair({ greeting: null });
    const connecting = QmpClient.fromStream(clientStream);

    await peer.end();

    await expect(connecting).rejects.toThrow(QmpDisconnectedError);
  });
});

describe('commands', () => {
  it('matches replies by id when QEMU answers out of order', async () => {
    const { peer, client } = await connected();
    const status = client.execute('query-status');
    const version = client.execute('query-version');
    const jobs = client.execute('query-jobs');
    const [first, second, third] = [await peer.nextCommand(), await peer.nextCommand(), await peer.nextCommand()];

    peer.reply(third, ['jobs']);
    peer.reply(first, 'status');
    peer.reply(second, 'version');

    await expect(Promise.all([status, version, jobs])).resolves.toEqual(['status', 'version', ['jobs']]);
    expect(new Set([first.id, second.id, third.id]).size).toBe(3);
  });

  it('sends arguments only when given', async () => {
    const { peer, client } = await connected();
    const sent = [client.execute('cont'), client.execute('device_del', { id: 'net0' })];

    expect(await peer.nextCommand()).toEqual({ execute: 'cont', id: expect.any(Number) });
    expect(await peer.nextCommand()).toEqual({ execute: 'device_del', arguments: { id: 'net0' }, id: expect.any(Number) });
    await client.close();
    await expect(Promise.all(sent)).rejects.toThrow(QmpDisconnectedError);
  });

  it('reassembles a reply split across chunks, even inside a UTF-8 character', async () => {
    const { peer, client } = await connected();
    const reply = client.execute('human-monitor-command', { 'command-line': 'info name' });
    const command = await peer.nextCommand();
    const bytes = Buffer.from(`${JSON.stringify({ return: 'vm-é€', id: command.id })}\r\n`, 'utf8');
    const euro = bytes.indexOf(Buffer.from('€', 'utf8'));

    for (const [start, end] of [[0, 5], [5, euro + 1], [euro + 1, euro + 2], [euro + 2, bytes.length]]) {
      peer.sendRaw(bytes.subarray(start, end));
      await tick();
    }

    await expect(reply).resolves.toBe('vm-é€');
  });

  it('handles several messages arriving in one chunk', async () => {
    const { peer, client } = await connected();
    const events: string[] = [];
    client.on('event', (event) => events.push(event.event));
    const status = client.execute('query-status');
    const version = client.execute('query-version');
    const [a, b] = [await peer.nextCommand(), await peer.nextCommand()];

    peer.sendRaw(
      `{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}\r\n` +
        `{"return": {"status": "running"}, "id": ${JSON.stringify(b.id)}}\r\n` +
        `{"return": {"status": "paused"}, "id": ${JSON.stringify(a.id)}}\r\n`,
    );

    await expect(status).resolves.toEqual({ status: 'paused' });
    await expect(version).resolves.toEqual({ status: 'running' });
    expect(events).toEqual(['RESUME']);
  });

  it('rejects a refused command with QmpCommandError carrying class and desc, and stays usable', async () => {
    const { peer, client } = await connected();
    const failing = client.execute('nope');
    peer.replyError(await peer.nextCommand(), 'CommandNotFound', 'The command nope has not been found');

    const error = await failing.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QmpCommandError);
    expect(error).toMatchObject({ command: 'nope', errorClass: 'CommandNotFound', desc: 'The command nope has not been found' });

    const status = client.queryStatus();
    peer.reply(await peer.nextCommand(), { running: true, singlestep: false, status: 'running' });
    await expect(status).resolves.toMatchObject({ status: 'running' });
  });
});

describe('events', () => {
  it('delivers events to every listener and to per-name listeners until unsubscribed', async () => {
    const { peer, client } = await connected();
    const all: QmpEvent[] = [];
    const shutdowns: boolean[] = [];
    const offAll = client.on('event', (event) => all.push(event));
    const offShutdown = client.onEvent('SHUTDOWN', (event) => shutdowns.push(event.data.guest));

    peer.sendEvent('STOP');
    peer.sendEvent('SHUTDOWN', { guest: true, reason: 'guest-shutdown' });
    await tick();
    offAll();
    offShutdown();
    peer.sendEvent('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
    await tick();

    expect(all.map((event) => [event.event, event.data])).toEqual([
      ['STOP', {}],
      ['SHUTDOWN', { guest: true, reason: 'guest-shutdown' }],
    ]);
    expect(all[0].timestamp.seconds).toBeGreaterThan(0);
    expect(shutdowns).toEqual([true]);
  });

  it('waitForEvent resolves with the first event that matches the predicate', async () => {
    const { peer, client } = await connected();
    const concluded = client.waitForEvent('JOB_STATUS_CHANGE', (event) => event.data.id === 'snap0' && event.data.status === 'concluded');

    peer.sendEvent('JOB_STATUS_CHANGE', { id: 'snap0', status: 'running' });
    peer.sendEvent('JOB_STATUS_CHANGE', { id: 'other', status: 'concluded' });
    peer.sendEvent('JOB_STATUS_CHANGE', { id: 'snap0', status: 'concluded' });

    await expect(concluded).resolves.toMatchObject({ data: { id: 'snap0', status: 'concluded' } });
  });

  it('waitForEvent rejects with QmpTimeoutError, and with the predicate error when it throws', async () => {
    const { peer, client } = await connected();

    await expect(client.waitForEvent('SHUTDOWN', undefined, 20)).rejects.toMatchObject({ name: 'QmpTimeoutError', operation: 'event SHUTDOWN' });

    const bad = client.waitForEvent('STOP', () => {
      throw new Error('predicate bug');
    });
    peer.sendEvent('STOP');
    await expect(bad).rejects.toThrow('predicate bug');
  });
});

describe('timeouts and timers', () => {
  beforeEach(() => jest.useFakeTimers({ doNotFake: ['nextTick', 'setImmediate', 'clearImmediate', 'queueMicrotask'] }));

  it('rejects an unanswered command with QmpTimeoutError, leaves no timer, and drops the late reply', async () => {
    const { peer, client } = await connected({ commandTimeoutMs: 1_000 });
    expect(jest.getTimerCount()).toBe(0);

    const status = client.queryStatus();
    const command = await peer.nextCommand();
    expect(jest.getTimerCount()).toBe(1);
    jest.advanceTimersByTime(999);
    await tick();
    expect(jest.getTimerCount()).toBe(1);
    jest.advanceTimersByTime(1);

    await expect(status).rejects.toMatchObject({ name: 'QmpTimeoutError', operation: 'query-status', timeoutMs: 1_000 });
    expect(jest.getTimerCount()).toBe(0);

    peer.reply(command, { status: 'running' });
    const version = client.execute('query-version', undefined, { timeoutMs: 5 });
    peer.reply(await peer.nextCommand(), { qemu: { major: 7, minor: 2, micro: 0 }, package: '' });
    await expect(version).resolves.toMatchObject({ qemu: { major: 7 } });
    expect(jest.getTimerCount()).toBe(0);
    expect(client.closed).toBe(false);
  });

  it('clears command and event-wait timers when replies, events or the disconnect arrive', async () => {
    const { peer, client } = await connected();
    const answered = client.execute('cont');
    const resumed = client.waitForEvent('RESUME');
    const stopped = client.waitForEvent('STOP');
    const pending = client.execute('stop');
    expect(jest.getTimerCount()).toBe(4);

    peer.reply(await peer.nextCommand());
    peer.sendEvent('RESUME');
    await answered;
    await resumed;
    expect(jest.getTimerCount()).toBe(2);

    await peer.end();
    await expect(pending).rejects.toThrow(QmpDisconnectedError);
    await expect(stopped).rejects.toThrow(QmpDisconnectedError);
    expect(jest.getTimerCount()).toBe(0);
  });

  it('runs a command with timeoutMs: Infinity without any timer', async () => {
    const { peer, client } = await connected();
    const migration = client.execute('query-migrate', undefined, { timeoutMs: Infinity });
    expect(jest.getTimerCount()).toBe(0);
    peer.reply(await peer.nextCommand(), {});
    await expect(migration).resolves.toEqual({});
  });
});

describe('disconnects', () => {
  it('rejects pending commands when QEMU closes mid-reply, and later commands at once', async () => {
    const { peer, client } = await connected();
    const disconnects: QmpDisconnectedError[] = [];
    client.on('disconnect', (error) => disconnects.push(error));
    const status = client.queryStatus();
    const jobs = client.queryJobs();
    const shutdown = client.waitForEvent('SHUTDOWN');
    const command = await peer.nextCommand();

    peer.sendRaw(`{"return": {"status": "runn`);
    await tick();
    await peer.end();

    await expect(status).rejects.toThrow(QmpDisconnectedError);
    await expect(jobs).rejects.toThrow(QmpDisconnectedError);
    await expect(shutdown).rejects.toThrow(QmpDisconnectedError);
    expect(client.closed).toBe(true);
    expect(disconnects).toHaveLength(1);
    expect(disconnects[0].message).toMatch(/mid-message/);
    await expect(client.queryStatus()).rejects.toThrow(QmpDisconnectedError);
    await expect(client.waitForDisconnect()).resolves.toBe(disconnects[0]);
    expect(command.execute).toBe('query-status');
  });

  it('treats a stream error as a disconnect with the error as cause', async () => {
    const { client, clientStream } = await connected();
    const status = client.queryStatus();
    const gone = client.waitForDisconnect(1_000);

    clientStream.destroy(new Error('EPIPE (simulated)'));

    const error = await status.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QmpDisconnectedError);
    expect(((error as Error).cause as Error).cause).toMatchObject({ message: 'EPIPE (simulated)' });
    await expect(gone).resolves.toBeInstanceOf(QmpDisconnectedError);
  });

  it('close() rejects pending commands, is idempotent, and the peer sees the connection end', async () => {
    const { peer, client } = await connected();
    const status = client.queryStatus();
    await peer.nextCommand();

    await Promise.all([client.close(), client.close()]);

    await expect(status).rejects.toThrow(QmpDisconnectedError);
    await peer.closed;
    await client.close();
    await expect(client.pause()).rejects.toThrow(/client closed the connection/);
  });
});

describe('protocol errors: the client closes itself', () => {
  it.each([
    ['a line that is not JSON', 'garbage!\r\n'],
    ['a JSON value that is not an object', '[1, 2]\r\n'],
    ['a reply without an id', '{"return": {}}\r\n'],
    ['an object that is neither reply nor event', '{"hello": "world"}\r\n'],
    ['a second greeting', '{"QMP": {"version": {}, "capabilities": []}}\r\n'],
  ])('%s rejects pending commands with QmpProtocolError, later ones with QmpDisconnectedError', async (_what, raw) => {
    const { peer, client } = await connected();
    const disconnected = client.waitForDisconnect(1_000);
    const status = client.queryStatus();
    await peer.nextCommand();

    peer.sendRaw(raw);

    await expect(status).rejects.toThrow(QmpProtocolError);
    expect((await disconnected).cause).toBeInstanceOf(QmpProtocolError);
    const later = await client.queryStatus().catch((e: unknown) => e);
    expect(later).toBeInstanceOf(QmpDisconnectedError);
    expect(((later as Error).cause as Error).cause).toBeInstanceOf(QmpProtocolError);
    await peer.closed;
  });

  it('a message longer than maxLineLength is a protocol error', async () => {
    const { peer, client } = await connected({ maxLineLength: 1_024 });
    const status = client.queryStatus();

    peer.sendRaw('x'.repeat(2_000));

    await expect(status).rejects.toThrow(/longer than 1024 characters/);
    expect(client.closed).toBe(true);
  });
});

describe('telling a dead QEMU from a failed command', () => {
  it('command-failed: QEMU refused the command and answers the probe', async () => {
    const { peer, client } = await connected();
    peer.handle('device_add', { error: { class: 'GenericError', desc: "Duplicate device ID 'net0'" } });
    peer.handle('query-status', { return: { running: true, singlestep: false, status: 'running' } });

    const error = await client.deviceAdd({ driver: 'virtio-net-pci', id: 'net0' }).catch((e: unknown) => e);

    expect(error).toBeInstanceOf(QmpCommandError);
    await expect(client.classifyFailure(error)).resolves.toBe('command-failed');
    await expect(client.isAlive()).resolves.toBe(true);
    expect(peer.received.map((command) => command.execute)).toEqual(['qmp_capabilities', 'device_add', 'query-status', 'query-status']);
  });

  it('unresponsive: the command timed out and so does the probe; the connection stays open', async () => {
    const { client } = await connected({ probeTimeoutMs: 20 });

    const error = await client.execute('blockdev-add', { driver: 'nbd' }, { timeoutMs: 20 }).catch((e: unknown) => e);

    expect(error).toBeInstanceOf(QmpTimeoutError);
    await expect(client.classifyFailure(error)).resolves.toBe('unresponsive');
    await expect(client.isAlive(20)).resolves.toBe(false);
    expect(client.closed).toBe(false);
  });

  it('disconnected: QEMU went away; no probe is sent', async () => {
    const { peer, client } = await connected();
    const status = client.queryStatus();
    await peer.nextCommand();
    await peer.end();
    const error = await status.catch((e: unknown) => e);

    await expect(client.classifyFailure(error)).resolves.toBe('disconnected');
    await expect(client.isAlive()).resolves.toBe(false);
    expect(peer.received.map((command) => command.execute)).toEqual(['qmp_capabilities', 'query-status']);
  });
});

describe('typed methods send the QAPI command QEMU 7.2 expects', () => {
  type Case = [string, (client: QmpClient) => Promise<unknown>, string, Record<string, unknown> | undefined, unknown?];
  const cases: Case[] = [
    ['queryStatus', (c) => c.queryStatus(), 'query-status', undefined, { running: false, singlestep: false, status: 'prelaunch' }],
    ['resume', (c) => c.resume(), 'cont', undefined],
    ['pause', (c) => c.pause(), 'stop', undefined],
    ['systemPowerdown', (c) => c.systemPowerdown(), 'system_powerdown', undefined],
    ['systemReset', (c) => c.systemReset(), 'system_reset', undefined],
    ['queryVersion', (c) => c.queryVersion(), 'query-version', undefined, { qemu: { major: 7, minor: 2, micro: 0 }, package: '' }],
    ['queryCpusFast', (c) => c.queryCpusFast(), 'query-cpus-fast', undefined, []],
    ['queryBlock', (c) => c.queryBlock(), 'query-block', undefined, []],
    ['blockdevAdd', (c) => c.blockdevAdd({ driver: 'qcow2', 'node-name': 'disk0', file: 'file0' }), 'blockdev-add', { driver: 'qcow2', 'node-name': 'disk0', file: 'file0' }],
    ['blockdevDel', (c) => c.blockdevDel('disk0'), 'blockdev-del', { 'node-name': 'disk0' }],
    ['deviceAdd', (c) => c.deviceAdd({ driver: 'virtio-blk-pci', id: 'vda', drive: 'disk0' }), 'device_add', { driver: 'virtio-blk-pci', id: 'vda', drive: 'disk0' }],
    ['deviceDel', (c) => c.deviceDel('vda'), 'device_del', { id: 'vda' }],
    ['humanMonitorCommand', (c) => c.humanMonitorCommand('info name'), 'human-monitor-command', { 'command-line': 'info name' }, 'vm1\r\n'],
    ['screendump', (c) => c.screendump('/tmp/s.png', 'png'), 'screendump', { filename: '/tmp/s.png', format: 'png' }],
    ['screendump (defaults)', (c) => c.screendump('/tmp/s.ppm'), 'screendump', { filename: '/tmp/s.ppm' }],
    ['migrate', (c) => c.migrate('tcp:127.0.0.1:4444'), 'migrate', { uri: 'tcp:127.0.0.1:4444' }],
    ['migrateIncoming', (c) => c.migrateIncoming('tcp:0:4444'), 'migrate-incoming', { uri: 'tcp:0:4444' }],
    ['migrateCancel', (c) => c.migrateCancel(), 'migrate_cancel', undefined],
    [
      'migrateSetCapabilities',
      (c) => c.migrateSetCapabilities({ events: true, 'postcopy-ram': false }),
      'migrate-set-capabilities',
      { capabilities: [{ capability: 'events', state: true }, { capability: 'postcopy-ram', state: false }] },
    ],
    ['migrateSetParameters', (c) => c.migrateSetParameters({ 'downtime-limit': 300 }), 'migrate-set-parameters', { 'downtime-limit': 300 }],
    ['queryMigrate', (c) => c.queryMigrate(), 'query-migrate', undefined, { status: 'completed' }],
    ['migrateStartPostcopy', (c) => c.migrateStartPostcopy(), 'migrate-start-postcopy', undefined],
    ['migrateContinue', (c) => c.migrateContinue('pre-switchover'), 'migrate-continue', { state: 'pre-switchover' }],
    [
      'blockdevMirror',
      (c) => c.blockdevMirror({ 'job-id': 'm0', device: 'disk0', target: 'disk1', sync: 'full' }),
      'blockdev-mirror',
      { 'job-id': 'm0', device: 'disk0', target: 'disk1', sync: 'full' },
    ],
    ['blockJobCancel', (c) => c.blockJobCancel('m0', true), 'block-job-cancel', { device: 'm0', force: true }],
    ['blockJobComplete', (c) => c.blockJobComplete('m0'), 'block-job-complete', { device: 'm0' }],
    ['queryBlockJobs', (c) => c.queryBlockJobs(), 'query-block-jobs', undefined, []],
    ['queryJobs', (c) => c.queryJobs(), 'query-jobs', undefined, []],
    ['jobDismiss', (c) => c.jobDismiss('snap0'), 'job-dismiss', { id: 'snap0' }],
    ['snapshotSave', (c) => c.snapshotSave('j1', 'before', 'disk0', ['disk0']), 'snapshot-save', { 'job-id': 'j1', tag: 'before', vmstate: 'disk0', devices: ['disk0'] }],
    ['blockdevSnapshotInternalSync', (c) => c.blockdevSnapshotInternalSync('disk0', 's1'), 'blockdev-snapshot-internal-sync', { device: 'disk0', name: 's1' }],
    ['snapshotLoad', (c) => c.snapshotLoad('j2', 'before', 'disk0', ['disk0']), 'snapshot-load', { 'job-id': 'j2', tag: 'before', vmstate: 'disk0', devices: ['disk0'] }],
    ['snapshotDelete', (c) => c.snapshotDelete('j3', 'before', ['disk0']), 'snapshot-delete', { 'job-id': 'j3', tag: 'before', devices: ['disk0'] }],
    ['nbdServerStart (unix)', (c) => c.nbdServerStart({ type: 'unix', path: '/run/nbd.sock' }), 'nbd-server-start', { addr: { type: 'unix', data: { path: '/run/nbd.sock' } } }],
    [
      'nbdServerStart (inet)',
      (c) => c.nbdServerStart({ type: 'inet', host: '127.0.0.1', port: 10809 }, { 'max-connections': 2 }),
      'nbd-server-start',
      { addr: { type: 'inet', data: { host: '127.0.0.1', port: '10809' } }, 'max-connections': 2 },
    ],
    [
      'blockExportAdd',
      (c) => c.blockExportAdd({ type: 'nbd', id: 'exp0', 'node-name': 'disk0', name: 'disk0', writable: true }),
      'block-export-add',
      { type: 'nbd', id: 'exp0', 'node-name': 'disk0', name: 'disk0', writable: true },
    ],
    ['blockExportDel', (c) => c.blockExportDel('exp0'), 'block-export-del', { id: 'exp0' }],
    ['nbdServerStop', (c) => c.nbdServerStop(), 'nbd-server-stop', undefined],
    ['objectAdd', (c) => c.objectAdd({ 'qom-type': 'iothread', id: 'io0' }), 'object-add', { 'qom-type': 'iothread', id: 'io0' }],
    ['objectDel', (c) => c.objectDel('io0'), 'object-del', { id: 'io0' }],
    ['queryNamedBlockNodes', (c) => c.queryNamedBlockNodes(), 'query-named-block-nodes', { flat: true }, []],
    ['xBlockdevChange (add)', (c) => c.xBlockdevChange({ parent: 'q', node: 'r1' }), 'x-blockdev-change', { parent: 'q', node: 'r1' }],
    ['xBlockdevChange (remove)', (c) => c.xBlockdevChange({ parent: 'q', child: 'children.0' }), 'x-blockdev-change', { parent: 'q', child: 'children.0' }],
    ['blockGraph', (c) => c.blockGraph(), 'x-debug-query-block-graph', undefined, { nodes: [], edges: [] }],
    ['blockStream', (c) => c.blockStream('sync', 'link'), 'block-stream', { 'job-id': 'sync', device: 'link' }],
    ['blockdevBackup', (c) => c.blockdevBackup('copy', 'src', 'dst'), 'blockdev-backup', { 'job-id': 'copy', device: 'src', target: 'dst', sync: 'full' }],
    ['blockdevCreate', (c) => c.blockdevCreate('fmt', { driver: 'luks', file: 'up', size: 1 }), 'blockdev-create', { 'job-id': 'fmt', options: { driver: 'luks', file: 'up', size: 1 } }],
  ];

  it.each(cases)('%s', async (...[, call, execute, args, returned]: Case) => {
    const { peer, client } = await connected();
    const result = call(client);
    const command = await peer.nextCommand();

    expect(command).toEqual(args === undefined ? { execute, id: command.id } : { execute, arguments: args, id: command.id });
    peer.reply(command, returned ?? {});
    const value = await result;
    if (returned === undefined) expect(value).toBeUndefined();
    else expect(value).toEqual(returned);
  });

  it('quit resolves when QEMU closes the connection before its reply arrives', async () => {
    const { peer, client } = await connected();
    const quitting = client.quit();
    await peer.nextCommand();
    peer.sendEvent('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
    await peer.end();

    await expect(quitting).resolves.toBeUndefined();
    expect(client.closed).toBe(true);
    await expect(client.quit()).rejects.toThrow(QmpDisconnectedError);
  });
});

describe('over a unix socket', () => {
  let dir: string;
  let server: Server;
  const peers: FakeQmpPeer[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'qmp-spec-'));
    server = createServer((socket) => {
      peers.push(new FakeQmpPeer(socket).handle('query-status', { return: { running: false, singlestep: false, status: 'prelaunch' } }));
    });
    await new Promise<void>((resolve) => server.listen(join(dir, 'qmp.sock'), resolve));
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await rm(dir, { recursive: true, force: true });
  });

  it('connects to a socket path, runs a command and closes', async () => {
    const client = await QmpClient.connect(join(dir, 'qmp.sock'));
    clients.push(client);

    await expect(client.queryStatus()).resolves.toMatchObject({ status: 'prelaunch' });
    await client.close();
    await peers[0].closed;
  });

  it('rejects with QmpDisconnectedError, the errno error as cause, when nothing listens', async () => {
    const error = await QmpClient.connect(join(dir, 'missing.sock')).catch((e: unknown) => e);

    expect(error).toBeInstanceOf(QmpDisconnectedError);
    expect((error as Error).cause).toMatchObject({ code: 'ENOENT' });
  });
});
