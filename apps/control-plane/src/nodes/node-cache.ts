import { Injectable, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import { EventBus } from '../events/event-bus';
import { Db, rows } from '../database/database';
import { NodeRow } from './node.repository';

/** How old a snapshot may be before a placement reloads it. */
const MAX_AGE_MS = 1000;

/**
 * This replica's snapshot of every node, for placement: a 1,000-node cluster is read once a
 * second, not once per placement. The snapshot only proposes; the reservation itself is a
 * compare-and-swap on the node row in the placing transaction, so a stale snapshot can cost a
 * retry but never an overcommit.
 */
@Injectable()
export class NodeCache implements OnModuleInit, OnModuleDestroy {
  private nodes: NodeRow[] = [];
  private loadedAt = 0;
  private loading: Promise<NodeRow[]> | undefined;
  private unsubscribe: (() => void) | undefined;

  constructor(private readonly events: EventBus) {}

  onModuleInit(): void {
    // A node registering, going away or being cordoned anywhere makes the snapshot stale at once.
    this.unsubscribe = this.events.subscribe((e) => {
      if (e.resourceType === 'node') this.loadedAt = 0;
    });
  }

  onModuleDestroy(): void {
    this.unsubscribe?.();
  }

  /** How old the snapshot is, in ms. */
  age(): number {
    return Date.now() - this.loadedAt;
  }

  /**
   * The snapshot, reloaded when older than a second or when `fresh` is asked. A reload runs on
   * `db`, the caller's transaction connection: taking a second pool connection from inside a
   * transaction would deadlock the pool under load.
   */
  async all(db: Db, fresh = false): Promise<NodeRow[]> {
    if (!fresh && Date.now() - this.loadedAt < MAX_AGE_MS) return this.nodes;
    this.loading ??= rows<NodeRow>(db, `SELECT * FROM nodes ORDER BY id`).then(
      (r) => {
        this.nodes = r;
        this.loadedAt = Date.now();
        this.loading = undefined;
        return r;
      },
      (e: unknown) => {
        this.loading = undefined;
        throw e;
      },
    );
    return this.loading;
  }

  /** Replaces one node in the snapshot with the row a reservation returned. */
  update(row: NodeRow): void {
    const i = this.nodes.findIndex((n) => n.id === row.id);
    if (i >= 0) this.nodes[i] = row;
  }
}
