import { Inject, Injectable } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { rows } from '../database/database';
import { DATA_SOURCE } from '../common/tokens';
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
export class NodeCache {
  private nodes: NodeRow[] = [];
  private loadedAt = 0;
  private loading: Promise<NodeRow[]> | undefined;

  constructor(@Inject(DATA_SOURCE) private readonly ds: DataSource) {}

  /** The snapshot, reloaded when older than a second or when `fresh` is asked. */
  async all(fresh = false): Promise<NodeRow[]> {
    if (!fresh && Date.now() - this.loadedAt < MAX_AGE_MS) return this.nodes;
    this.loading ??= rows<NodeRow>(this.ds, `SELECT * FROM nodes ORDER BY id`).then(
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
