import { EventEmitter } from 'node:events';
import { agentV1 } from '@hyperplane/proto';
import pino from 'pino';
import { AgentsService } from '../agents/agents.service';
import { ChainAgents } from '../service-chains/chain-agents';
import { AgentGrpcApi } from './agent.grpc';

/** A stream's call: the test emits what the node sends. */
class FakeCall extends EventEmitter {
  written: agentV1.ControlMessage[] = [];
  write(m: agentV1.ControlMessage): void {
    this.written.push(m);
  }
  end(): void {}
}

const event = (n: number): agentV1.AgentMessage__Output => ({ body: 'event', event: { partitionId: 'p', event: `E${n}`, dataJson: '', at: '' } }) as unknown as agentV1.AgentMessage__Output;
const status = (state: string): agentV1.AgentMessage__Output => ({ body: 'status', status: { id: 'p', state } }) as unknown as agentV1.AgentMessage__Output;
const result = (id: string): agentV1.AgentMessage__Output => ({ body: 'result', result: { commandId: id, ok: true } }) as unknown as agentV1.AgentMessage__Output;

describe('AgentGrpcApi: the messages of one stream', () => {
  it('are handled in order, and guest events that wait behind other messages are handled together', async () => {
    const calls: string[] = [];
    let release!: () => void;
    const blocked = new Promise<void>((r) => (release = r));
    const agents = {
      register: async () => 'node-1',
      onStatus: async (_node: string, s: { state: string }) => {
        calls.push(`status ${s.state}`);
        if (s.state === 'slow') await blocked;
      },
      onGuestEvents: async (node: string, events: Array<{ event: string }>) => {
        calls.push(`events ${node} ${events.map((e) => e.event).join(',')}`);
      },
      onResult: async (r: { commandId: string }) => {
        calls.push(`result ${r.commandId}`);
      },
      // Commands sent with atOnce (here: ids starting "now").
      answersAtOnce: (r: { commandId: string }) => r.commandId.startsWith('now'),
      disconnected: async () => undefined,
    } as unknown as AgentsService;
    const chains = { onRegister: async () => undefined } as unknown as ChainAgents;
    const api = new AgentGrpcApi(agents, chains, pino({ level: 'silent' }));
    const call = new FakeCall();
    (api.service().Connect as (c: unknown) => void)(call);

    call.emit('data', { body: 'register', register: { name: 'n1' } });
    call.emit('data', status('slow')); // holds the stream while the next ones arrive
    for (const n of [1, 2, 3]) call.emit('data', event(n));
    call.emit('data', result('c1'));
    call.emit('data', event(4));
    call.emit('data', event(5));
    await new Promise((r) => setImmediate(r));
    expect(calls).toEqual(['status slow']);

    release();
    await new Promise((r) => setTimeout(r, 10));
    expect(calls).toEqual(['status slow', 'events node-1 E1,E2,E3', 'result c1', 'events node-1 E4,E5']);

    // Nothing waiting: an event is handled by itself, at once.
    call.emit('data', event(6));
    await new Promise((r) => setImmediate(r));
    expect(calls.at(-1)).toBe('events node-1 E6');
  });

  it('hand the result of a command sent with atOnce over at once, even while earlier messages are still handled', async () => {
    let release!: () => void;
    const blocked = new Promise<void>((r) => (release = r));
    const calls: string[] = [];
    const agents = {
      register: async () => 'node-1',
      onStatus: async (_node: string, s: { state: string }) => {
        calls.push(`status ${s.state}`);
        if (s.state === 'slow') await blocked;
      },
      onResult: async (r: { commandId: string }) => {
        calls.push(`result ${r.commandId}`);
      },
      answersAtOnce: (r: { commandId: string }) => r.commandId.startsWith('now'),
      disconnected: async () => undefined,
    } as unknown as AgentsService;
    const api = new AgentGrpcApi(agents, { onRegister: async () => undefined } as unknown as ChainAgents, pino({ level: 'silent' }));
    const call = new FakeCall();
    (api.service().Connect as (c: unknown) => void)(call);
    call.emit('data', { body: 'register', register: { name: 'n1' } });
    await new Promise((r) => setImmediate(r)); // registered
    call.emit('data', status('slow'));
    call.emit('data', result('later-1'));
    call.emit('data', result('now-1'));
    await new Promise((r) => setImmediate(r));
    expect([...calls].sort()).toEqual(['result now-1', 'status slow']); // the other result waits behind the status
    release();
    await new Promise((r) => setTimeout(r, 10));
    expect(calls.at(-1)).toBe('result later-1');
    expect(calls).toHaveLength(3);
  });
});
