import { Inject, Injectable } from '@nestjs/common';
import { ValidationError } from '@hyperplane/domain';
import { GroupRequirement, ImageRequirements, PlacementRequest, PlacementSession, ProjectQuota, ProjectUsage, SchedulerConfig, groupKey, rejectionError } from '@hyperplane/scheduler';
import { Config, CONFIG } from '../config';
import { Db, lockForTransaction } from '../database/database';
import { ProjectRepository } from '../projects/project.repository';
import { PartitionRepository } from './partition.repository';
import { NodeCache, NodeSnapshot } from '../nodes/node-cache';
import { NodeRepository, NodeRow } from '../nodes/node.repository';

/** What a partition asks of its placement (the `placement` object of a create request). */
export interface PlacementSpec {
  node?: string;
  group?: string;
  policy?: 'affinity' | 'anti-affinity';
  hard?: boolean;
  strategy?: 'binpack' | 'spread';
  nodeSelector?: Record<string, string>;
  accelerator?: 'kvm' | 'tcg';
  cpuFeatures?: string[];
  machineType?: string;
}

/** One partition to place. */
export interface PlacementDemand {
  requestId: string;
  vcpus: number;
  memoryMiB: number;
  diskGiB: number;
  image: string;
  spec: PlacementSpec;
  /** What the image's own metadata requires of the node (library images; see ImagePolicy). */
  imageRequirements?: ImageRequirements;
  /** The image is in the project's library, so it exists even when no node has it in its store yet. */
  imageInLibrary?: boolean;
}

/** How a placement differs for a partition that already exists and moves (migration). */
export interface PlaceOptions {
  /** Node ids not to choose: the node the partition leaves. */
  avoidNodes?: string[];
  /** The partition exists already: the project's quota does not change, so it is not checked. */
  moving?: boolean;
  /** The pinned node (`spec.node`), when the caller read it already in this transaction. */
  pinned?: NodeRow;
}


/** One create of a batch, as {@link PlacementService.placeBatch} sees it. */
export interface BatchPlacement {
  projectId: string;
  demands: PlacementDemand[];
  /** `performance.now()` when the request came: "no node fits" is final only on nodes read after it. */
  asked: number;
}

/** What became of one create of a batch: its nodes, its refusal, or "place it by itself". */
export type BatchPlacementResult = { ok: true; nodeIds: string[] } | { ok: false; error: Error } | { ok: false; retryAlone: true };

/** Attempts before giving up when concurrent placements keep taking the chosen capacity. */
const MAX_ATTEMPTS = 5;

export { candidateOf } from '../nodes/node-cache';

/**
 * Places partitions with libs/scheduler and reserves their capacity in the caller's transaction.
 * Safe under concurrency across replicas: capacity by compare-and-swap on each node row (a lost
 * race reloads and retries), hard group rules and quotas under transaction-scoped advisory locks
 * on the group and the project.
 */
@Injectable()
export class PlacementService {
  constructor(
    private readonly cache: NodeCache,
    private readonly nodes: NodeRepository,
    private readonly projects: ProjectRepository,
    private readonly partitions: PartitionRepository,
    @Inject(CONFIG) private readonly config: Config,
  ) {}

  private get schedulerConfig(): SchedulerConfig {
    return { defaultStrategy: this.config.placementStrategy, maxCandidates: this.config.schedulerMaxCandidates };
  }

  /**
   * Chooses a node for every demand (all or nothing) and reserves the capacity; returns node ids
   * in order. Throws the scheduler's 422 errors with reasons, or a 400 for an unknown pinned node.
   */
  async place(db: Db, projectId: string, demands: PlacementDemand[], opts: PlaceOptions = {}): Promise<string[]> {
    const spec = demands[0]!.spec;
    let pinnedId: string | undefined;
    if (spec.node) {
      const n = opts.pinned && (opts.pinned.id === spec.node || opts.pinned.name === spec.node) ? opts.pinned : await this.nodes.findByIdOrName(spec.node, db);
      if (!n) throw ValidationError.field('placement.node', `node '${spec.node}' does not exist`);
      pinnedId = n.id;
    }
    const group: GroupRequirement | undefined = spec.group ? { name: spec.group, policy: spec.policy ?? 'anti-affinity', hard: spec.hard ?? true } : undefined;
    let groupCounts = new Map<string, number>();
    if (group) {
      await lockForTransaction(db, `group:${groupKey(projectId, group.name)}`);
      groupCounts = await this.nodes.groupCounts(db, projectId, group.name);
    }
    const quota = opts.moving ? undefined : await this.quotaOf(db, projectId);
    const usage = quota ? await this.partitions.usage(db, projectId) : undefined;
    const reqs = requestsOf(projectId, demands, pinnedId, group, opts.avoidNodes);

    const asked = performance.now();
    let readAfter: number | undefined;
    for (let attempt = 1; ; attempt++) {
      const snap = await this.cache.snapshot(db, readAfter);
      const missing = missingImage(snap, demands);
      if (missing) throw missing;
      const key = group ? groupKey(projectId, group.name) : undefined;
      const candidates = key && groupCounts.size ? snap.candidates.map((c) => (groupCounts.has(c.id) ? { ...c, groups: { [key]: groupCounts.get(c.id)! } } : c)) : snap.candidates;
      const r = new PlacementSession(candidates, { config: this.schedulerConfig, baselines: snap.baselines }).placeAll(reqs, quota, usage);
      if (!r.ok) {
        // "No node fits" is a final answer only if the nodes it was judged on were read after the
        // request came (concurrent refusals share that one read).
        if (r.kind === 'no-fit' && snap.readAt < asked) {
          readAfter = asked;
          continue;
        }
        throw rejectionError(r);
      }
      const perNode = new Map<string, Demand>();
      const chosen = r.placed.map((p, i) => addTo(perNode, p.node.id, reqs[i]!));
      // A pinned placement retries on the same node only: no lock to give back before a retry.
      if (await this.reserve(db, perNode, !pinnedId)) return chosen;
      readAfter = performance.now();
      if (attempt >= MAX_ATTEMPTS) throw contentionError();
    }
  }

  /**
   * Places the creates of a batch one after another, each all or nothing and each seeing what the
   * ones before it took, then reserves everything in one statement; returns one result per create.
   * Only for creates without a pinned node or a placement group (those take locks of their own:
   * see {@link place}). A create refused on nodes read before it came, or whose capacity
   * concurrent placements kept taking, is answered `retryAlone`: the caller places it by itself.
   */
  async placeBatch(db: Db, items: BatchPlacement[]): Promise<BatchPlacementResult[]> {
    const projects = [...new Set(items.map((i) => i.projectId))].sort();
    const quotas = new Map<string, ProjectQuota | undefined>();
    const usageAtStart = new Map<string, ProjectUsage | undefined>();
    for (const p of projects) {
      const quota = await this.quotaOf(db, p);
      quotas.set(p, quota);
      usageAtStart.set(p, quota ? await this.partitions.usage(db, p) : undefined);
    }
    const reqsOf = items.map((it) => requestsOf(it.projectId, it.demands, undefined, undefined));
    let readAfter: number | undefined;
    for (let attempt = 1; ; attempt++) {
      const snap = await this.cache.snapshot(db, readAfter);
      const session = new PlacementSession(snap.candidates, { config: this.schedulerConfig, baselines: snap.baselines });
      const usage = new Map(usageAtStart);
      const perNode = new Map<string, Demand>();
      const results = items.map((it, k): BatchPlacementResult => {
        const missing = missingImage(snap, it.demands);
        if (missing) return { ok: false, error: missing };
        const reqs = reqsOf[k]!;
        const quota = quotas.get(it.projectId);
        const r = session.placeAll(reqs, quota, usage.get(it.projectId));
        if (!r.ok) return r.kind === 'no-fit' && snap.readAt < it.asked ? { ok: false, retryAlone: true } : { ok: false, error: rejectionError(r) };
        if (quota) {
          const u = usage.get(it.projectId) ?? { partitions: 0, vcpus: 0, memoryMiB: 0 };
          usage.set(it.projectId, { partitions: u.partitions + reqs.length, vcpus: u.vcpus + reqs.reduce((a, q) => a + q.vcpus, 0), memoryMiB: u.memoryMiB + reqs.reduce((a, q) => a + q.memoryMiB, 0) });
        }
        return { ok: true, nodeIds: r.placed.map((p, i) => addTo(perNode, p.node.id, reqs[i]!)) };
      });
      if (perNode.size === 0 || (await this.reserve(db, perNode))) return results;
      readAfter = performance.now();
      if (attempt >= MAX_ATTEMPTS) return results.map((r) => (r.ok ? { ok: false, retryAlone: true } : r));
    }
  }

  /**
   * Reserves the summed demand on each node, all or nothing: one statement takes the node rows in
   * id order (a fixed order keeps concurrent batches from deadlocking) and reserves only where
   * there is still room. False when some node no longer had room (nothing is then reserved).
   * Without `savepoint` (one node, and a retry takes no other) a refusal keeps that node's row locked.
   */
  private async reserve(db: Db, perNode: Map<string, Demand>, savepoint = true): Promise<boolean> {
    this.cache.reserveAhead(perNode);
    const wanted = [...perNode].map(([id, d]) => ({ id, ...d }));
    // A compare-and-swap that fails on a row another transaction changed still leaves that row
    // locked; the savepoint gives those locks back before a retry takes others (or two losers
    // would deadlock), and undoes the nodes that had room when one of them had not.
    const undoable = savepoint || wanted.length > 1;
    if (undoable) await this.nodes.savepoint(db, 'place');
    const reserved: NodeRow[] = wanted.length > 1 ? await this.nodes.tryReserveMany(db, wanted) : [await this.nodes.tryReserve(db, wanted[0]!.id, wanted[0]!)].filter((r): r is NodeRow => r !== undefined);
    if (reserved.length === wanted.length) {
      if (undoable) await this.nodes.releaseSavepoint(db, 'place');
      for (const r of reserved) this.cache.update(r);
      return true;
    }
    if (undoable) await this.nodes.rollbackToSavepoint(db, 'place');
    return false;
  }

  /** The project's quota, locked for the transaction when it has one (unlimited projects take no lock). */
  private async quotaOf(db: Db, projectId: string): Promise<ProjectQuota | undefined> {
    const q = await this.projects.quota(db, projectId);
    if (Object.keys(q).length === 0) return undefined;
    await lockForTransaction(db, `quota:${projectId}`);
    return q;
  }
}

/** What a placement takes from a node. */
type Demand = { vcpus: number; memoryMiB: number; diskBytes: number };

/** Adds `req`'s demand to node `id`'s total; returns `id`. */
function addTo(perNode: Map<string, Demand>, id: string, req: PlacementRequest): string {
  const t = perNode.get(id) ?? { vcpus: 0, memoryMiB: 0, diskBytes: 0 };
  t.vcpus += req.vcpus;
  t.memoryMiB += req.memoryMiB;
  t.diskBytes += req.diskBytes;
  perNode.set(id, t);
  return id;
}

/** The scheduler's requests for a create's demands. */
function requestsOf(projectId: string, demands: PlacementDemand[], pinnedId: string | undefined, group: GroupRequirement | undefined, avoidNodes?: string[]): PlacementRequest[] {
  const spec = demands[0]!.spec;
  return demands.map((d) => ({
    requestId: d.requestId,
    projectId,
    vcpus: d.vcpus,
    memoryMiB: d.memoryMiB,
    diskBytes: d.diskGiB * 1024 ** 3,
    image: d.image,
    node: pinnedId,
    avoidNodes,
    accelerator: spec.accelerator,
    cpuFeatures: spec.cpuFeatures,
    machineType: spec.machineType,
    nodeSelector: spec.nodeSelector,
    group,
    strategy: spec.strategy,
    imageRequirements: d.imageRequirements,
    imageFetchable: d.imageInLibrary,
  }));
}

/** The 400 for an image that is neither in the project's library nor on any node, or null. */
function missingImage(snap: NodeSnapshot, demands: PlacementDemand[]): ValidationError | null {
  const image = demands[0]!.image;
  if (demands[0]!.imageInLibrary || snap.images.has(image)) return null;
  return ValidationError.field('image', `image '${image}' does not exist`);
}

function contentionError(): Error {
  return rejectionError({ ok: false, kind: 'no-fit', reasons: [{ reason: 'contention', count: 1, message: 'capacity taken by concurrent placements' }], message: 'no node fits: capacity was taken by concurrent placements; retry' });
}
