import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { Inject, Injectable, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import { uuidv7 } from '@hyperplane/domain';
import { Redis } from 'ioredis';
import { Logger } from 'pino';
import { Config, CONFIG } from '../config';
import { LOGGER, REDIS, REDIS_SUB } from '../common/tokens';
import { Batcher } from '../common/batcher';

/** A resource change, as the event stream (SSE, gRPC Watch) shows it. */
export interface HpEvent {
  id: string;
  /** `<resourceType>.<verb>`: partition.created, partition.updated, partition.deleted, operation.updated, node.updated. */
  type: string;
  resourceType: 'partition' | 'operation' | 'node' | 'project' | 'image' | 'snapshot' | 'service-chain' | 'attachment';
  resourceId: string;
  /** Null for cluster-level resources (nodes), seen only by cluster admins. */
  projectId: string | null;
  at: string;
  data: unknown;
}

/** What travels on the events channel: the events one replica published at one moment (none: a replica saying it listens). */
interface EventMessage {
  origin: string;
  events: HpEvent[];
}

/** How often a replica that publishes to nobody asks Redis whether another replica listens now. */
const PEERS_CHECK_MS = 1000;

/** Events that always go through Redis: another replica acts on them (the one running the operation). */
const ALWAYS_SENT = new Set(['operation.cancel-requested']);

/**
 * Fan-out of resource changes to every replica through Redis pub/sub, then to local listeners
 * (event streams and operations waiting on a change). Events are notifications, not a log:
 * Postgres stays the source of truth, and a missed event is made good by the next read.
 * Events published at the same moment travel as one message; the publishing replica's own
 * listeners hear them at once, not back from Redis; listeners of one resource are found by its
 * id, not by asking every listener. A replica that no other replica listens to (the common
 * single-replica case) sends nothing to Redis: it learns that one listens from the greeting each
 * replica sends once subscribed (and again after its subscriber reconnects), from any message of
 * another replica, and from a check every second; it learns that none listens any more when Redis
 * answers that its own subscription was the only one to get a message (and it heard no other
 * meanwhile). A cancel request always goes through Redis.
 */
@Injectable()
export class EventBus implements OnModuleInit, OnModuleDestroy {
  private readonly local = new EventEmitter();
  private readonly byResource = new Map<string, Set<(e: HpEvent, record?: unknown) => void>>();
  private readonly channel: string;
  /** Tags this replica's messages, so it does not deliver its own events a second time. */
  private readonly origin = randomUUID();
  /** How this replica's own messages begin (JSON.stringify keeps key order), to skip them unparsed. */
  private readonly ownPrefix = `{"origin":${JSON.stringify(this.origin)},`;
  /** Another replica listens on the channel (else publishing to Redis is skipped). */
  private peers = true;
  /** Messages heard from other replicas: one heard while a PUBLISH was under way outdates its count of receivers. */
  private heard = 0;
  private peersTimer: NodeJS.Timeout | undefined;
  /** Our subscription is in place (not while the subscriber reconnects); `subEpoch` counts its losses. */
  private subscribed = false;
  private subEpoch = 0;
  private readonly onSubscriberClosed = () => {
    this.subscribed = false;
    this.subEpoch++;
  };
  /** The subscriber reconnected: publish until Redis says nobody else listens; once subscribed again, greet. */
  private readonly onSubscriberReady = () => void this.resubscribed();
  private readonly onMessage = (channel: string, message: string) => {
    if (channel !== this.channel || message.startsWith(this.ownPrefix)) return;
    this.peers = true;
    this.heard++;
    let parsed: HpEvent | HpEvent[] | EventMessage;
    try {
      parsed = JSON.parse(message) as HpEvent | HpEvent[] | EventMessage;
    } catch (e) {
      this.log.warn({ err: e }, 'dropped an unreadable event');
      return;
    }
    if (Array.isArray(parsed)) for (const e of parsed) this.deliver(e);
    else if ('events' in parsed) {
      if (parsed.origin !== this.origin) for (const e of parsed.events) this.deliver(e);
    } else this.deliver(parsed);
  };
  private readonly outbox = new Batcher<HpEvent, void>(
    async (events) => {
      try {
        await this.send(events);
      } catch (err) {
        this.log.warn({ err, events: events.length }, 'could not publish events to the other replicas');
      }
      return events.map(() => undefined);
    },
    { maxBatch: 1000, maxInFlight: 1 },
  );

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
    this.subscribed = true;
    this.sub.on('close', this.onSubscriberClosed);
    this.sub.on('ready', this.onSubscriberReady);
    await this.greet();
    this.peersTimer = setInterval(() => void this.checkPeers(), PEERS_CHECK_MS);
    this.peersTimer.unref();
  }

  /**
   * After a reconnect: ioredis reports the subscriber ready before Redis has its subscription back
   * (it resubscribes without waiting); a SUBSCRIBE of our own, queued behind that one, answers once it is.
   */
  private async resubscribed(): Promise<void> {
    this.peers = true;
    const epoch = this.subEpoch;
    try {
      await this.sub.subscribe(this.channel);
    } catch {
      return; // lost again: the next ready tries again
    }
    if (epoch !== this.subEpoch) return;
    this.subscribed = true;
    await this.greet();
  }

  /** The greeting (no events): replicas that publish to nobody hear that this one listens now. */
  private async greet(): Promise<void> {
    await this.send([]).catch(() => undefined);
  }

  /**
   * Publishes `events` to the channel. Our own subscription is one of the receivers: when Redis
   * counts no other, no other replica was subscribed, unless one spoke meanwhile (its message and
   * this answer come on different connections) or our own subscription was not in place all along
   * (then the one receiver may have been another replica).
   */
  private async send(events: HpEvent[]): Promise<void> {
    const heard = this.heard;
    const epoch = this.subEpoch;
    const receivers = await this.redis.publish(this.channel, JSON.stringify({ origin: this.origin, events } satisfies EventMessage));
    if (receivers <= 1 && this.heard === heard && this.subscribed && this.subEpoch === epoch) this.peers = false;
  }

  /** While publishing to nobody: whether another replica subscribed meanwhile (its greeting may have been missed). */
  private async checkPeers(): Promise<void> {
    if (this.peers) return;
    try {
      const [, n] = (await this.redis.pubsub('NUMSUB', this.channel)) as [string, number];
      if (Number(n) > 1) this.peers = true;
    } catch {
      this.peers = true; // unsure: publish, as before
    }
  }

  async onModuleDestroy(): Promise<void> {
    if (this.peersTimer) clearInterval(this.peersTimer);
    this.sub.off('ready', this.onSubscriberReady);
    this.sub.off('close', this.onSubscriberClosed);
    this.sub.off('message', this.onMessage);
    this.local.removeAllListeners();
    this.byResource.clear();
  }

  /**
   * Publishes a change to every replica: this one's listeners at once, the others' through Redis.
   * `record`: the resource as the change committed it (a row), handed to this replica's listeners
   * of the resource with the event so they need not read it again; other replicas never get it.
   * Never throws: a lost notification is not an error.
   */
  async publish(e: Omit<HpEvent, 'id' | 'at'>, record?: unknown): Promise<void> {
    const event: HpEvent = { id: uuidv7(), at: new Date().toISOString(), ...e };
    this.deliver(event, record);
    if (this.peers || ALWAYS_SENT.has(event.type)) await this.outbox.call(event);
  }

  /** Calls `fn` for every event until the returned function is called. */
  subscribe(fn: (e: HpEvent) => void): () => void {
    this.local.on('event', fn);
    return () => this.local.off('event', fn);
  }

  /**
   * Calls `fn` for every event about the resource `resourceId` until the returned function is
   * called; with the record its publisher gave, when it was published on this replica.
   */
  subscribeTo(resourceId: string, fn: (e: HpEvent, record?: unknown) => void): () => void {
    let set = this.byResource.get(resourceId);
    if (!set) this.byResource.set(resourceId, (set = new Set()));
    set.add(fn);
    return () => {
      set.delete(fn);
      if (set.size === 0 && this.byResource.get(resourceId) === set) this.byResource.delete(resourceId);
    };
  }

  /** Hands an event to the listeners here; one that throws is logged, the others still hear it. */
  private deliver(e: HpEvent, record?: unknown): void {
    try {
      this.local.emit('event', e);
    } catch (err) {
      this.log.warn({ err, type: e.type }, 'an event listener failed');
    }
    const set = this.byResource.get(e.resourceId);
    if (set) {
      for (const fn of [...set]) {
        try {
          fn(e, record);
        } catch (err) {
          this.log.warn({ err, type: e.type }, 'an event listener failed');
        }
      }
    }
  }
}
