/** A partition as the agent keeps it: the spec it acted on and what it observed. */
import type { agentV1 } from '@hyperplane/proto';
import type { ChainDiskSpec, GuestSpec } from './drivers/driver';
import { endpointFromWire, type Endpoint } from './providers/nbd-graph';

/** States the agent reports (agent.proto `PartitionStatus.state`). */
export type ReportedState = 'starting' | 'running' | 'stopping' | 'stopped' | 'failed' | 'absent';

/** What the control plane wants of a partition (agent.proto `PartitionSpec.desired`). */
export type DesiredState = 'running' | 'stopped' | 'absent';

/** A normalised PartitionSpec: every field present, numbers as numbers. */
export interface SpecRecord {
  id: string;
  name: string;
  projectId: string;
  vcpus: number;
  memoryMiB: number;
  diskGiB: number;
  image: string;
  desired: DesiredState;
  generation: number;
  /** Service-chain disks (absent: none). */
  disks?: ChainDiskSpec[];
  /** The library image the disk is based on (agent.proto `PartitionSpec.library_image_id`); absent for a store image. */
  libraryImageId?: string;
}

/** What `state.json` holds for one partition. */
export interface PartitionRecord {
  id: string;
  /** The last spec the agent acted on (absent for a guest found without a record). */
  spec: SpecRecord | undefined;
  /** The generation of that spec; 0 when none was acted on. */
  appliedGeneration: number;
  state: ReportedState;
  reason: string;
  updatedAt: string;
}

const DESIRED: readonly string[] = ['running', 'stopped', 'absent'];

/**
 * Normalises a spec from the wire (proto3 defaults may be missing). Returns undefined with no id;
 * an unknown `desired` becomes undefined in the result's `desired` check by the caller.
 */
export function specFromWire(p: agentV1.PartitionSpec__Output | agentV1.PartitionSpec): SpecRecord | undefined {
  if (!p.id) return undefined;
  return {
    id: p.id,
    name: p.name ?? '',
    projectId: p.projectId ?? '',
    vcpus: Number(p.vcpus ?? 0),
    memoryMiB: Number(p.memoryMib ?? 0),
    diskGiB: Number(p.diskGib ?? 0),
    image: p.image ?? '',
    desired: (p.desired ?? '') as DesiredState,
    generation: Number(p.generation ?? 0),
    ...(p.libraryImageId ? { libraryImageId: p.libraryImageId } : {}),
    ...(p.disks?.length ? { disks: p.disks.map(chainDiskFromWire).filter((d): d is ChainDiskSpec => d !== undefined) } : {}),
  };
}

/** Normalises a ChainDisk from the wire; undefined without an attachment id. */
export function chainDiskFromWire(d: agentV1.ChainDisk__Output | agentV1.ChainDisk | null | undefined): ChainDiskSpec | undefined {
  if (!d?.attachmentId) return undefined;
  return {
    attachmentId: d.attachmentId,
    index: Number(d.index ?? 0),
    readOnly: Boolean(d.readOnly),
    replicas: (d.replicas ?? []).map((e) => endpointFromWire(e)).filter((e): e is Endpoint => e !== undefined),
  };
}

/** The part of a spec a driver needs to start the guest. */
export function guestSpecOf(spec: SpecRecord): GuestSpec {
  return {
    id: spec.id,
    name: spec.name,
    vcpus: spec.vcpus,
    memoryMiB: spec.memoryMiB,
    diskGiB: spec.diskGiB,
    image: spec.image,
    ...(spec.libraryImageId ? { libraryImageId: spec.libraryImageId } : {}),
    ...(spec.disks?.length ? { disks: spec.disks } : {}),
  };
}

/** True when `desired` is one the agent knows how to act on. */
export function isDesiredState(desired: string): desired is DesiredState {
  return DESIRED.includes(desired);
}
