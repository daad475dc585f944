/** A service-chain provider as the agent keeps it: the spec it acted on (never its key) and what it observed. */
import type { agentV1 } from '@hyperplane/proto';
import { endpointFromWire, type Endpoint } from './nbd-graph';

/** What a link adds (agent.proto `ProviderSpec.kind`). */
export type LinkKind = 'base' | 'overlay' | 'encrypt' | 'throttle' | 'cache';

/** Kinds that hold data of their own (a file on the node), so a new replica must be copied from a healthy one. */
export const STATEFUL_KINDS: readonly LinkKind[] = ['base', 'overlay', 'cache'];

const KINDS: readonly string[] = ['base', 'overlay', 'encrypt', 'throttle', 'cache'];

/** States the agent reports (agent.proto `ProviderStatus.state`). */
export type ProviderState = 'starting' | 'syncing' | 'running' | 'failed' | 'absent';

/** Throttle limits; 0 means no limit. */
export interface ThrottleLimits {
  iopsTotal: number;
  iopsRead: number;
  iopsWrite: number;
  bpsTotal: number;
  bpsRead: number;
  bpsWrite: number;
}

/** A normalised ProviderSpec, without its key. */
export interface ProviderSpecRecord {
  id: string;
  chainId: string;
  link: string;
  kind: LinkKind;
  desired: 'running' | 'absent';
  generation: number;
  sizeBytes: number;
  image: string;
  upstream: Endpoint[];
  throttle: ThrottleLimits;
  format: boolean;
  syncFrom: Endpoint | undefined;
  exposeTcp: boolean;
}

/** What `providers/<id>/state.json` holds. */
export interface ProviderRecord {
  id: string;
  spec: ProviderSpecRecord;
  appliedGeneration: number;
  state: ProviderState;
  reason: string;
  /** The TCP port it listens on once exposed; kept so that it never changes for its consumers. */
  tcpPort: number;
  /** Copied whole from another replica (a resync): it no longer reads from the link below. */
  standalone: boolean;
  updatedAt: string;
}

/** A spec from the wire, split into the record and its key (kept in memory only). */
export interface WireProviderSpec {
  spec: ProviderSpecRecord;
  key: Buffer | undefined;
}

/**
 * Normalises a ProviderSpec from the wire. Undefined when it has no id; a spec with an unknown
 * kind or desired state comes back with `problem` set so the caller can report it.
 */
export function providerSpecFromWire(w: agentV1.ProviderSpec__Output | agentV1.ProviderSpec): (WireProviderSpec & { problem?: string }) | undefined {
  if (!w.id) return undefined;
  const t = w.throttle;
  const spec: ProviderSpecRecord = {
    id: w.id,
    chainId: w.chainId ?? '',
    link: w.link ?? '',
    kind: (w.kind ?? '') as LinkKind,
    desired: (w.desired ?? '') as 'running' | 'absent',
    generation: Number(w.generation ?? 0),
    sizeBytes: Number(w.sizeBytes ?? 0),
    image: w.image ?? '',
    upstream: (w.upstream ?? []).map((e) => endpointFromWire(e)).filter((e): e is Endpoint => e !== undefined),
    throttle: {
      iopsTotal: Number(t?.iopsTotal ?? 0),
      iopsRead: Number(t?.iopsRead ?? 0),
      iopsWrite: Number(t?.iopsWrite ?? 0),
      bpsTotal: Number(t?.bpsTotal ?? 0),
      bpsRead: Number(t?.bpsRead ?? 0),
      bpsWrite: Number(t?.bpsWrite ?? 0),
    },
    format: Boolean(w.format),
    syncFrom: endpointFromWire(w.syncFrom),
    exposeTcp: Boolean(w.exposeTcp),
  };
  const key = w.key && w.key.length ? Buffer.from(w.key as Uint8Array) : undefined;
  let problem: string | undefined;
  if (spec.desired !== 'running' && spec.desired !== 'absent') problem = `unknown desired state ${JSON.stringify(spec.desired)}`;
  else if (spec.desired === 'running' && !KINDS.includes(spec.kind)) problem = `unknown link kind ${JSON.stringify(spec.kind)}`;
  else if (spec.desired === 'running' && spec.kind !== 'base' && spec.upstream.length === 0 && !(spec.syncFrom && STATEFUL_KINDS.includes(spec.kind))) problem = `a ${spec.kind} link needs the replicas of the link below`;
  return { spec, key, ...(problem ? { problem } : {}) };
}
