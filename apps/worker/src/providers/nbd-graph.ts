/**
 * The block-graph pieces every service-chain consumer uses: an NBD client node per replica of the
 * link it consumes, under one quorum node (vote-threshold 1, fifo reads), so writes reach every
 * replica and reads come from the oldest healthy one. Used by providers (their upstream) and by
 * partitions (their chain disks). Pure builders, plus one function that makes a live quorum's
 * children match a wanted set over QMP.
 */
import type { BlockdevOptions, QmpClient } from '@hyperplane/qmp';

/** Where a consumer reaches one replica (agent.proto `ProviderEndpoint`, normalised). */
export interface Endpoint {
  replicaId: string;
  /** Set when the replica runs on this node. */
  unixPath?: string;
  host?: string;
  port?: number;
  tls?: boolean;
  /** Name the provider's server certificate carries. */
  tlsHostname?: string;
  exportName: string;
}

/** Id of the `tls-creds-x509` client object a consumer process uses for TLS endpoints. */
export const NBD_TLS_CLIENT = 'hp-nbd-tls-client';

/** The export name every provider uses for its top node. */
export const LINK_EXPORT = 'link';

/**
 * The QEMU node name of the NBD child for `replicaId` under `prefix` (QEMU node names: a letter
 * first, at most 31 characters). The random tail of the UUID keeps names of replicas made in the
 * same millisecond apart.
 */
export function childNodeName(prefix: string, replicaId: string): string {
  return `${prefix}-r${replicaId.replaceAll('-', '').slice(-12)}`;
}

/** Normalises a wire endpoint; undefined when it names no replica or no way to reach it. */
export function endpointFromWire(e: { replicaId?: string; unixPath?: string; host?: string; port?: number; tls?: boolean; tlsHostname?: string; exportName?: string } | null | undefined): Endpoint | undefined {
  if (!e?.replicaId) return undefined;
  const unixPath = e.unixPath || undefined;
  const host = e.host || undefined;
  const port = Number(e.port ?? 0) || undefined;
  if (!unixPath && !(host && port)) return undefined;
  return {
    replicaId: e.replicaId,
    ...(unixPath ? { unixPath } : { host, port, ...(e.tls ? { tls: true, tlsHostname: e.tlsHostname || host } : {}) }),
    exportName: e.exportName || LINK_EXPORT,
  };
}

/** True when any endpoint needs the TLS client credentials. */
export function needsTls(endpoints: readonly Endpoint[]): boolean {
  return endpoints.some((e) => !e.unixPath && e.tls);
}

/**
 * `blockdev-add` options of the NBD client node for one replica. `reconnect-delay` 0: a request
 * to a replica that went away fails at once (the quorum carries on with the others) instead of
 * waiting for it to come back.
 */
export function nbdChild(nodeName: string, e: Endpoint): BlockdevOptions {
  const server = e.unixPath ? { type: 'unix', path: e.unixPath } : { type: 'inet', host: e.host!, port: String(e.port!) };
  return {
    driver: 'nbd',
    'node-name': nodeName,
    server,
    export: e.exportName,
    'reconnect-delay': 0,
    ...(!e.unixPath && e.tls ? { 'tls-creds': NBD_TLS_CLIENT, 'tls-hostname': e.tlsHostname ?? e.host! } : {}),
  };
}

/**
 * `blockdev-add` options of a quorum over the replicas (children defined inline, named with
 * {@link childNodeName}). vote-threshold 1: a write succeeds when one replica took it (every
 * replica is written); fifo: reads go to the first child, and to the next one when it fails.
 */
export function quorumOf(nodeName: string, endpoints: readonly Endpoint[], readOnly = false): BlockdevOptions {
  return {
    driver: 'quorum',
    'node-name': nodeName,
    'vote-threshold': 1,
    'read-pattern': 'fifo',
    ...(readOnly ? { 'read-only': true } : {}),
    children: endpoints.map((e) => nbdChild(childNodeName(nodeName, e.replicaId), e)),
  };
}

/** The children of a live quorum node: QEMU's child name (`children.N`) by child node name. */
export async function quorumChildren(qmp: QmpClient, quorumNode: string): Promise<Map<string, string>> {
  const graph = await qmp.blockGraph();
  const parent = graph.nodes.find((n) => n.name === quorumNode);
  if (!parent) throw new Error(`no block node ${quorumNode}`);
  const byId = new Map(graph.nodes.map((n) => [n.id, n.name]));
  const out = new Map<string, string>();
  for (const edge of graph.edges) {
    if (edge.parent !== parent.id || !edge.name.startsWith('children.')) continue;
    out.set(byId.get(edge.child) ?? '', edge.name);
  }
  return out;
}

/** What `syncQuorum` changed. */
export interface QuorumChange {
  added: string[];
  removed: string[];
}

/**
 * Makes the children of the live quorum `quorumNode` exactly the replicas in `wanted`: new ones
 * are added after the existing ones (so fifo reads keep going to replicas that are in sync),
 * missing ones are removed and their nodes deleted. Never removes the last child: a quorum must
 * keep one, so with no replica wanted the last one stays until the disk is detached.
 */
export async function syncQuorum(qmp: QmpClient, quorumNode: string, wanted: readonly Endpoint[]): Promise<QuorumChange> {
  const current = await quorumChildren(qmp, quorumNode);
  const wantedNames = new Map(wanted.map((e) => [childNodeName(quorumNode, e.replicaId), e]));
  const added: string[] = [];
  const removed: string[] = [];
  for (const [node, e] of wantedNames) {
    if (current.has(node)) continue;
    await qmp.blockdevDel(node).catch(() => undefined); // left over by an earlier, interrupted attempt
    await qmp.blockdevAdd(nbdChild(node, e));
    try {
      await qmp.xBlockdevChange({ parent: quorumNode, node });
    } catch (error) {
      await qmp.blockdevDel(node).catch(() => undefined);
      throw error;
    }
    added.push(e.replicaId);
  }
  let left = current.size + added.length;
  for (const [node, child] of current) {
    if (wantedNames.has(node) || left <= 1) continue;
    await removeChild(qmp, quorumNode, node, child);
    left--;
    removed.push(node);
  }
  return { added, removed };
}

/** Removes one child (by its node name and child name) from a quorum and deletes its node. */
export async function removeChild(qmp: QmpClient, quorumNode: string, node: string, child: string): Promise<void> {
  await qmp.xBlockdevChange({ parent: quorumNode, child });
  await qmp.blockdevDel(node).catch(() => undefined);
}

/**
 * Drops the child `node` from `quorumNode` after an I/O error on it, unless it is the last one.
 * Returns true when it was removed.
 */
export async function dropFailedChild(qmp: QmpClient, quorumNode: string, node: string): Promise<boolean> {
  const current = await quorumChildren(qmp, quorumNode);
  const child = current.get(node);
  if (!child || current.size <= 1) return false;
  await removeChild(qmp, quorumNode, node, child);
  return true;
}

/** The replica id tail a child node name carries (inverse of {@link childNodeName}). */
export function replicaTailOf(nodeName: string): string | undefined {
  const m = /-r([0-9a-f]{12})$/.exec(nodeName);
  return m?.[1];
}

/** Finds the replica among `endpoints` whose child node is `nodeName`. */
export function endpointOfChild(quorumNode: string, nodeName: string, endpoints: readonly Endpoint[]): Endpoint | undefined {
  return endpoints.find((e) => childNodeName(quorumNode, e.replicaId) === nodeName);
}
