import { randomUUID } from 'node:crypto';
import { Inject, Injectable, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import { DeadlineExceededError, UnavailableError } from '@hyperplane/domain';
import { agentV1 } from '@hyperplane/proto';
import { Redis } from 'ioredis';
import { Logger } from 'pino';
import { Config, CONFIG } from '../config';
import { LOGGER, REDIS, REDIS_SUB } from '../common/tokens';
import type { PartitionRow } from '../partitions/partition.repository';

/** A command to an agent, without its id. */
export type CommandBody = Omit<agentV1.Command, 'id'>;

/** Something that writes control messages down one agent's stream. */
export interface AgentStreamWriter {
  write(msg: agentV1.ControlMessage): void;
}

type Routed =
  | { type: 'sync'; partitionId: string }
  | { type: 'provider'; replicaId: string }
  | { type: 'command'; requestId: string; replyTo: string; body: CommandBody; timeoutMs: number; atOnce?: boolean };

/** How a command is sent. */
export interface CommandOptions {
  /**
   * Its result is handed to the waiter as soon as it arrives, not after the node's messages sent
   * before it were handled (their status reports are written to PostgreSQL one after the other).
   * Only for a waiter that does not read what those messages record: a migration's steps, which
   * write the partition's record themselves.
   */
  atOnce?: boolean;
}

interface Pending {
  resolve: (r: agentV1.CommandResult__Output) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * The live agent streams of this replica, and routing to streams held by other replicas through
 * Redis pub/sub (one channel per node, subscribed by whichever replica holds its stream), so any
 * replica's operation can reach any node.
 */
@Injectable()
export class AgentSessions implements OnModuleInit, OnModuleDestroy {
  /** This replica's id; nodes.connected_to names it. */
  readonly replicaId = randomUUID();
  private readonly local = new Map<string, AgentStreamWriter>();
  private readonly pending = new Map<string, Pending>();
  /** Commands written down a local stream and not yet answered (wire command id → node), failed when the stream goes. */
  private readonly unanswered = new Map<string, { nodeId: string; atOnce: boolean }>();
  private readonly prefix: string;
  private pushSpec: (nodeId: string, partitionId: string, known?: PartitionRow) => Promise<void> = async () => undefined;
  private pushProvider: (nodeId: string, replicaId: string) => Promise<void> = async () => undefined;
  private readonly onMessage = (channel: string, message: string) => void this.route(channel, message);

  constructor(
    @Inject(REDIS) private readonly redis: Redis,
    @Inject(REDIS_SUB) private readonly sub: Redis,
    @Inject(CONFIG) config: Config,
    @Inject(LOGGER) private readonly log: Logger,
  ) {
    this.prefix = config.redisPrefix;
  }

  async onModuleInit(): Promise<void> {
    this.sub.on('message', this.onMessage);
    await this.sub.subscribe(this.replyChannel(this.replicaId));
  }

  async onModuleDestroy(): Promise<void> {
    this.sub.off('message', this.onMessage);
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new UnavailableError('control plane shutting down'));
    }
    this.pending.clear();
  }

  /** Sets how a partition's spec is sent down a local stream (AgentsService provides it). */
  setSpecPusher(fn: (nodeId: string, partitionId: string, known?: PartitionRow) => Promise<void>): void {
    this.pushSpec = fn;
  }

  /** Sets how a service-chain provider's spec is sent down a local stream (service-chains provides it). */
  setProviderPusher(fn: (nodeId: string, replicaId: string) => Promise<void>): void {
    this.pushProvider = fn;
  }

  /** Asks the replica holding the node's stream to send it a provider's current spec. False when no replica holds it. */
  async syncProvider(nodeId: string, replicaId: string): Promise<boolean> {
    if (this.local.has(nodeId)) {
      await this.pushProvider(nodeId, replicaId);
      return true;
    }
    const n = await this.redis.publish(this.nodeChannel(nodeId), JSON.stringify({ type: 'provider', replicaId } satisfies Routed));
    return n > 0;
  }

  /** Registers a node's stream on this replica. */
  async attach(nodeId: string, writer: AgentStreamWriter): Promise<void> {
    this.local.set(nodeId, writer);
    await this.sub.subscribe(this.nodeChannel(nodeId));
  }

  /** Forgets a node's stream (if it is still the given one). */
  async detach(nodeId: string, writer: AgentStreamWriter): Promise<void> {
    if (this.local.get(nodeId) !== writer) return;
    this.local.delete(nodeId);
    await this.sub.unsubscribe(this.nodeChannel(nodeId)).catch(() => undefined);
    // Results of commands sent down that stream will never come: their waiters learn it now.
    for (const [commandId, n] of [...this.unanswered]) {
      if (n.nodeId !== nodeId) continue;
      await this.resolveResult({ commandId, ok: false, errorCode: 'UNAVAILABLE', errorMessage: `node ${nodeId} disconnected before it answered`, payload: '' });
    }
  }

  /** True when this replica holds the node's stream. */
  isLocal(nodeId: string): boolean {
    return this.local.has(nodeId);
  }

  /** Writes a message down a local stream. */
  send(nodeId: string, msg: agentV1.ControlMessage): boolean {
    const w = this.local.get(nodeId);
    if (!w) return false;
    w.write(msg);
    return true;
  }

  /**
   * Asks the replica holding the node's stream to send it a partition's current spec. False when no
   * replica holds it. `known`: the partition's row as the caller just read or wrote it; sent as it
   * is when the stream is here (another replica reads the row itself).
   */
  async sync(nodeId: string, partitionId: string, known?: PartitionRow): Promise<boolean> {
    if (this.local.has(nodeId)) {
      await this.pushSpec(nodeId, partitionId, known);
      return true;
    }
    const n = await this.redis.publish(this.nodeChannel(nodeId), JSON.stringify({ type: 'sync', partitionId } satisfies Routed));
    return n > 0;
  }

  /** Sends a command to a node and waits for its result. */
  command(nodeId: string, body: CommandBody, timeoutMs: number, opts: CommandOptions = {}): Promise<agentV1.CommandResult__Output> {
    const atOnce = Boolean(opts.atOnce);
    const requestId = randomUUID();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(requestId);
        reject(new DeadlineExceededError(`node did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(requestId, { resolve, reject, timer });
      const fail = (e: Error) => {
        clearTimeout(timer);
        this.pending.delete(requestId);
        reject(e);
      };
      if (this.local.has(nodeId)) {
        this.unanswered.set(requestId, { nodeId, atOnce });
        this.send(nodeId, { command: { id: requestId, ...body } });
        return;
      }
      const routed: Routed = { type: 'command', requestId, replyTo: this.replicaId, body, timeoutMs, ...(atOnce ? { atOnce } : {}) };
      this.redis.publish(this.nodeChannel(nodeId), JSON.stringify(routed)).then(
        (n) => { if (n === 0) fail(new UnavailableError(`node ${nodeId} is not connected`)); },
        (e: Error) => fail(new UnavailableError(`cannot reach node ${nodeId}: ${e.message}`)),
      );
    });
  }

  /** True for the result of a command sent with `atOnce` (see CommandOptions): it need not wait for the node's earlier messages. */
  answersAtOnce(commandId: string): boolean {
    return this.unanswered.get(commandId)?.atOnce ?? false;
  }

  /** Delivers an agent's command result to whoever waits for it, here or on another replica. */
  async resolveResult(result: agentV1.CommandResult__Output): Promise<void> {
    this.unanswered.delete(result.commandId ?? '');
    const [requestId = '', replyTo] = (result.commandId ?? '').split('@');
    if (replyTo && replyTo !== this.replicaId) {
      await this.redis.publish(this.replyChannel(replyTo), JSON.stringify({ ...result, commandId: requestId }));
      return;
    }
    this.settle({ ...result, commandId: requestId });
  }

  private settle(result: agentV1.CommandResult__Output): void {
    const id = result.commandId ?? '';
    const p = this.pending.get(id);
    if (!p) return;
    clearTimeout(p.timer);
    this.pending.delete(id);
    p.resolve(result);
  }

  private async route(channel: string, message: string): Promise<void> {
    try {
      if (channel === this.replyChannel(this.replicaId)) {
        this.settle(JSON.parse(message) as agentV1.CommandResult__Output);
        return;
      }
      const nodeId = channel.slice(this.nodeChannel('').length);
      if (!this.local.has(nodeId)) return;
      const m = JSON.parse(message) as Routed;
      if (m.type === 'sync') await this.pushSpec(nodeId, m.partitionId);
      else if (m.type === 'provider') await this.pushProvider(nodeId, m.replicaId);
      else {
        this.unanswered.set(`${m.requestId}@${m.replyTo}`, { nodeId, atOnce: Boolean(m.atOnce) });
        this.send(nodeId, { command: { id: `${m.requestId}@${m.replyTo}`, ...m.body } });
      }
    } catch (err) {
      this.log.warn({ err, channel }, 'could not route an agent message');
    }
  }

  private nodeChannel(nodeId: string): string {
    return `${this.prefix}:node:${nodeId}`;
  }

  private replyChannel(replicaId: string): string {
    return `${this.prefix}:reply:${replicaId}`;
  }
}
