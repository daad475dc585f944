/**
 * The rules of service chains, as pure functions: which links may follow which, what each kind
 * needs, how healthy a chain is, and which replicas a consumer reads from. No I/O: services call
 * these before they change anything, so bad input is refused whole with every problem named.
 */
import { ValidationError, type FieldError } from '@hyperplane/domain';

/** What a link adds to the resource below it. */
export const LINK_KINDS = ['base', 'overlay', 'encrypt', 'throttle', 'cache'] as const;
/** One of {@link LINK_KINDS}. */
export type LinkKind = (typeof LINK_KINDS)[number];

/** Kinds that store data of their own: a new replica of them is copied from a healthy one. */
export const STATEFUL_KINDS: readonly LinkKind[] = ['base', 'overlay', 'cache'];

/** Kinds that keep written data on their node (in clear above an encryption link). */
const STORING_KINDS: readonly LinkKind[] = ['overlay', 'cache'];

/** Limits of a chain definition. */
export const CHAIN_LIMITS = {
  maxLinks: 16,
  maxReplicas: 8,
  keyBytes: 32,
  minBaseBytes: 1024 * 1024,
  maxBaseBytes: 4 * 1024 ** 4,
  maxAttachmentsPerPartition: 16,
} as const;

/** Throttle limits of a throttle link; absent or 0 means no limit on that measure. */
export interface ThrottleLimits {
  iopsTotal?: number;
  iopsRead?: number;
  iopsWrite?: number;
  bpsTotal?: number;
  bpsRead?: number;
  bpsWrite?: number;
}

/** A link as a request describes it (REST body or gRPC message, already type-checked). */
export interface LinkDefinition {
  name: string;
  kind: string;
  /** The link it consumes; must be the one right below it (a chain is a series). */
  consumes?: string;
  replicas?: number;
  image?: string;
  sizeBytes?: number;
  /** encrypt: base64 of a 32-byte key; absent → the control plane makes one. */
  key?: string;
  throttle?: ThrottleLimits;
  /** Nodes (names or ids) to put the replicas on, at most one per replica. */
  nodes?: string[];
}

/** A link that passed {@link validateLinks}, with its key decoded. */
export interface ValidLink {
  name: string;
  kind: LinkKind;
  replicas: number;
  image: string;
  sizeBytes: number;
  key: Buffer | undefined;
  throttle: ThrottleLimits;
  nodes: string[];
}

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/**
 * Checks links to put on top of `below` (the chain's current links, base first; empty for a new
 * chain). Throws one {@link ValidationError} naming every problem (`links[i].field`).
 */
export function validateLinks(links: readonly LinkDefinition[], below: ReadonlyArray<{ name: string; kind: string }>, field = 'links'): ValidLink[] {
  const errors: FieldError[] = [];
  const bad = (i: number, f: string, message: string) => errors.push({ field: `${field}[${i}]${f ? `.${f}` : ''}`, message });
  if (links.length === 0) errors.push({ field, message: 'a chain needs at least one link (its base)' });
  if (below.length + links.length > CHAIN_LIMITS.maxLinks) errors.push({ field, message: `a chain has at most ${CHAIN_LIMITS.maxLinks} links` });
  const names = new Set(below.map((l) => l.name));
  const chain = [...below.map((l) => ({ name: l.name, kind: l.kind }))];
  const out: ValidLink[] = [];
  links.forEach((l, i) => {
    const position = below.length + i;
    const previous = chain[position - 1];
    const kind = l.kind as LinkKind;
    if (!(LINK_KINDS as readonly string[]).includes(l.kind)) bad(i, 'kind', `must be one of ${LINK_KINDS.join(', ')} (got ${JSON.stringify(l.kind)})`);
    if (names.has(l.name)) bad(i, 'name', `link ${l.name} is already in the chain`);
    names.add(l.name);
    if (l.consumes !== undefined) {
      if (l.consumes === l.name) bad(i, 'consumes', `link ${l.name} consumes itself`);
      else if (!previous) bad(i, 'consumes', `link ${l.name} is the base of the chain: it consumes no link`);
      else if (!chain.some((c) => c.name === l.consumes)) bad(i, 'consumes', `link ${l.name} consumes ${l.consumes}, which is not a link of the chain below it`);
      else if (l.consumes !== previous.name) bad(i, 'consumes', `link ${l.name} must consume ${previous.name}, the link right below it (a chain is a series)`);
    }
    if (position === 0 && l.kind !== 'base') bad(i, 'kind', `the first link of a chain must be a base (got ${l.kind})`);
    if (position > 0 && l.kind === 'base') bad(i, 'kind', 'only the first link of a chain is a base');
    const replicas = l.replicas ?? 1;
    if (!Number.isInteger(replicas) || replicas < 1 || replicas > CHAIN_LIMITS.maxReplicas) bad(i, 'replicas', `must be 1-${CHAIN_LIMITS.maxReplicas} (got ${l.replicas})`);
    const nodes = l.nodes ?? [];
    if (nodes.length > replicas) bad(i, 'nodes', `names ${nodes.length} nodes for ${replicas} replicas`);
    if (new Set(nodes).size !== nodes.length) bad(i, 'nodes', 'names a node twice: replicas of a link run on different nodes');
    if (l.kind === 'base') {
      if (!l.image && l.sizeBytes === undefined) bad(i, '', 'a base needs an image or a sizeBytes (a blank disk)');
      if (l.sizeBytes !== undefined && (!Number.isInteger(l.sizeBytes) || l.sizeBytes < CHAIN_LIMITS.minBaseBytes || l.sizeBytes > CHAIN_LIMITS.maxBaseBytes || l.sizeBytes % 512 !== 0)) {
        bad(i, 'sizeBytes', `must be a multiple of 512 between ${CHAIN_LIMITS.minBaseBytes} and ${CHAIN_LIMITS.maxBaseBytes} (got ${l.sizeBytes})`);
      }
    } else {
      if (l.image !== undefined) bad(i, 'image', 'only a base link starts from an image');
      if (l.sizeBytes !== undefined) bad(i, 'sizeBytes', 'only a base link has a size of its own (the others take the size of the link below)');
    }
    let key: Buffer | undefined;
    if (l.key !== undefined) {
      if (l.kind !== 'encrypt') bad(i, 'key', 'only an encrypt link takes a key');
      else if (!BASE64.test(l.key) || l.key.length % 4 !== 0) bad(i, 'key', 'must be base64');
      else {
        key = Buffer.from(l.key, 'base64');
        if (key.length !== CHAIN_LIMITS.keyBytes) bad(i, 'key', `must be ${CHAIN_LIMITS.keyBytes} bytes (256 bits), base64-encoded; got ${key.length} bytes`);
      }
    }
    const throttle = l.throttle ?? {};
    if (l.throttle !== undefined && l.kind !== 'throttle') bad(i, 'throttle', 'only a throttle link has limits');
    if (l.kind === 'throttle' && !Object.values(throttle).some((v) => typeof v === 'number' && v > 0)) bad(i, 'throttle', 'a throttle link needs at least one limit above 0 (iopsTotal, bpsTotal, ...)');
    if (STORING_KINDS.includes(kind) && chain.some((c) => c.kind === 'encrypt')) {
      bad(i, 'kind', `a ${l.kind} link above an encrypt link would keep what the guest writes in clear: put it below the encrypt link`);
    }
    chain.push({ name: l.name, kind: l.kind });
    out.push({ name: l.name, kind, replicas, image: l.image ?? '', sizeBytes: l.sizeBytes ?? 0, key, throttle, nodes });
  });
  if (errors.length) throw new ValidationError(errors);
  return out;
}

/** Replica states as the control plane tracks them. */
export type ReplicaState = 'pending' | 'starting' | 'syncing' | 'healthy' | 'failed' | 'removing';

/** Health of one link: how many of its replicas serve, and what that makes of the link. */
export interface LinkHealth {
  name: string;
  desired: number;
  healthy: number;
  state: 'creating' | 'ready' | 'degraded' | 'failed' | 'removing';
}

/** The chain's health from its links and replicas. */
export interface ChainHealth {
  state: 'ready' | 'degraded' | 'failed';
  reason: string;
  links: LinkHealth[];
}

/**
 * How healthy a chain is: `ready` when every link has all its replicas healthy, `degraded` when
 * some link has fewer (but at least one), `failed` when a link has none (its consumers see I/O
 * errors). Links still being created count as they are.
 */
export function chainHealth(links: ReadonlyArray<{ name: string; replicas: number; state: string }>, replicas: ReadonlyArray<{ linkName: string; state: ReplicaState }>): ChainHealth {
  const out: LinkHealth[] = links.map((l) => {
    const healthy = replicas.filter((r) => r.linkName === l.name && r.state === 'healthy').length;
    const state: LinkHealth['state'] = l.state === 'removing' ? 'removing' : healthy === 0 ? (l.state === 'creating' ? 'creating' : 'failed') : healthy < l.replicas ? 'degraded' : l.state === 'creating' ? 'creating' : 'ready';
    return { name: l.name, desired: l.replicas, healthy, state };
  });
  const failed = out.filter((l) => l.state === 'failed');
  const degraded = out.filter((l) => l.state === 'degraded');
  if (failed.length) return { state: 'failed', reason: `no healthy replica of link ${failed.map((l) => l.name).join(', ')}`, links: out };
  if (degraded.length) return { state: 'degraded', reason: degraded.map((l) => `link ${l.name}: ${l.healthy} of ${l.desired} replicas healthy`).join('; '), links: out };
  return { state: 'ready', reason: '', links: out };
}

/** The lowest device index (0-15) a partition's attachments leave free, or undefined when none is. */
export function freeDeviceIndex(used: readonly number[]): number | undefined {
  for (let i = 0; i < CHAIN_LIMITS.maxAttachmentsPerPartition; i++) if (!used.includes(i)) return i;
  return undefined;
}

/**
 * Whether a client may attach to `link` writing: only the head is writable (a link below is
 * written by the link above it, so another writer would corrupt what the upper link sees).
 * Returns the read-only flag to use, or the reason it is refused.
 */
export function attachMode(links: ReadonlyArray<{ name: string; position: number }>, link: string, readOnly: boolean | undefined): { readOnly: boolean } | { refused: string } {
  const head = [...links].sort((a, b) => b.position - a.position)[0];
  const target = links.find((l) => l.name === link);
  if (!head || !target) return { refused: `no link ${link}` };
  if (target === head) return { readOnly: readOnly ?? false };
  const above = links.find((l) => l.position === target.position + 1);
  if (readOnly === false) return { refused: `link ${link} is consumed by link ${above?.name ?? head.name}: a client attaches to it read-only` };
  return { readOnly: true };
}
