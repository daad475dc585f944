import { type FieldError, ImageRejectedError, MetadataInvalidError } from './errors';

/**
 * The metadata a disk image carries about itself (API.md "Image metadata"), schema version 1.
 * Only `schemaVersion` is required; a field that is absent means "not stated". Unknown fields
 * are rejected so that a typo never silently drops a policy. A later schema adds fields under a
 * new `schemaVersion`; a reader that meets a newer version refuses it instead of guessing.
 */

/** Current (and only) schema version this library reads and writes. */
export const METADATA_SCHEMA_VERSION = 1;
/** Cap on the serialized JSON (UTF-8 bytes). Formats may hold less; see each writer. */
export const MAX_METADATA_JSON_BYTES = 1024 * 1024;

/** Guest firmware the image boots with. */
export type Firmware = 'bios' | 'uefi';

/** What the disk holds. */
export interface ContentInfo {
  os?: string;
  summary?: string;
}

/** Hardware a partition needs to run this image. */
export interface HardwareRequirements {
  /** QEMU target name, e.g. "x86_64", "aarch64". */
  arch: string;
  minVcpus: number;
  minMemoryMiB: number;
  /** CPU flags the guest needs, QEMU spelling ("avx2", "hv-synic"). */
  cpuFeatures?: string[];
  /** QEMU machine types known to work ("pc", "q35", "virt"). */
  machineTypes?: string[];
  firmware?: Firmware;
}

/** Hosts the image is known to work on; empty or absent lists mean "any". */
export interface HostCompatibility {
  /** Host OS identifiers, e.g. "debian-12". */
  os?: string[];
  /** Hypervisor versions or ranges, e.g. "qemu>=7.2". */
  hypervisor?: string[];
}

/** Licence enforcement state of the image's content. */
export interface DrmStatus {
  status: 'none' | 'protected' | 'unknown';
  scheme?: string;
}

/**
 * Who may use the image. `allowedProjects` empty or absent: any project;
 * `maxConcurrentPartitions` 0 or absent: unlimited.
 */
export interface UsagePolicy {
  allowedProjects?: string[];
  maxConcurrentPartitions?: number;
  licence?: string;
  drm?: DrmStatus;
}

/** Patch level of the guest OS on the disk. */
export interface PatchState {
  level?: string;
  lastPatchedAt?: string;
  applied?: string[];
  pending?: string[];
}

/** One guest network interface the image expects. */
export interface NetworkInterface {
  name: string;
  network?: string;
  mac?: string;
  model?: string;
  addresses?: string[];
}

/** The network layout the image was configured for. */
export interface NetworkTopology {
  interfaces?: NetworkInterface[];
}

/** A configuration file carried with the image; `encoding` defaults to "utf8". */
export interface ConfigFile {
  path: string;
  content: string;
  encoding?: 'utf8' | 'base64';
}

/** Scalar values allowed in a history entry's details. */
export type HistoryDetailValue = string | number | boolean | null;

/** One operation the control plane performed on the image. */
export interface HistoryEntry {
  /** RFC 3339 timestamp. */
  at: string;
  /** e.g. "created", "snapshot", "migrated", "metadata-updated". */
  operation: string;
  /** Principal (user, token or component) that did it. */
  by: string;
  /** The partition the operation concerned (its id), when there was one. */
  partition?: string;
  /** The node it happened on (its name or id), when there was one. */
  node?: string;
  details?: Record<string, HistoryDetailValue>;
}

/** The metadata document, schema version 1. */
export interface ImageMetadata {
  schemaVersion: 1;
  description?: string;
  content?: ContentInfo;
  hardware?: HardwareRequirements;
  hostCompatibility?: HostCompatibility;
  /** RFC 3339 timestamp after which the image is expired; null or absent: never. */
  expiresAt?: string | null;
  usagePolicy?: UsagePolicy;
  patchState?: PatchState;
  networkTopology?: NetworkTopology;
  tags?: string[];
  labels?: Record<string, string>;
  configFiles?: ConfigFile[];
  /** Reference to a saved VM state (e.g. a snapshot or state file id); null: none. */
  savedStateRef?: string | null;
  history?: HistoryEntry[];
}

/** Result of validateMetadata. */
export type ValidationResult = { ok: true; value: ImageMetadata } | { ok: false; errors: FieldError[] };

const SHORT = 256;
const LONG = 16 * 1024;
const KEY_RE = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$/;
const TIMESTAMP_RE = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;
const MAC_RE = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;
const BASE64_RE = /^[A-Za-z0-9+/]*={0,2}$/;

/** Collects errors while walking a value. */
class Checker {
  readonly errors: FieldError[] = [];

  fail(field: string, message: string): void {
    this.errors.push({ field, message: `${field} ${message}` });
  }

  object(v: unknown, field: string, known: readonly string[]): v is Record<string, unknown> {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      this.fail(field, 'must be an object');
      return false;
    }
    for (const k of Object.keys(v)) {
      if (!known.includes(k)) this.fail(join(field, k), 'is not a known field');
    }
    return true;
  }

  string(v: unknown, field: string, max: number, opts: { nonEmpty?: boolean } = {}): void {
    if (typeof v !== 'string') return this.fail(field, 'must be a string');
    if (opts.nonEmpty && v.length === 0) return this.fail(field, 'must not be empty');
    if (v.length > max) this.fail(field, `must be at most ${max} characters`);
  }

  nullableString(v: unknown, field: string, max: number): void {
    if (v !== null) this.string(v, field, max);
  }

  stringArray(v: unknown, field: string, maxItems: number, maxLen: number): void {
    if (!Array.isArray(v)) return this.fail(field, 'must be an array of strings');
    if (v.length > maxItems) this.fail(field, `must have at most ${maxItems} items`);
    v.forEach((s, i) => this.string(s, `${field}[${i}]`, maxLen, { nonEmpty: true }));
  }

  int(v: unknown, field: string, min: number, max: number, word: string): void {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) this.fail(field, `must be ${word}`);
  }

  timestamp(v: unknown, field: string): void {
    if (typeof v !== 'string' || !isTimestamp(v)) this.fail(field, 'must be an RFC 3339 timestamp like 2027-01-01T00:00:00Z');
  }

  oneOf<T extends string>(v: unknown, field: string, allowed: readonly T[]): void {
    if (typeof v !== 'string' || !allowed.includes(v as T)) this.fail(field, `must be one of ${allowed.map((a) => `"${a}"`).join(', ')}`);
  }

  /** Runs `f` for each present optional field of `o`. */
  optional(o: Record<string, unknown>, key: string, f: (v: unknown) => void): void {
    if (Object.hasOwn(o, key) && o[key] !== undefined) f(o[key]);
  }

  required(o: Record<string, unknown>, field: string, key: string, f: (v: unknown) => void): void {
    if (!Object.hasOwn(o, key) || o[key] === undefined) this.fail(join(field, key), 'is required');
    else f(o[key]);
  }
}

function join(parent: string, key: string): string {
  const k = /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? key : JSON.stringify(key);
  if (!parent) return k;
  return k.startsWith('"') ? `${parent}[${k}]` : `${parent}.${k}`;
}

function isTimestamp(s: string): boolean {
  const m = TIMESTAMP_RE.exec(s);
  if (!m) return false;
  const [y, mo, d, h, mi, se] = m.slice(1, 7).map(Number);
  if (mo < 1 || mo > 12 || h > 23 || mi > 59 || se > 59) return false;
  const daysInMonth = new Date(Date.UTC(y, mo, 0)).getUTCDate();
  if (d < 1 || d > daysInMonth) return false;
  if (m[8] !== 'Z') {
    const [oh, om] = m[8].slice(1).split(':').map(Number);
    if (oh > 23 || om > 59) return false;
  }
  return !Number.isNaN(Date.parse(s));
}

function checkKeyedStrings(c: Checker, v: unknown, field: string, maxItems: number, maxValue: number): void {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return c.fail(field, 'must be an object of strings');
  const keys = Object.keys(v);
  if (keys.length > maxItems) c.fail(field, `must have at most ${maxItems} entries`);
  for (const k of keys) {
    if (!KEY_RE.test(k)) c.fail(join(field, k), 'has an invalid key (letters, digits, ".", "_", "/", "-"; at most 128)');
    c.string((v as Record<string, unknown>)[k], join(field, k), maxValue);
  }
}

function checkHistoryEntry(c: Checker, v: unknown, field: string): void {
  if (!c.object(v, field, ['at', 'operation', 'by', 'partition', 'node', 'details'])) return;
  c.required(v, field, 'at', (x) => c.timestamp(x, `${field}.at`));
  c.required(v, field, 'operation', (x) => c.string(x, `${field}.operation`, 128, { nonEmpty: true }));
  c.required(v, field, 'by', (x) => c.string(x, `${field}.by`, SHORT, { nonEmpty: true }));
  c.optional(v, 'partition', (x) => c.string(x, `${field}.partition`, SHORT, { nonEmpty: true }));
  c.optional(v, 'node', (x) => c.string(x, `${field}.node`, SHORT, { nonEmpty: true }));
  c.optional(v, 'details', (d) => {
    const df = `${field}.details`;
    if (typeof d !== 'object' || d === null || Array.isArray(d)) return c.fail(df, 'must be an object');
    const keys = Object.keys(d);
    if (keys.length > 64) c.fail(df, 'must have at most 64 entries');
    for (const k of keys) {
      const val = (d as Record<string, unknown>)[k];
      if (!KEY_RE.test(k)) c.fail(join(df, k), 'has an invalid key (letters, digits, ".", "_", "/", "-"; at most 128)');
      if (typeof val === 'string') c.string(val, join(df, k), 4096);
      else if (typeof val === 'number') {
        if (!Number.isFinite(val)) c.fail(join(df, k), 'must be a finite number');
      } else if (typeof val !== 'boolean' && val !== null) c.fail(join(df, k), 'must be a string, number, boolean or null');
    }
  });
}

const TOP_LEVEL = [
  'schemaVersion',
  'description',
  'content',
  'hardware',
  'hostCompatibility',
  'expiresAt',
  'usagePolicy',
  'patchState',
  'networkTopology',
  'tags',
  'labels',
  'configFiles',
  'savedStateRef',
  'history',
] as const;

/**
 * Checks `value` against schema version 1 and the size cap. Returns every violation with its
 * field path ("hardware.minMemoryMiB must be a positive integer"), not just the first one.
 */
export function validateMetadata(value: unknown): ValidationResult {
  const c = new Checker();
  if (!c.object(value, '', TOP_LEVEL)) return { ok: false, errors: [{ field: '', message: 'metadata must be a JSON object' }] };
  const o = value;
  c.required(o, '', 'schemaVersion', (v) => {
    if (v !== METADATA_SCHEMA_VERSION) c.fail('schemaVersion', `must be ${METADATA_SCHEMA_VERSION}`);
  });
  c.optional(o, 'description', (v) => c.string(v, 'description', LONG));
  c.optional(o, 'content', (v) => {
    if (!c.object(v, 'content', ['os', 'summary'])) return;
    c.optional(v, 'os', (x) => c.string(x, 'content.os', SHORT));
    c.optional(v, 'summary', (x) => c.string(x, 'content.summary', LONG));
  });
  c.optional(o, 'hardware', (v) => {
    if (!c.object(v, 'hardware', ['arch', 'minVcpus', 'minMemoryMiB', 'cpuFeatures', 'machineTypes', 'firmware'])) return;
    c.required(v, 'hardware', 'arch', (x) => {
      if (typeof x !== 'string' || !/^[a-z0-9_]{1,32}$/.test(x)) c.fail('hardware.arch', 'must be a QEMU target name such as "x86_64"');
    });
    c.required(v, 'hardware', 'minVcpus', (x) => c.int(x, 'hardware.minVcpus', 1, 4096, 'a positive integer (at most 4096)'));
    c.required(v, 'hardware', 'minMemoryMiB', (x) =>
      c.int(x, 'hardware.minMemoryMiB', 1, 64 * 1024 * 1024, 'a positive integer (at most 67108864)'),
    );
    c.optional(v, 'cpuFeatures', (x) => c.stringArray(x, 'hardware.cpuFeatures', 512, 64));
    c.optional(v, 'machineTypes', (x) => c.stringArray(x, 'hardware.machineTypes', 64, 64));
    c.optional(v, 'firmware', (x) => c.oneOf(x, 'hardware.firmware', ['bios', 'uefi']));
  });
  c.optional(o, 'hostCompatibility', (v) => {
    if (!c.object(v, 'hostCompatibility', ['os', 'hypervisor'])) return;
    c.optional(v, 'os', (x) => c.stringArray(x, 'hostCompatibility.os', 256, SHORT));
    c.optional(v, 'hypervisor', (x) => c.stringArray(x, 'hostCompatibility.hypervisor', 256, SHORT));
  });
  c.optional(o, 'expiresAt', (v) => {
    if (v !== null) c.timestamp(v, 'expiresAt');
  });
  c.optional(o, 'usagePolicy', (v) => {
    if (!c.object(v, 'usagePolicy', ['allowedProjects', 'maxConcurrentPartitions', 'licence', 'drm'])) return;
    c.optional(v, 'allowedProjects', (x) => c.stringArray(x, 'usagePolicy.allowedProjects', 4096, SHORT));
    c.optional(v, 'maxConcurrentPartitions', (x) =>
      c.int(x, 'usagePolicy.maxConcurrentPartitions', 0, 1_000_000, 'an integer >= 0 (0 means unlimited)'),
    );
    c.optional(v, 'licence', (x) => c.string(x, 'usagePolicy.licence', LONG));
    c.optional(v, 'drm', (x) => {
      if (!c.object(x, 'usagePolicy.drm', ['status', 'scheme'])) return;
      c.required(x, 'usagePolicy.drm', 'status', (s) => c.oneOf(s, 'usagePolicy.drm.status', ['none', 'protected', 'unknown']));
      c.optional(x, 'scheme', (s) => c.string(s, 'usagePolicy.drm.scheme', SHORT));
    });
  });
  c.optional(o, 'patchState', (v) => {
    if (!c.object(v, 'patchState', ['level', 'lastPatchedAt', 'applied', 'pending'])) return;
    c.optional(v, 'level', (x) => c.string(x, 'patchState.level', SHORT));
    c.optional(v, 'lastPatchedAt', (x) => c.timestamp(x, 'patchState.lastPatchedAt'));
    c.optional(v, 'applied', (x) => c.stringArray(x, 'patchState.applied', 4096, SHORT));
    c.optional(v, 'pending', (x) => c.stringArray(x, 'patchState.pending', 4096, SHORT));
  });
  c.optional(o, 'networkTopology', (v) => {
    if (!c.object(v, 'networkTopology', ['interfaces'])) return;
    c.optional(v, 'interfaces', (list) => {
      if (!Array.isArray(list)) return c.fail('networkTopology.interfaces', 'must be an array');
      if (list.length > 64) c.fail('networkTopology.interfaces', 'must have at most 64 items');
      list.forEach((nic, i) => {
        const f = `networkTopology.interfaces[${i}]`;
        if (!c.object(nic, f, ['name', 'network', 'mac', 'model', 'addresses'])) return;
        c.required(nic, f, 'name', (x) => c.string(x, `${f}.name`, 64, { nonEmpty: true }));
        c.optional(nic, 'network', (x) => c.string(x, `${f}.network`, SHORT));
        c.optional(nic, 'mac', (x) => {
          if (typeof x !== 'string' || !MAC_RE.test(x)) c.fail(`${f}.mac`, 'must be a MAC address like 52:54:00:12:34:56');
        });
        c.optional(nic, 'model', (x) => c.string(x, `${f}.model`, 64));
        c.optional(nic, 'addresses', (x) => c.stringArray(x, `${f}.addresses`, 64, 64));
      });
    });
  });
  c.optional(o, 'tags', (v) => c.stringArray(v, 'tags', 256, 128));
  c.optional(o, 'labels', (v) => checkKeyedStrings(c, v, 'labels', 256, SHORT));
  c.optional(o, 'configFiles', (v) => {
    if (!Array.isArray(v)) return c.fail('configFiles', 'must be an array');
    if (v.length > 256) c.fail('configFiles', 'must have at most 256 items');
    v.forEach((file, i) => {
      const f = `configFiles[${i}]`;
      if (!c.object(file, f, ['path', 'content', 'encoding'])) return;
      c.required(file, f, 'path', (x) => {
        if (typeof x !== 'string' || !x.startsWith('/') || x.length > 4096 || x.includes('\0')) {
          c.fail(`${f}.path`, 'must be an absolute guest path (starting with "/", no NUL, at most 4096 characters)');
        }
      });
      c.required(file, f, 'content', (x) => c.string(x, `${f}.content`, MAX_METADATA_JSON_BYTES));
      c.optional(file, 'encoding', (x) => c.oneOf(x, `${f}.encoding`, ['utf8', 'base64']));
      if (file.encoding === 'base64' && typeof file.content === 'string' && (!BASE64_RE.test(file.content) || file.content.length % 4 !== 0)) {
        c.fail(`${f}.content`, 'must be valid base64 when encoding is "base64"');
      }
    });
  });
  c.optional(o, 'savedStateRef', (v) => c.nullableString(v, 'savedStateRef', 1024));
  c.optional(o, 'history', (v) => {
    if (!Array.isArray(v)) return c.fail('history', 'must be an array');
    if (v.length > MAX_HISTORY_ENTRIES) c.fail('history', `must have at most ${MAX_HISTORY_ENTRIES} entries`);
    v.forEach((e, i) => checkHistoryEntry(c, e, `history[${i}]`));
  });
  if (c.errors.length === 0) {
    const bytes = Buffer.byteLength(JSON.stringify(o), 'utf8');
    if (bytes > MAX_METADATA_JSON_BYTES) {
      c.fail('metadata', `serializes to ${bytes} bytes, above the cap of ${MAX_METADATA_JSON_BYTES}`);
    }
  }
  return c.errors.length ? { ok: false, errors: c.errors } : { ok: true, value: o as unknown as ImageMetadata };
}

/** Upper bound on history entries kept in one document. */
export const MAX_HISTORY_ENTRIES = 10_000;

/** Validates and serializes metadata to compact JSON; throws MetadataInvalidError. */
export function serializeMetadata(metadata: ImageMetadata): string {
  const result = validateMetadata(metadata);
  if (!result.ok) throw new MetadataInvalidError(result.errors);
  return JSON.stringify(metadata);
}

/**
 * Parses metadata read from an image. The image is untrusted: bad JSON, a newer schema or a
 * schema violation become ImageRejectedError naming `where`.
 */
export function parseStoredMetadata(json: string, where: string): ImageMetadata {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    throw new ImageRejectedError('bad-metadata', `${where}: metadata is not valid JSON`);
  }
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
    const v = (value as Record<string, unknown>).schemaVersion;
    if (typeof v === 'number' && Number.isInteger(v) && v > METADATA_SCHEMA_VERSION) {
      throw new ImageRejectedError(
        'unsupported-version',
        `${where}: metadata schemaVersion ${v} is newer than this reader (${METADATA_SCHEMA_VERSION})`,
      );
    }
  }
  const result = validateMetadata(value);
  if (!result.ok) {
    throw new ImageRejectedError(
      'bad-metadata',
      `${where}: stored metadata fails the schema: ${result.errors
        .slice(0, 3)
        .map((e) => e.message)
        .join('; ')}`,
    );
  }
  return result.value;
}

/** Options for appendHistory. */
export interface AppendHistoryOptions {
  /** Keep at most this many entries, dropping the oldest (default MAX_HISTORY_ENTRIES). */
  maxEntries?: number;
}

/**
 * Returns a copy of `metadata` with `entry` appended to its history (the input is not changed).
 * The entry is validated; the oldest entries are dropped beyond `maxEntries`.
 */
export function appendHistory(metadata: ImageMetadata, entry: HistoryEntry, options: AppendHistoryOptions = {}): ImageMetadata {
  const c = new Checker();
  const index = metadata.history?.length ?? 0;
  checkHistoryEntry(c, entry, `history[${index}]`);
  if (c.errors.length) throw new MetadataInvalidError(c.errors);
  const max = Math.min(options.maxEntries ?? MAX_HISTORY_ENTRIES, MAX_HISTORY_ENTRIES);
  if (!Number.isInteger(max) || max < 1) throw new RangeError('maxEntries must be a positive integer');
  const history = [...(metadata.history ?? []), entry];
  return { ...metadata, history: history.slice(Math.max(0, history.length - max)) };
}

/** True when the metadata has an expiry at or before `now`. */
export function isExpired(metadata: ImageMetadata, now: Date): boolean {
  return typeof metadata.expiresAt === 'string' && Date.parse(metadata.expiresAt) <= now.getTime();
}
