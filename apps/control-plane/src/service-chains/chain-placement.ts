import { Inject, Injectable } from '@nestjs/common';
import { ValidationError } from '@hyperplane/domain';
import { groupKey, NoNodeFitsError, placeMany, type NodeCandidate, type PlacementRequest } from '@hyperplane/scheduler';
import { Config, CONFIG } from '../config';
import { Db } from '../database/database';
import { NodeCache } from '../nodes/node-cache';
import type { NodeRow } from '../nodes/node.repository';
import { candidateOf } from '../partitions/placement.service';

/** What one placement of replicas needs to know. */
export interface ReplicaDemand {
  projectId: string;
  chainId: string;
  link: string;
  /** The field to name in errors (`links[0]`). */
  field: string;
  /** Image the replicas start from (a base link), '' for none. */
  image: string;
  count: number;
  /** Nodes (names or ids) asked for, at most `count`. */
  pinned: string[];
  /** Nodes that already run a live replica of the link: never chosen again (anti-affinity). */
  taken: ReadonlySet<string>;
  /** Nodes to avoid when another one fits (where a replica just failed). */
  avoid?: ReadonlySet<string>;
  /** Seeds the candidate order (a replay places the same way). */
  requestId: string;
}

/** Candidate images: '' stands for "needs no image", so links other than a base pass the image filter. */
const NO_IMAGE = '';

/**
 * Places the replicas of a link with libs/scheduler: only nodes that can run providers (the QEMU
 * driver), a hard anti-affinity group per link (replicas of one link never share a node), spread.
 * Providers reserve no vcpus or memory on the node (a qemu-storage-daemon is a few MiB).
 */
@Injectable()
export class ChainPlacement {
  constructor(
    private readonly cache: NodeCache,
    @Inject(CONFIG) private readonly config: Config,
  ) {}

  /** Node ids for `d.count` new replicas, or a 422 naming the link and why no node fits (400 for an unknown pinned node). */
  async place(db: Db, d: ReplicaDemand): Promise<string[]> {
    const all = await this.cache.all(db, true);
    const chosen: string[] = [];
    for (const ref of d.pinned) {
      const n = all.find((x) => x.id === ref || x.name === ref);
      if (!n) throw ValidationError.field(`${d.field}.nodes`, `node '${ref}' does not exist`);
      const why = refusal(n, d.taken);
      if (why) throw new NoNodeFitsError(`no node fits: link ${d.link}: node ${n.name} ${why}`, [{ reason: 'pinned', count: 1, message: `node ${n.name} ${why}` }]);
      chosen.push(n.id);
    }
    const remaining = d.count - chosen.length;
    if (remaining <= 0) return chosen;
    const key = groupKey(d.projectId, `chain-${d.chainId}-${d.link}`);
    const attempt = (avoid: ReadonlySet<string>) => {
      const occupied = new Set([...d.taken, ...chosen, ...avoid]);
      const candidates: NodeCandidate[] = all
        .filter((n) => n.driver === 'qemu')
        .map((n) => ({ ...candidateOf(n, occupied.has(n.id) ? { [key]: 1 } : {}), images: [...n.images.map((i) => i.name), NO_IMAGE] }));
      const reqs: PlacementRequest[] = Array.from({ length: remaining }, (_, i) => ({
        requestId: `${d.requestId}/${d.link}/${i}`,
        projectId: d.projectId,
        vcpus: 0,
        memoryMiB: 0,
        diskBytes: 0,
        image: d.image || NO_IMAGE,
        group: { name: `chain-${d.chainId}-${d.link}`, policy: 'anti-affinity', hard: true },
        strategy: 'spread',
      }));
      return { results: placeMany(candidates, reqs, { config: { defaultStrategy: this.config.placementStrategy, maxCandidates: this.config.schedulerMaxCandidates } }), providers: candidates.filter((c) => c.state === 'ready').length };
    };
    let { results, providers } = attempt(d.avoid ?? new Set());
    if (results.some((r) => !r.ok) && d.avoid?.size) ({ results, providers } = attempt(new Set()));
    const refused = results.find((r) => !r.ok);
    if (refused && !refused.ok) {
      const total = d.count + d.taken.size;
      throw new NoNodeFitsError(
        `no node fits: link ${d.link} needs ${total} replicas on different nodes and ${providers} node${providers === 1 ? '' : 's'} can run providers; ${refused.message.replace(/^no node fits: /, '')}`,
        refused.reasons,
      );
    }
    return [...chosen, ...results.map((r) => (r as { node: NodeCandidate }).node.id)];
  }
}

/** Why a node cannot take a replica it was pinned to, or undefined when it can. */
function refusal(n: NodeRow, taken: ReadonlySet<string>): string | undefined {
  if (n.driver !== 'qemu') return `runs the ${n.driver} driver, which cannot run providers`;
  if (n.status !== 'ready') return 'is unreachable';
  if (n.cordoned || n.draining) return 'is cordoned';
  if (taken.has(n.id)) return 'already runs a replica of this link';
  return undefined;
}
