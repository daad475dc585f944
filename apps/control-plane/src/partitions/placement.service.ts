import { Inject, Injectable } from '@nestjs/common';
import { ValidationError } from '@hyperplane/domain';
import { GroupRequirement, ImageRequirements, NodeCandidate, PlacementRequest, ProjectQuota, groupKey, placeMany, rejectionError } from '@hyperplane/scheduler';
import { Config, CONFIG } from '../config';
import { Db, lockForTransaction } from '../database/database';
import { ProjectRepository } from '../projects/project.repository';
import { PartitionRepository } from './partition.repository';
import { NodeCache } from '../nodes/node-cache';
import { NodeRepository, NodeRow } from '../nodes/node.repository';
import { nodeState } from '../nodes/nodes.service';

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
}

/** A snapshot younger than this is current enough to refuse a placement on. */
const FRESH_MS = 100;

/** Attempts before giving up when concurrent placements keep taking the chosen capacity. */
const MAX_ATTEMPTS = 5;

/** A candidate as libs/scheduler sees it, from a node row. */
export function candidateOf(n: NodeRow, groups: Record<string, number> = {}): NodeCandidate {
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
    machineTypes: n.machine_types,
    labels: n.labels,
    images: n.images.map((i) => i.name),
    groups,
  };
}

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
  async place(db: Db, projectId: string, demands: PlacementDemand[], opts: PlaceOptions = {}): Promise<string[]> {
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
    const quota = opts.moving ? undefined : await this.quotaOf(db, projectId);
    const usage = quota ? await this.partitions.usage(db, projectId) : undefined;
    const reqs: PlacementRequest[] = demands.map((d) => ({
      requestId: d.requestId,
      projectId,
      vcpus: d.vcpus,
      memoryMiB: d.memoryMiB,
      diskBytes: d.diskGiB * 1024 ** 3,
      image: d.image,
      node: pinnedId,
      avoidNodes: opts.avoidNodes,
      accelerator: spec.accelerator,
      cpuFeatures: spec.cpuFeatures,
      machineType: spec.machineType,
      nodeSelector: spec.nodeSelector,
      group,
      strategy: spec.strategy,
      imageRequirements: d.imageRequirements,
      imageFetchable: d.imageInLibrary,
    }));

    for (let attempt = 1; ; attempt++) {
      const rowsNow = await this.cache.all(db, attempt > 1);
      if (!demands[0]!.imageInLibrary && !rowsNow.some((n) => n.images.some((i) => i.name === image))) {
        throw ValidationError.field('image', `image '${image}' does not exist`);
      }
      const key = group ? groupKey(projectId, group.name) : undefined;
      const candidates = rowsNow.map((n) => candidateOf(n, key && groupCounts.get(n.id) ? { [key]: groupCounts.get(n.id)! } : {}));
      const results = placeMany(candidates, reqs, { config: { defaultStrategy: this.config.placementStrategy }, quota, usage });
      const refused = results.find((r) => !r.ok);
      if (refused && !refused.ok) {
        // "No node fits" is a final answer only if the nodes it was judged on are current.
        if (refused.kind === 'no-fit' && attempt === 1 && this.cache.age() > FRESH_MS) continue;
        throw rejectionError(refused);
      }
      // Reserve per node, summed, in id order (a fixed order keeps concurrent batches from deadlocking).
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
      let lost = false;
      await this.nodes.savepoint(db, 'place');
      const reserved: NodeRow[] = [];
      for (const [id, d] of [...perNode].sort((a, b) => a[0].localeCompare(b[0]))) {
        const row = await this.nodes.tryReserve(db, id, d);
        if (!row) {
          lost = true;
          break;
        }
        reserved.push(row);
      }
      if (!lost) {
        await this.nodes.releaseSavepoint(db, 'place');
        for (const r of reserved) this.cache.update(r);
        return chosen;
      }
      await this.nodes.rollbackToSavepoint(db, 'place');
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
