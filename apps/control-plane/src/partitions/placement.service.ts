import { Inject, Injectable } from '@nestjs/common';
import { ValidationError } from '@hyperplane/domain';
import { GroupRequirement, ImageRequirements, NodeCandidate, PlacementRequest, ProjectQuota, groupKey, placeMany, rejectionError } from '@hyperplane/scheduler';
import { Config, CONFIG } from '../config';
import { Db, lockForTransaction } from '../database/database';
import { ProjectRepository } from '../projects/project.repository';
import { PartitionRepository } from './partition.repository';
import { NodeCache } from '../nodes/node-cache';
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

  /**
   * Chooses a node for every demand (all or nothing) and reserves the capacity; returns node ids
   * in order. Throws the scheduler's 422 errors with reasons, or a 400 for an unknown pinned node.
   */
  async place(db: Db, projectId: string, demands: PlacementDemand[]): Promise<string[]> {
    const spec = demands[0]!.spec;
    let pinnedId: string | undefined;
    if (spec.node) {
      const n = await this.nodes.findByIdOrName(spec.node, db);
      if (!n) throw ValidationError.field('placement.node', `node '${spec.node}' does not exist`);
      pinnedId = n.id;
    }
    const image = demands[0]!.image;
    const group: GroupRequirement | undefined = spec.group ? { name: spec.group, policy: spec.policy ?? 'anti-affinity', hard: spec.hard ?? true } : undefined;
    let groupCounts = new Map<string, number>();
    if (group) {
      await lockForTransaction(db, `group:${groupKey(projectId, group.name)}`);
      groupCounts = await this.nodes.groupCounts(db, projectId, group.name);
    }
    const quota = await this.quotaOf(db, projectId);
    const usage = quota ? await this.partitions.usage(db, projectId) : undefined;
    const reqs: PlacementRequest[] = demands.map((d) => ({
      requestId: d.requestId,
      projectId,
      vcpus: d.vcpus,
      memoryMiB: d.memoryMiB,
      diskBytes: d.diskGiB * 1024 ** 3,
      image: d.image,
      node: pinnedId,
      accelerator: spec.accelerator,
      cpuFeatures: spec.cpuFeatures,
      machineType: spec.machineType,
      nodeSelector: spec.nodeSelector,
      group,
      strategy: spec.strategy,
      imageRequirements: d.imageRequirements,
    }));

    const asked = performance.now();
    let readAfter: number | undefined;
    for (let attempt = 1; ; attempt++) {
      const snap = await this.cache.snapshot(db, readAfter);
      if (!demands[0]!.imageInLibrary && !snap.images.has(image)) {
        throw ValidationError.field('image', `image '${image}' does not exist`);
      }
      const key = group ? groupKey(projectId, group.name) : undefined;
      const candidates = key && groupCounts.size ? snap.candidates.map((c) => (groupCounts.has(c.id) ? { ...c, groups: { [key]: groupCounts.get(c.id)! } } : c)) : snap.candidates;
      const results = placeMany(candidates, reqs, { config: { defaultStrategy: this.config.placementStrategy }, quota, usage, baselines: snap.baselines });
      const refused = results.find((r) => !r.ok);
      if (refused && !refused.ok) {
        // "No node fits" is a final answer only if the nodes it was judged on were read after the
        // request came (concurrent refusals share that one read).
        if (refused.kind === 'no-fit' && this.cache.readStartedAt() < asked) {
          readAfter = asked;
          continue;
        }
        throw rejectionError(refused);
      }
      // Reserve per node, summed; one statement takes the node rows in id order (a fixed order
      // keeps concurrent batches from deadlocking) and reserves only where there is still room.
      const perNode = new Map<string, { vcpus: number; memoryMiB: number; diskBytes: number }>();
      const chosen = results.map((r, i) => {
        const id = (r as { node: NodeCandidate }).node.id;
        const t = perNode.get(id) ?? { vcpus: 0, memoryMiB: 0, diskBytes: 0 };
        t.vcpus += reqs[i]!.vcpus;
        t.memoryMiB += reqs[i]!.memoryMiB;
        t.diskBytes += reqs[i]!.diskBytes;
        perNode.set(id, t);
        return id;
      });
      const wanted = [...perNode].map(([id, d]) => ({ id, ...d }));
      // One node: the single-row compare-and-swap either happens or not, nothing to undo. Several:
      // a savepoint undoes the nodes that had room when one of them had not.
      const several = wanted.length > 1;
      if (several) await this.nodes.savepoint(db, 'place');
      const reserved: NodeRow[] = several ? await this.nodes.tryReserveMany(db, wanted) : [await this.nodes.tryReserve(db, wanted[0]!.id, wanted[0]!)].filter((r): r is NodeRow => r !== undefined);
      const lost = reserved.length < wanted.length;
      if (!lost) {
        if (several) await this.nodes.releaseSavepoint(db, 'place');
        for (const r of reserved) this.cache.update(r);
        return chosen;
      }
      if (several) await this.nodes.rollbackToSavepoint(db, 'place');
      readAfter = performance.now();
      if (attempt >= MAX_ATTEMPTS) {
        throw rejectionError({ ok: false, kind: 'no-fit', reasons: [{ reason: 'contention', count: 1, message: 'capacity taken by concurrent placements' }], message: 'no node fits: capacity was taken by concurrent placements; retry' });
      }
    }
  }

  /** The project's quota, locked for the transaction when it has one (unlimited projects take no lock). */
  private async quotaOf(db: Db, projectId: string): Promise<ProjectQuota | undefined> {
    const q = await this.projects.quota(db, projectId);
    if (Object.keys(q).length === 0) return undefined;
    await lockForTransaction(db, `quota:${projectId}`);
    return q;
  }
}
