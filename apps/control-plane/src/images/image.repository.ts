import { Inject, Injectable } from '@nestjs/common';
import { AlreadyExistsError } from '@hyperplane/domain';
import { DataSource } from 'typeorm';
import { Db, affected, isUniqueViolation, rows } from '../database/database';
import { PageRequest } from '../common/pagination';
import { Where } from '../database/where';
import { DATA_SOURCE } from '../common/tokens';

/** An images row. */
export interface ImageRow {
  id: string;
  project_id: string;
  name: string;
  format: 'qcow2' | 'vhdx' | 'raw';
  state: 'ready' | 'deleting';
  size_bytes: string | number;
  virtual_size_bytes: string | number;
  storage_path: string;
  metadata: Record<string, unknown>;
  expires_at: Date | null;
  version: number;
  created_at: Date;
  updated_at: Date;
}

/** A new image, after intake. */
export interface NewImage {
  id: string;
  projectId: string;
  name: string;
  format: ImageRow['format'];
  sizeBytes: number;
  virtualSizeBytes: number;
  storagePath: string;
  metadata: object;
  expiresAt: string | null;
}

/** A comparison on a dotted metadata path (`hardware.minMemoryMiB >= 2048`). */
export interface MetadataFilter {
  path: string[];
  op: '=' | '!=' | '<' | '<=' | '>' | '>=';
  /** The value as typed; `=`/`!=` also match its JSON reading (number, boolean, null). */
  value: string;
}

/** A node's capacity and features, for "compatible with node X". */
export interface NodeFit {
  vcpus: number;
  memoryMiB: number;
  /** Host CPU flags in both spellings (`sse4_2` and `sse4.2`). */
  cpuFlags: string[];
  machineTypes: string[];
  /** True when the node runs KVM (needed by `hv-*` enlightenments). */
  kvm: boolean;
}

/** What a search asks for; every criterion is ANDed. */
export interface ImageSearch {
  tags?: string[];
  labels?: Record<string, string>;
  text?: string;
  filters?: MetadataFilter[];
  compatibleWith?: NodeFit;
  includeExpired?: boolean;
  /** Evaluation time for expiry (defaults to the database's now()). */
  now?: Date;
}

/**
 * Numeric fields the schema guarantees to be numbers and that have a btree index: compared with a
 * plain cast so the planner matches the index expression.
 */
const INDEXED_NUMERIC = new Set(['hardware.minMemoryMiB', 'hardware.minVcpus']);

/** `'{a,b}'` text-array literal for `#>` / `#>>` (path segments are validated by the service). */
function pathLiteral(path: string[]): string {
  return `'{${path.join(',')}}'`;
}

/** `{"a":{"b":value}}` for a containment test on a path. */
function nest(path: string[], value: unknown): unknown {
  return path.reduceRight<unknown>((acc, key) => ({ [key]: acc }), value);
}

/** The JSON readings of a filter value: the string, and a number/boolean/null when it parses as one. */
function jsonReadings(raw: string): unknown[] {
  const out: unknown[] = [raw];
  if (raw === 'true' || raw === 'false' || raw === 'null') out.push(JSON.parse(raw));
  else if (raw.trim() !== '' && Number.isFinite(Number(raw))) out.push(Number(raw));
  return out;
}

/**
 * Builds the WHERE clause of a search. Containment (`@>`) for tags, labels and equality keeps
 * those on the GIN jsonb_path_ops index; text goes to the tsvector GIN index.
 */
export function searchWhere(projectId: string, page: PageRequest | undefined, s: ImageSearch): Where {
  const w = new Where().add('project_id = ?', projectId);
  if (page) w.add('id > ?', page.afterId);
  w.add(`state = ?`, 'ready');
  const contains: Record<string, unknown> = {};
  if (s.tags?.length) contains.tags = s.tags;
  if (s.labels && Object.keys(s.labels).length) contains.labels = s.labels;
  if (Object.keys(contains).length) w.add('metadata @> ?::jsonb', JSON.stringify(contains));
  if (s.text) w.add(`search @@ websearch_to_tsquery('english', ?)`, s.text);
  for (const f of s.filters ?? []) {
    const dotted = f.path.join('.');
    const p = pathLiteral(f.path);
    if (f.op === '=' || f.op === '!=') {
      const [first, ...rest] = jsonReadings(f.value).map((v) => JSON.stringify(nest(f.path, v)));
      const any = ['metadata @> ?::jsonb', ...rest.map((v) => `metadata @> ${w.bind(v)}::jsonb`)].join(' OR ');
      // != : the field is present and differs (an absent field is not "different", as in AIP-160).
      w.add(f.op === '=' ? `(${any})` : `(metadata #> ${p} IS NOT NULL AND NOT (${any}))`, first);
      continue;
    }
    const n = Number(f.value);
    const lhs = INDEXED_NUMERIC.has(dotted)
      ? `(metadata #>> ${p})::numeric`
      : `(CASE WHEN jsonb_typeof(metadata #> ${p}) = 'number' THEN (metadata #>> ${p})::numeric END)`;
    w.add(`${lhs} ${f.op} ?::numeric`, n);
  }
  if (s.compatibleWith) {
    // One CASE, not four conditions: the planner has no statistics for these expressions and would
    // multiply four default selectivities into "almost nothing matches", then choose a bitmap scan
    // plus a sort of every tagged image over the id-ordered walk that stops after one page
    // (measured by bench:search: 1 s instead of a few ms on 1,000,000 images).
    const c = s.compatibleWith;
    const vcpus = w.bind(c.vcpus);
    const memory = w.bind(c.memoryMiB);
    const flags = w.bind(JSON.stringify(c.kvm ? [...c.cpuFlags, ...HYPERV_ENLIGHTENMENTS] : c.cpuFlags));
    w.add(
      `(CASE WHEN coalesce((metadata #>> '{hardware,minVcpus}')::numeric, 0) <= ${vcpus}
          AND coalesce((metadata #>> '{hardware,minMemoryMiB}')::numeric, 0) <= ${memory}
          AND coalesce(metadata #> '{hardware,cpuFeatures}', '[]') <@ ${flags}::jsonb
          AND (jsonb_array_length(coalesce(metadata #> '{hardware,machineTypes}', '[]')) = 0 OR jsonb_exists_any(metadata #> '{hardware,machineTypes}', ?::text[]))
        THEN true ELSE false END)`,
      c.machineTypes,
    );
  }
  if (!s.includeExpired) w.add('(expires_at IS NULL OR expires_at > ?)', s.now ?? new Date());
  return w;
}

/** Hyper-V enlightenments QEMU offers under KVM, whatever the host's flags. */
const HYPERV_ENLIGHTENMENTS = ['hv-relaxed', 'hv-vapic', 'hv-spinlocks', 'hv-vpindex', 'hv-runtime', 'hv-time', 'hv-synic', 'hv-stimer', 'hv-frequencies', 'hv-reset', 'hv-tlbflush', 'hv-ipi'];

/** SQL for the image library. */
@Injectable()
export class ImageRepository {
  constructor(@Inject(DATA_SOURCE) private readonly ds: DataSource) {}

  /** Inserts an image; a taken name is {@link AlreadyExistsError}. */
  async insert(tx: Db, i: NewImage): Promise<ImageRow> {
    try {
      const found = await rows<ImageRow>(tx,
        `INSERT INTO images (id, project_id, name, format, size_bytes, virtual_size_bytes, storage_path, metadata, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *`,
        [i.id, i.projectId, i.name, i.format, i.sizeBytes, i.virtualSizeBytes, i.storagePath, JSON.stringify(i.metadata), i.expiresAt],
      );
      return found[0]!;
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExistsError('image', i.name);
      throw e;
    }
  }

  /** True when the project already has an image with this name. */
  async nameTaken(projectId: string, name: string): Promise<boolean> {
    return (await rows(this.ds, `SELECT 1 FROM images WHERE project_id = $1 AND name = $2`, [projectId, name])).length > 0;
  }

  /** An image in a project. */
  async get(projectId: string, id: string, db: Db = this.ds): Promise<ImageRow | undefined> {
    return (await rows<ImageRow>(db, `SELECT * FROM images WHERE id = $1 AND project_id = $2 AND state = 'ready'`, [id, projectId]))[0];
  }

  /** An image in a project by name. */
  async getByName(db: Db, projectId: string, name: string): Promise<ImageRow | undefined> {
    return (await rows<ImageRow>(db, `SELECT * FROM images WHERE project_id = $1 AND name = $2 AND state = 'ready'`, [projectId, name]))[0];
  }

  /** An image locked for the rest of the transaction. */
  async lock(tx: Db, projectId: string, id: string): Promise<ImageRow | undefined> {
    return (await rows<ImageRow>(tx, `SELECT * FROM images WHERE id = $1 AND project_id = $2 AND state = 'ready' FOR UPDATE`, [id, projectId]))[0];
  }

  /** A keyset page of a project's images matching `s`. */
  search(projectId: string, page: PageRequest, s: ImageSearch): Promise<ImageRow[]> {
    const { text, params } = ImageRepository.searchSql(projectId, page, s);
    return rows(this.ds, text, params);
  }

  /** The SQL (and parameters) of a search page: what the API runs, for EXPLAIN and benchmarks. */
  static searchSql(projectId: string, page: PageRequest, s: ImageSearch): { text: string; params: unknown[] } {
    const w = searchWhere(projectId, page, s);
    return { text: `SELECT * FROM images ${w} ORDER BY id LIMIT ${w.bind(page.pageSize + 1)}`, params: w.params };
  }

  /** Replaces the indexed metadata, bumping the version. */
  async updateMetadata(tx: Db, id: string, metadata: object, expiresAt: string | null, sizeBytes: number): Promise<ImageRow> {
    return (await rows<ImageRow>(tx,
      `UPDATE images SET metadata = $2, expires_at = $3, size_bytes = $4, version = version + 1, updated_at = now() WHERE id = $1 RETURNING *`,
      [id, JSON.stringify(metadata), expiresAt, sizeBytes],
    ))[0]!;
  }

  /** Deletes the record. */
  async delete(tx: Db, id: string): Promise<boolean> {
    return (await affected(tx, `DELETE FROM images WHERE id = $1`, [id])) > 0;
  }

  /** How many partitions of the project use the image by name (its concurrent use). */
  async partitionsUsing(db: Db, projectId: string, name: string): Promise<number> {
    const found = await rows<{ n: string }>(db, `SELECT count(*) AS n FROM partitions WHERE project_id = $1 AND image = $2`, [projectId, name]);
    return Number(found[0]!.n);
  }
}
