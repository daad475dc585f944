/** Shapes the placement pipeline works on. Plain data: the caller maps its rows into these. */

/** What an operator or the agent says about a node; only `ready` nodes take new partitions. */
export type NodeState = 'ready' | 'cordoned' | 'draining' | 'unreachable';

/** How feasible nodes are ranked: fill the fullest first, or the emptiest first. */
export type Strategy = 'binpack' | 'spread';

/** An amount of the three resources a partition reserves on its node. */
export interface Resources {
  vcpus: number;
  memoryMiB: number;
  diskBytes: number;
}

/**
 * A node as the scheduler sees it at the moment of placement. `allocated` is what partitions
 * already placed there have reserved; the usable amount of each resource is
 * `floor(capacity × ratio)`, so a ratio above 1 overcommits.
 */
export interface NodeCandidate {
  id: string;
  name: string;
  state: NodeState;
  capacity: Resources;
  allocated: Resources;
  cpuAllocationRatio: number;
  memoryAllocationRatio: number;
  /** Absent means 1 (no disk overcommit). */
  diskAllocationRatio?: number;
  /** `kvm`, `tcg` or `simulated`, as the agent chose it. */
  accelerator: string;
  /** Host CPU flags in `/proc/cpuinfo` spelling (`avx2`, `sse4_2`). */
  cpuFlags: string[];
  /**
   * Optional key of the flag set (`cpuBaselineKey(cpuFlags)`), stored when the node registers;
   * nodes with equal keys must have equal flag sets. Saves comparing flag lists per placement.
   */
  cpuBaseline?: string;
  /** QEMU machine types the node's emulator offers (`q35`, `pc-q35-8.2`, `virt`). */
  machineTypes: string[];
  /** QEMU target name (`x86_64`, `aarch64`); absent when the agent does not report it. */
  arch?: string;
  /** Guest firmware the node can boot (`bios`, `uefi`); absent when the agent does not report it. */
  firmware?: string[];
  labels: Record<string, string>;
  /** Names of the images in the node's store. */
  images: string[];
  /** Placement-group key (`<projectId>/<group>`, see {@link groupKey}) → partitions of that group here. */
  groups: Record<string, number>;
}

/** Membership of a placement group: keep its partitions together, or apart. */
export interface GroupRequirement {
  name: string;
  policy: 'affinity' | 'anti-affinity';
  /** Hard: a filter (never break it). Soft: a scorer (prefer, but place anyway). */
  hard: boolean;
}

/** Hardware an image's own metadata says it needs (disk-formats `HardwareRequirements`); absent fields mean "not stated". */
export interface ImageRequirements {
  arch?: string;
  minVcpus?: number;
  minMemoryMiB?: number;
  /** QEMU spelling (`sse4.2`, `hv-synic`); `hv-*` enlightenments need KVM, not a host flag. */
  cpuFeatures?: string[];
  /** Machine types known to work; the node must offer one of them. */
  machineTypes?: string[];
  firmware?: string;
}

/** One partition to place. `requestId` seeds the candidate order, so the same id replays the same placement. */
export interface PlacementRequest {
  requestId: string;
  projectId: string;
  vcpus: number;
  memoryMiB: number;
  diskBytes: number;
  image: string;
  /** Pin to one node, by id or name: the only candidate is that node. */
  node?: string;
  /** Node ids that must not be chosen (the node a migrating partition leaves). */
  avoidNodes?: string[];
  accelerator?: 'kvm' | 'tcg';
  /** Host CPU features the partition's CPU profile needs (QEMU or `/proc/cpuinfo` spelling). */
  cpuFeatures?: string[];
  machineType?: string;
  /** Every key must be a node label with exactly this value. */
  nodeSelector?: Record<string, string>;
  group?: GroupRequirement;
  /** Absent: the cluster default ({@link SchedulerConfig.defaultStrategy}). */
  strategy?: Strategy;
  imageRequirements?: ImageRequirements;
  /** The image is in the project's library: a node without it fetches it, so the image filter passes everywhere. */
  imageFetchable?: boolean;
}

/** A project's limits; an absent field is unlimited, 0 allows none. */
export interface ProjectQuota {
  maxPartitions?: number;
  maxVcpus?: number;
  maxMemoryMiB?: number;
}

/** What a project already holds, counted against its {@link ProjectQuota}. */
export interface ProjectUsage {
  partitions: number;
  vcpus: number;
  memoryMiB: number;
}

/** Weight of each scorer in a node's final score; a weight of 0 turns a scorer off. */
export interface ScorerWeights {
  binpack: number;
  spread: number;
  softAffinity: number;
  softAntiAffinity: number;
  migratability: number;
}

/** Cluster-wide scheduler settings. */
export interface SchedulerConfig {
  defaultStrategy: Strategy;
  /** Overrides of {@link DEFAULT_WEIGHTS}, by scorer name. */
  weights?: Partial<ScorerWeights>;
  /**
   * Most feasible nodes one placement scores (a bounded search, after Nomad's LimitIterator):
   * the first ones of the seeded shuffled order. `Infinity` scores every feasible node. Absent:
   * {@link defaultMaxCandidates} (bounded for spread, every node for binpack). A search that finds fewer feasible nodes
   * has looked at every node, so a refusal still counts every node's reason.
   */
  maxCandidates?: number;
}

/** Why one node (or the request as a whole) was turned down; `message` must not depend on the node, so equal rejections aggregate. */
export interface Rejection {
  reason: string;
  message: string;
}
