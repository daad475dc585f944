/**
 * The agent's end of the agent protocol: one node-initiated bidirectional stream to the control
 * plane. It registers (inventory, node id, the statuses of what really runs), sends heartbeats,
 * statuses, command results, guest events and console output, and hands what the control plane
 * sends to the reconciler and the console sessions. When the stream goes away it reconnects with
 * exponential backoff and jitter (0.5 s → 10 s) and registers again; guests are never touched
 * because of the stream.
 *
 * Timing (heartbeats, reconnect delays, the registration deadline) runs off a shared Ticker, so
 * a client owns no timer of its own.
 */
import * as grpc from '@grpc/grpc-js';
import { freemem, loadavg } from 'node:os';
import { AGENT_PROTO_FILE, loadGrpcObject, type agentV1 } from '@hyperplane/proto';
import type { Logger } from 'pino';
import { backoffDelay, RECONNECT_BACKOFF, type BackoffPolicy } from './backoff';
import type { ConsoleSessions } from './console-sessions';
import { readNodeId, writeNodeId } from './node-files';
import type { Reconciler } from './reconciler';
import type { ProviderReconciler } from './providers/provider-reconciler';
import type { TickMember } from './ticker';

/** Heartbeat period used until the control plane names one. */
export const DEFAULT_HEARTBEAT_MS = 3_000;

/** How long the control plane has to answer Register before the stream is dropped and retried. */
export const REGISTER_TIMEOUT_MS = 15_000;

type AgentCall = grpc.ClientDuplexStream<agentV1.AgentMessage, agentV1.ControlMessage__Output>;

/** The part of the loaded agent proto this file uses. */
interface AgentProtoTree {
  hyperplane: { agent: { v1: { AgentService: new (target: string, credentials: grpc.ChannelCredentials, options?: grpc.ChannelOptions) => agentV1.AgentServiceClient } } };
}

/**
 * A gRPC client for AgentService at `target` (`host:port`), insecure. Channel reconnect backoff is
 * aligned with the agent's own (0.5 s → 10 s), and keepalive pings notice a dead peer.
 * One client can carry the streams of many nodes (hollow nodes share one).
 */
export function createAgentServiceClient(target: string): agentV1.AgentServiceClient {
  const { tree } = loadGrpcObject<AgentProtoTree>([AGENT_PROTO_FILE]);
  return new tree.hyperplane.agent.v1.AgentService(target, grpc.credentials.createInsecure(), {
    'grpc.initial_reconnect_backoff_ms': 500,
    'grpc.max_reconnect_backoff_ms': 10_000,
    'grpc.keepalive_time_ms': 20_000,
    'grpc.keepalive_timeout_ms': 10_000,
    'grpc.max_receive_message_length': 16 * 1024 * 1024,
  });
}

/** Phases of the client: waiting = between attempts; closed = for good. */
export type AgentClientPhase = 'idle' | 'connecting' | 'registering' | 'ready' | 'waiting' | 'closed';

/** What an AgentClient needs. */
export interface AgentClientOptions {
  nodeName: string;
  address: string;
  joinToken: string;
  /** The node's data dir, where `node-id` is kept. */
  dataDir: string;
  client: agentV1.AgentServiceClient;
  reconciler: Reconciler;
  /** Service-chain providers; undefined when this node cannot run them (provider specs are then answered `failed`). */
  providers?: ProviderReconciler;
  consoles: () => ConsoleSessions;
  inventory: () => Promise<agentV1.Inventory>;
  /** Commands run outside the reconciler (image transfers), when it handles them. */
  transfers?: { handles(cmd: agentV1.Command__Output): boolean; command(cmd: agentV1.Command__Output): Promise<agentV1.CommandResult> };
  log: Logger;
  backoff?: BackoffPolicy;
  registerTimeoutMs?: number;
  random?: () => number;
}

/** The stream of one node. Call `start` once; drive it with `tick` from a Ticker. */
export class AgentClient implements TickMember {
  private phaseValue: AgentClientPhase = 'idle';
  private call: AgentCall | undefined;
  private attempt = 0;
  private rejected = false;
  private reconnectAt = 0;
  private registerDeadline = 0;
  private heartbeatMs = DEFAULT_HEARTBEAT_MS;
  private nextHeartbeatAt = 0;
  private sequence = 0;
  private nodeIdValue = '';
  private registrations = 0;
  private readonly log: Logger;

  constructor(private readonly options: AgentClientOptions) {
    this.log = options.log;
  }

  /** Where the client is in its life cycle. */
  get phase(): AgentClientPhase {
    return this.phaseValue;
  }

  /** The node id (persisted; '' before the first registration). */
  get nodeId(): string {
    return this.nodeIdValue;
  }

  /** How many times the control plane accepted this node's registration. */
  get registrationCount(): number {
    return this.registrations;
  }

  /** Reads the persisted node id and opens the first stream. */
  async start(): Promise<void> {
    this.nodeIdValue = await readNodeId(this.options.dataDir);
    this.connect();
  }

  /**
   * Sends a message on the current stream once Register went out; returns false (and drops the
   * message) otherwise: after a reconnect, Register carries the current statuses anyway.
   */
  send(message: agentV1.AgentMessage): boolean {
    const call = this.call;
    if (!call || (this.phaseValue !== 'registering' && this.phaseValue !== 'ready')) return false;
    call.write(message);
    return true;
  }

  tick(now: number): void {
    switch (this.phaseValue) {
      case 'waiting':
        if (now >= this.reconnectAt) this.connect();
        return;
      case 'connecting':
      case 'registering':
        if (now >= this.registerDeadline && this.call) this.lost(this.call, 'the control plane did not answer Register in time');
        return;
      case 'ready':
        if (now >= this.nextHeartbeatAt) {
          this.nextHeartbeatAt = now + this.heartbeatMs;
          this.options.reconciler.recheckIncoming(now);
          this.send({
            heartbeat: {
              sequence: ++this.sequence,
              runningPartitions: this.options.reconciler.runningCount(),
              load1: loadavg()[0] ?? 0,
              memoryAvailableMib: Math.floor(freemem() / 2 ** 20),
            },
          });
        }
        return;
      default:
        return;
    }
  }

  /** Closes the stream for good (the control plane sees the node go). Guests keep running. */
  async close(): Promise<void> {
    if (this.phaseValue === 'closed') return;
    this.phaseValue = 'closed';
    const call = this.call;
    this.call = undefined;
    this.options.consoles().closeAll();
    if (call) {
      call.end();
      call.cancel();
    }
  }

  private connect(): void {
    if (this.phaseValue === 'closed') return;
    this.phaseValue = 'connecting';
    this.registerDeadline = Date.now() + (this.options.registerTimeoutMs ?? REGISTER_TIMEOUT_MS);
    const call = this.options.client.Connect();
    this.call = call;
    call.on('data', (message: agentV1.ControlMessage__Output) => this.onMessage(call, message));
    call.on('error', (error: grpc.ServiceError) => this.lost(call, error.details || error.message));
    call.on('end', () => this.lost(call, 'the control plane ended the stream'));
    void this.register(call);
  }

  private async register(call: AgentCall): Promise<void> {
    let inventory: agentV1.Inventory;
    try {
      inventory = await this.options.inventory();
    } catch (error) {
      this.log.error({ err: error }, 'cannot collect the inventory');
      this.lost(call, `cannot collect the inventory: ${(error as Error).message}`);
      return;
    }
    if (call !== this.call) return;
    const partitions = this.options.reconciler.statuses();
    call.write({
      register: {
        nodeName: this.options.nodeName,
        address: this.options.address,
        inventory,
        partitions,
        joinToken: this.options.joinToken,
        nodeId: this.nodeIdValue,
        providers: this.options.providers?.statuses() ?? [],
      },
    });
    this.phaseValue = 'registering';
    this.log.debug({ partitions: partitions.length }, 'register sent');
  }

  private onMessage(call: AgentCall, message: agentV1.ControlMessage__Output): void {
    if (call !== this.call) return;
    const { reconciler } = this.options;
    switch (message.body) {
      case 'registered':
        this.onRegistered(message.registered!);
        return;
      case 'desired':
        reconciler.desired(message.desired?.partitions ?? []);
        return;
      case 'upsert':
        reconciler.upsert(message.upsert!);
        return;
      case 'command': {
        const command = message.command!;
        const transfers = this.options.transfers;
        const providers = this.options.providers;
        const handled = transfers?.handles(command) ? transfers.command(command) : command.body === 'providerLog' && providers ? providers.command(command) : reconciler.command(command);
        void handled.then((result) => {
          if (!this.send({ result })) this.log.warn({ command: command.id }, 'command result not delivered: no stream');
        });
        return;
      }
      case 'rejected':
        this.rejected = true;
        this.log.error({ reason: message.rejected?.reason }, 'the control plane rejected this node');
        return;
      case 'consoleOpen':
        this.options.consoles().open(message.consoleOpen?.sessionId ?? '', message.consoleOpen?.partitionId ?? '', (id) => reconciler.stateOf(id) !== undefined);
        return;
      case 'consoleInput':
        this.options.consoles().input(message.consoleInput?.sessionId ?? '', message.consoleInput?.data);
        return;
      case 'consoleClose':
        this.options.consoles().close(message.consoleClose?.sessionId ?? '');
        return;
      case 'providersDesired':
        this.onProviders(message.providersDesired?.providers ?? [], true);
        return;
      case 'providerUpsert':
        this.onProviders([message.providerUpsert!], false);
        return;
      default:
        this.log.warn({ body: message.body }, 'unknown control message ignored');
    }
  }

  private onProviders(specs: agentV1.ProviderSpec__Output[], full: boolean): void {
    const providers = this.options.providers;
    if (providers) {
      if (full) providers.desired(specs);
      else providers.upsert(specs[0]!);
      return;
    }
    for (const s of specs) {
      const absent = s.desired === 'absent';
      this.send({ providerStatus: { id: s.id ?? '', state: absent ? 'absent' : 'failed', reason: absent ? '' : 'this node cannot run service-chain providers (simulated driver)', generation: Number(s.generation ?? 0), chainId: s.chainId ?? '', link: s.link ?? '' } });
    }
  }

  private onRegistered(registered: agentV1.Registered__Output): void {
    this.phaseValue = 'ready';
    this.attempt = 0;
    this.rejected = false;
    this.registrations++;
    const interval = Number(registered.heartbeatIntervalMs ?? 0);
    this.heartbeatMs = interval > 0 ? interval : DEFAULT_HEARTBEAT_MS;
    this.nextHeartbeatAt = Date.now() + this.heartbeatMs;
    const nodeId = registered.nodeId ?? '';
    if (nodeId && nodeId !== this.nodeIdValue) {
      this.nodeIdValue = nodeId;
      writeNodeId(this.options.dataDir, nodeId).catch((error: unknown) => this.log.error({ err: error }, 'cannot persist the node id'));
    }
    this.log.info({ nodeId, heartbeatMs: this.heartbeatMs }, 'registered with the control plane');
  }

  /** The stream is gone (error, end, or our deadline): schedule the next attempt. */
  private lost(call: AgentCall, why: string): void {
    if (call !== this.call) return;
    this.call = undefined;
    call.cancel();
    this.options.consoles().closeAll();
    if (this.phaseValue === 'closed') return;
    const wasReady = this.phaseValue === 'ready';
    const attempt = this.rejected ? 30 : this.attempt++;
    const delay = backoffDelay(attempt, this.options.backoff ?? RECONNECT_BACKOFF, this.options.random);
    this.phaseValue = 'waiting';
    this.reconnectAt = Date.now() + delay;
    const fields = { reason: why, retryInMs: delay, attempt: attempt + 1 };
    if (wasReady) this.log.warn(fields, 'lost the control plane; guests keep running; reconnecting');
    else this.log.info(fields, 'cannot reach the control plane; retrying');
  }
}
