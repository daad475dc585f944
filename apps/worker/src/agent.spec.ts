/**
 * The agent against a fake control plane over real gRPC, with the simulated driver: register →
 * registered → desired state → status reports, heartbeats, commands, console sessions, and a
 * control plane that dies and comes back.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { agentV1 } from '@hyperplane/proto';
import pino from 'pino';
import { NodeAgent } from './agent';
import { createAgentServiceClient } from './agent-client';
import { SimulatedDriver } from './drivers/simulated/simulated.driver';
import { FakeControlPlane } from './testing/fake-control-plane';
import { Ticker } from './ticker';

const P1 = '01900000-0000-7000-8000-0000000000b1';
const P2 = '01900000-0000-7000-8000-0000000000b2';
const NODE = 'hollow-1';

function spec(id: string, desired: string, generation: number): agentV1.PartitionSpec {
  return { id, name: `p${id.slice(-1)}`, projectId: 'proj', vcpus: 1, memoryMib: 128, diskGib: 1, image: 'sample', desired, generation };
}

const isStatus = (id: string, state: string, generation?: number) => (m: agentV1.AgentMessage__Output) =>
  m.body === 'status' && m.status?.id === id && m.status.state === state && (generation === undefined || m.status.generation === generation);

describe('agent ↔ control plane (fake control plane, simulated driver)', () => {
  let dataDir: string;
  let cp: FakeControlPlane;
  let ticker: Ticker;
  let client: ReturnType<typeof createAgentServiceClient>;
  let driver: SimulatedDriver;
  let agent: NodeAgent;
  const logs: Record<string, unknown>[] = [];

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'hp-agent-'));
    cp = await FakeControlPlane.start(0, { heartbeatIntervalMs: 100, desired: () => [spec(P1, 'running', 1), spec(P2, 'stopped', 1)] });
    ticker = new Ticker(20);
    client = createAgentServiceClient(cp.target);
    driver = new SimulatedDriver({ startMs: 20 });
    const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) });
    agent = new NodeAgent({
      nodeName: NODE,
      address: '127.0.0.9',
      dataDir,
      joinToken: 'join-me',
      labels: { rack: 'r1' },
      driver,
      client,
      ticker,
      log,
      backoff: { initialMs: 100, maxMs: 400 },
    });
    await agent.start();
  });

  afterAll(async () => {
    await agent?.stop();
    ticker?.stop();
    client?.close();
    await cp?.stop();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('registers with its inventory, no node id yet and nothing running', async () => {
    const { register } = await cp.waitFor((m) => m.body === 'register', 5_000, 'register');

    expect(register).toMatchObject({ nodeName: NODE, address: '127.0.0.9', joinToken: 'join-me' });
    expect(register!.nodeId ?? '').toBe('');
    expect(register!.partitions ?? []).toEqual([]);
    expect(register!.inventory).toMatchObject({
      driver: 'simulated',
      accelerator: 'simulated',
      cpus: 64,
      labels: { rack: 'r1' },
      images: [expect.objectContaining({ name: 'sample', format: 'qcow2', virtualSizeBytes: 64 * 2 ** 20 })],
    });
    expect(register!.inventory!.diskBytes).toBeGreaterThan(0);
  });

  it('applies the desired state that follows Registered and reports every change with its generation', async () => {
    await cp.waitFor(isStatus(P1, 'running', 1), 5_000, 'P1 running');
    await cp.waitFor(isStatus(P2, 'stopped', 1), 5_000, 'P2 stopped');

    const p1 = cp.messages.filter((m) => m.body === 'status' && m.status?.id === P1).map((m) => m.status!.state);
    expect(p1).toEqual(['starting', 'running']);
    // Persisted without holding up the registration: it may land a moment after the first reports.
    let nodeId = '';
    for (let i = 0; i < 100 && !nodeId; i++) {
      nodeId = await readFile(join(dataDir, 'node-id'), 'utf8').catch(() => '');
      if (!nodeId) await new Promise((r) => setTimeout(r, 20));
    }
    expect(nodeId).toBe(`node-${NODE}\n`);
  });

  it('sends heartbeats with a rising sequence and the number of running partitions', async () => {
    const beats = await cp.waitUntil(() => {
      const hb = cp.messages.filter((m) => m.body === 'heartbeat').map((m) => m.heartbeat!);
      return hb.length >= 3 ? hb : undefined;
    }, 3_000, 'three heartbeats');

    expect(beats.map((b) => b.sequence)).toEqual([1, 2, 3]);
    expect(beats.at(-1)).toMatchObject({ runningPartitions: 1 });
  });

  it('answers commands with their id echoed: consoleTail carries {data, truncated}', async () => {
    cp.send(NODE, { command: { id: 'tail-1@replica-a', consoleTail: { partitionId: P1, bytes: 4096 } } });
    const { result } = await cp.waitFor((m) => m.body === 'result' && m.result?.commandId === 'tail-1@replica-a');

    expect(result).toMatchObject({ ok: true });
    expect(JSON.parse(result!.payload!)).toEqual({ data: expect.stringContaining('HYPERPLANE-GUEST-READY'), truncated: false });
  });

  it('bridges an interactive console session; a second session on the same partition is refused', async () => {
    cp.send(NODE, { consoleOpen: { sessionId: 's1', partitionId: P1 } });
    cp.send(NODE, { consoleOpen: { sessionId: 's2', partitionId: P1 } });
    cp.send(NODE, { consoleInput: { sessionId: 's1', data: Buffer.from('echo hi\n') } });
    await cp.waitFor((m) => m.body === 'consoleOutput' && m.consoleOutput?.sessionId === 's1' && m.consoleOutput.data?.toString() === 'echo hi\n');
    const refused = await cp.waitFor((m) => m.body === 'consoleOutput' && m.consoleOutput?.sessionId === 's2');
    expect(refused.consoleOutput).toMatchObject({ closed: true, error: expect.stringContaining('in use by another session') });

    cp.send(NODE, { consoleClose: { sessionId: 's1' } });
    await cp.waitFor((m) => m.body === 'consoleOutput' && m.consoleOutput?.sessionId === 's1' && m.consoleOutput.closed === true);
    cp.send(NODE, { consoleOpen: { sessionId: 's3', partitionId: P2 } });
    const stopped = await cp.waitFor((m) => m.body === 'consoleOutput' && m.consoleOutput?.sessionId === 's3');
    expect(stopped.consoleOutput).toMatchObject({ closed: true, error: expect.stringContaining('is not running') });
  });

  it('when the control plane dies it keeps its guests, retries with growing backoff, re-registers reporting what runs, and applies the new full desired state', async () => {
    const port = cp.port;
    await cp.stop();
    const lostAt = Date.now();
    await waitFor(() => logs.filter((l) => l.msg === 'cannot reach the control plane; retrying').length >= 3, 5_000);

    expect(agent.client.phase).toBe('waiting');
    expect(driver.isRunning(P1)).toBe(true);
    const retries = logs.filter((l) => l.msg === 'lost the control plane; guests keep running; reconnecting' || l.msg === 'cannot reach the control plane; retrying');
    retries.forEach((l, i) => {
      const ceiling = Math.min(400, 100 * 2 ** i);
      expect(l.retryInMs).toBeGreaterThanOrEqual(ceiling * 0.75);
      expect(l.retryInMs).toBeLessThanOrEqual(ceiling);
    });

    cp = await FakeControlPlane.start(port, { heartbeatIntervalMs: 100, desired: () => [spec(P1, 'running', 1)] });
    const { register } = await cp.waitFor((m) => m.body === 'register', 5_000, 're-register');

    expect(Date.now() - lostAt).toBeGreaterThanOrEqual(0.75 * (100 + 200 + 400));
    expect(register).toMatchObject({ nodeName: NODE, nodeId: `node-${NODE}` });
    expect(register!.partitions).toEqual(
      expect.arrayContaining([
        { id: P1, state: 'running', reason: '', generation: 1, pid: 0 },
        { id: P2, state: 'stopped', reason: '', generation: 1, pid: 0 },
      ]),
    );
    // Same generation: no action, only a report. P2 is not listed any more: removed.
    await cp.waitFor(isStatus(P2, 'absent', 1), 5_000, 'P2 absent');
    await cp.waitFor(isStatus(P1, 'running', 1), 5_000, 'P1 running report');
    expect(cp.messages.some(isStatus(P1, 'starting'))).toBe(false);
    expect(agent.client.registrationCount).toBe(2);
  });

  it('stopping the agent closes the stream and leaves the guests running', async () => {
    await agent.stop();

    await cp.waitUntil(() => (cp.streamOf(NODE)?.ended ? true : undefined), 5_000, 'stream end');
    expect(agent.client.phase).toBe('closed');
    expect(driver.isRunning(P1)).toBe(true);
  });
});

async function waitFor(condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
