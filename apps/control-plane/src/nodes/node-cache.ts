import { Injectable, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import { CpuBaselines, NodeCandidate, cpuBaselineKey } from '@hyperplane/scheduler';
import { EventBus } from '../events/event-bus';
import { Db, rows } from '../database/database';
import { NodeRow } from './node.repository';
import { nodeState } from './nodes.service';

/** How old a snapshot may be before a placement reloads it. */
const MAX_AGE_MS = 1000;

/** A candidate as libs/scheduler sees it, from a node row. */
export function candidateOf(n: NodeRow, groups: Record<string, number> = {}, cpuBaseline?: string): NodeCandidate {
  return {
    id: n.id,
    name: n.name,
    state: nodeState(n) as NodeCandidate['state'],
    capacity: { vcpus: n.vcpus, memoryMiB: Number(n.memory_mib), diskBytes: Number(n.disk_bytes) },
    allocated: { vcpus: n.allocated_vcpus, memoryMiB: Number(n.allocated_memory_mib), diskBytes: Number(n.allocated_disk_bytes) },
    cpuAllocationRatio: n.cpu_allocation_ratio,
    memoryAllocationRatio: n.memory_allocation_ratio,
    accelerator: n.accelerator,
    cpuFlags: n.cpu_flags,
    cpuBaseline,
    machineTypes: n.machine_types,
    labels: n.labels,
    images: n.images.map((i) => i.name),
    groups,
  };
}

/**
 * What placements work from: every node as a row and as a scheduler candidate (same order, by
 * id), the CPU baselines of those candidates, and every image name some node holds. Treat as
 * read-only; a reservation replaces entries through {@link NodeCache.update}.
 */
export interface NodeSnapshot {
  rows: readonly NodeRow[];
  candidates: readonly NodeCandidate[];
  /** Node id → its position in `rows` and `candidates`. */
  index: ReadonlyMap<string, number>;
  baselines: CpuBaselines;
  images: ReadonlySet<string>;
  /** When the read behind it began (`performance.now()`). */
  readAt: number;
}

/**
 * This replica's snapshot of every node, for placement: a 1,000-node cluster is read once a
 * second, not once per placement, and its scheduler candidates and CPU baselines are built once
 * per load, not per placement. The snapshot only proposes; the reservation itself is a
 * compare-and-swap on the node row in the placing transaction, so a stale snapshot can cost a
 * retry but never an overcommit.
 */
@Injectable()
export class NodeCache implements OnModuleInit, OnModuleDestroy {
  private snap: NodeSnapshot = { rows: [], candidates: [], index: new Map(), baselines: new CpuBaselines([]), images: new Set(), readAt: -Infinity };
  private loadedAt = 0;
  private loading: { promise: Promise<NodeSnapshot>; startedAt: number } | undefined;
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
   * The node rows, reloaded when older than a second or when `fresh` is asked. A reload runs on
   * `db`, the caller's transaction connection: taking a second pool connection from inside a
   * transaction would deadlock the pool under load.
   */
  async all(db: Db, fresh = false): Promise<readonly NodeRow[]> {
    return (await this.snapshot(db, fresh ? performance.now() : undefined)).rows;
  }

  /**
   * The whole snapshot (rows, candidates, baselines, image names): the current one while younger
   * than a second, or, with `readAfter`, one whose read began at or after
   * that moment (`performance.now()`), so it holds every commit made before it. Concurrent callers share one read.
   */
  async snapshot(db: Db, readAfter?: number): Promise<NodeSnapshot> {
    if (readAfter === undefined ? Date.now() - this.loadedAt < MAX_AGE_MS : this.snap.readAt >= readAfter) return this.snap;
    const need = readAfter ?? performance.now();
    if (this.loading && this.loading.startedAt >= need) return this.loading.promise;
    // A read under way may predate what the caller needs to see: queue one more after it.
    const before = this.loading?.promise.catch(() => undefined);
    const startedAt = performance.now();
    const promise = (async () => {
      await before;
      const r = await rows<NodeRow>(db, `SELECT * FROM nodes ORDER BY id`);
      this.snap = this.build(r, startedAt);
      this.loadedAt = Date.now();
      return this.snap;
    })();
    const entry = { promise, startedAt };
    this.loading = entry;
    const done = () => {
      if (this.loading === entry) this.loading = undefined;
    };
    promise.then(done, done);
    return promise;
  }

  /**
   * Replaces one node in the snapshot with the row a reservation returned. Allocations never go
   * below what the snapshot already shows: it may hold placements of this replica still reserving
   * (see {@link reserveAhead}); the next load settles them.
   */
  update(row: NodeRow): void {
    const i = this.snap.index.get(row.id);
    const old = i === undefined ? undefined : this.snap.candidates[i];
    if (i === undefined || !old) return;
    const c = candidateOf(row, {}, old.cpuBaseline);
    // A reservation changes allocations only; if anything the baselines depend on moved, the next
    // placement reloads rather than trust them.
    if (c.state !== old.state || c.cpuFlags.length !== old.cpuFlags.length) this.loadedAt = 0;
    c.allocated = { vcpus: Math.max(c.allocated.vcpus, old.allocated.vcpus), memoryMiB: Math.max(c.allocated.memoryMiB, old.allocated.memoryMiB), diskBytes: Math.max(c.allocated.diskBytes, old.allocated.diskBytes) };
    (this.snap.rows as NodeRow[])[i] = row;
    (this.snap.candidates as NodeCandidate[])[i] = c;
  }

  /**
   * Counts placements chosen here but not yet reserved in the database, so that placements made
   * meanwhile on this replica look elsewhere instead of queueing on the same node rows.
   */
  reserveAhead(perNode: ReadonlyMap<string, { vcpus: number; memoryMiB: number; diskBytes: number }>): void {
    const cands = this.snap.candidates as NodeCandidate[];
    for (const [id, d] of perNode) {
      const i = this.snap.index.get(id);
      const c = i === undefined ? undefined : cands[i];
      if (i === undefined || !c) continue;
      cands[i] = { ...c, allocated: { vcpus: c.allocated.vcpus + d.vcpus, memoryMiB: c.allocated.memoryMiB + d.memoryMiB, diskBytes: c.allocated.diskBytes + d.diskBytes } };
    }
  }

  private build(rs: NodeRow[], readAt: number): NodeSnapshot {
    const prev = this.snap;
    const candidates: NodeCandidate[] = new Array(rs.length);
    const images = new Set<string>();
    let sameShape = rs.length === prev.rows.length;
    for (let k = 0; k < rs.length; k++) {
      const r = rs[k]!;
      const j = prev.index.get(r.id);
      const old = j === undefined ? undefined : prev.candidates[j];
      // Rebuilding a candidate is cheap; the CPU-baseline key (a sort of ~100 flags) is kept
      // while the node reports the same flags.
      const c = candidateOf(r, {}, old && sameFlags(old.cpuFlags, r.cpu_flags) ? old.cpuBaseline : cpuBaselineKey(r.cpu_flags));
      if (!old || j !== k || old.state !== c.state || old.cpuBaseline !== c.cpuBaseline) sameShape = false;
      candidates[k] = c;
      for (const name of c.images) images.add(name);
    }
    const index = new Map(rs.map((r, k) => [r.id, k]));
    return { rows: rs, candidates, index, baselines: sameShape ? prev.baselines : new CpuBaselines(candidates), images, readAt };
  }
}

function sameFlags(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
