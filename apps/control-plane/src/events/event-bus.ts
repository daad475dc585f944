import { EventEmitter } from 'node:events';
import { Inject, Injectable, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import { uuidv7 } from '@hyperplane/domain';
import { Redis } from 'ioredis';
import { Logger } from 'pino';
import { Config, CONFIG } from '../config';
import { LOGGER, REDIS, REDIS_SUB } from '../common/tokens';

/** A resource change, as the event stream (SSE, gRPC Watch) shows it. */
export interface HpEvent {
  id: string;
  /** `<resourceType>.<verb>`: partition.created, partition.updated, partition.deleted, operation.updated, node.updated. */
  type: string;
  resourceType: 'partition' | 'operation' | 'node' | 'project' | 'image' | 'snapshot';
  resourceId: string;
  /** Null for cluster-level resources (nodes), seen only by cluster admins. */
  projectId: string | null;
  at: string;
  data: unknown;
}

/**
 * Fan-out of resource changes to every replica through Redis pub/sub, then to local listeners
 * (event streams and operations waiting on a change). Events are notifications, not a log:
 * Postgres stays the source of truth, and a missed event is made good by the next read.
 */
@Injectable()
export class EventBus implements OnModuleInit, OnModuleDestroy {
  private readonly local = new EventEmitter();
  private readonly channel: string;
  private readonly onMessage = (channel: string, message: string) => {
    if (channel !== this.channel) return;
    try {
      this.local.emit('event', JSON.parse(message) as HpEvent);
    } catch (e) {
      this.log.warn({ err: e }, 'dropped an unreadable event');
    }
  };

  constructor(
    @Inject(REDIS) private readonly redis: Redis,
    @Inject(REDIS_SUB) private readonly sub: Redis,
    @Inject(CONFIG) config: Config,
    @Inject(LOGGER) private readonly log: Logger,
  ) {
    this.channel = `${config.redisPrefix}:events`;
    this.local.setMaxListeners(0);
  }

  async onModuleInit(): Promise<void> {
    this.sub.on('message', this.onMessage);
    await this.sub.subscribe(this.channel);
  }

  async onModuleDestroy(): Promise<void> {
    this.sub.off('message', this.onMessage);
    this.local.removeAllListeners();
  }

  /** Publishes a change to every replica. Never throws: a lost notification is not an error. */
  async publish(e: Omit<HpEvent, 'id' | 'at'>): Promise<void> {
    const event: HpEvent = { id: uuidv7(), at: new Date().toISOString(), ...e };
    try {
      await this.redis.publish(this.channel, JSON.stringify(event));
    } catch (err) {
      this.log.warn({ err, type: e.type }, 'could not publish event');
      this.local.emit('event', event);
    }
  }

  /** Calls `fn` for every event until the returned function is called. */
  subscribe(fn: (e: HpEvent) => void): () => void {
    this.local.on('event', fn);
    return () => this.local.off('event', fn);
  }
}
