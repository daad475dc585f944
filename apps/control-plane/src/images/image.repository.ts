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
  /** importing: a name reserved by an import in progress (no file yet; never listed). */
  state: 'importing' | 'ready' | 'deleting';
  size_bytes: string | number;
  virtual_size_bytes: string | number;
  storage_path: string;
  metadata: Record<string, unknown>;
  expires_at: Date | null;
  /** `sha256-64m:<hex>` of the file (libs/disk-formats block-digest); null for rows made before digests. */
  digest: string | null;
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
  digest: string;
}

/** An image_digests row: the per-block hashes behind images.digest, and the file state they describe. */
export interface ImageDigestRow {
  image_id: string;
  block_bytes: number;
  blocks: Buffer;
  file_bytes: string | number;
  file_mtime_ms: number;
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
        `INSERT INTO images (id, project_id, name, format, size_bytes, virtual_size_bytes, storage_path, metadata, expires_at, digest)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING *`,
        [i.id, i.projectId, i.name, i.format, i.sizeBytes, i.virtualSizeBytes, i.storagePath, JSON.stringify(i.metadata), i.expiresAt, i.digest],
      );
      return found[0]!;
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExistsError('image', i.name);
      throw e;
    }
  }

  /** Reserves a name for an import in progress: a row in state `importing`, without a file. A taken name is {@link AlreadyExistsError}. */
  async insertImporting(tx: Db, i: { id: string; projectId: string; name: string }): Promise<ImageRow> {
    try {
      return (await rows<ImageRow>(tx,
        `INSERT INTO images (id, project_id, name, format, state, size_bytes, virtual_size_bytes, storage_path) VALUES ($1, $2, $3, 'raw', 'importing', 0, 0, '') RETURNING *`,
        [i.id, i.projectId, i.name],
      ))[0]!;
    } catch (e) {
      if (isUniqueViolation(e)) throw new AlreadyExistsError('image', i.name);
      throw e;
    }
  }

  /** Turns an `importing` row into a ready image; undefined when it is no longer importing (cancelled). */
  async completeImport(tx: Db, i: NewImage): Promise<ImageRow | undefined> {
    return (await rows<ImageRow>(tx,
      `UPDATE images SET state = 'ready', format = $2, size_bytes = $3, virtual_size_bytes = $4, storage_path = $5, metadata = $6, expires_at = $7, digest = $8,
         version = version + 1, updated_at = now()
       WHERE id = $1 AND state = 'importing' RETURNING *`,
      [i.id, i.format, i.sizeBytes, i.virtualSizeBytes, i.storagePath, JSON.stringify(i.metadata), i.expiresAt, i.digest],
    ))[0];
  }

  /** Drops an import's reservation (the import failed or was cancelled); a ready image is left alone. */
  async deleteImporting(id: string): Promise<ImageRow | undefined> {
    return (await rows<ImageRow>(this.ds, `DELETE FROM images WHERE id = $1 AND state = 'importing' RETURNING *`, [id]))[0];
  }

  /** An image by id in any project and state (operation handlers). */
  async getById(id: string, db: Db = this.ds): Promise<ImageRow | undefined> {
    return (await rows<ImageRow>(db, `SELECT * FROM images WHERE id = $1`, [id]))[0];
  }

  /** An image by id in any project, locked for the rest of the transaction (ready ones only). */
  async lockById(tx: Db, id: string): Promise<ImageRow | undefined> {
    return (await rows<ImageRow>(tx, `SELECT * FROM images WHERE id = $1 AND state = 'ready' FOR UPDATE`, [id]))[0];
  }

  /** Records the per-block hashes of an image's file and the state of the file they describe. */
  async saveDigest(tx: Db, imageId: string, d: { blocks: Buffer }, blockBytes: number, fileBytes: number, mtimeMs: number): Promise<void> {
    await tx.query(
      `INSERT INTO image_digests (image_id, block_bytes, blocks, file_bytes, file_mtime_ms) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (image_id) DO UPDATE SET block_bytes = EXCLUDED.block_bytes, blocks = EXCLUDED.blocks, file_bytes = EXCLUDED.file_bytes,
         file_mtime_ms = EXCLUDED.file_mtime_ms, updated_at = now()`,
      [imageId, blockBytes, d.blocks, fileBytes, mtimeMs],
    );
  }

  /** The per-block hashes of an image's file, if recorded. */
  async getDigest(db: Db, imageId: string): Promise<ImageDigestRow | undefined> {
    return (await rows<ImageDigestRow>(db, `SELECT * FROM image_digests WHERE image_id = $1`, [imageId]))[0];
  }

  /** Sets an image's digest (after it was recomputed); does not bump the version (the content did not change). */
  async setDigest(tx: Db, id: string, digest: string): Promise<void> {
    await tx.query(`UPDATE images SET digest = $2 WHERE id = $1`, [id, digest]);
  }

  /** True when the project already has an image with this name. */
  async nameTaken(projectId: string, name: string): Promise<boolean> {
    return (await rows(this.ds, `SELECT 1 FROM images WHERE project_id = $1 AND name = $2`, [projectId, name])).length > 0;
  }

  /** An image in a project (ready, or being imported). */
  async get(projectId: string, id: string, db: Db = this.ds): Promise<ImageRow | undefined> {
    return (await rows<ImageRow>(db, `SELECT * FROM images WHERE id = $1 AND project_id = $2 AND state IN ('ready', 'importing')`, [id, projectId]))[0];
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

  /** Replaces the indexed metadata (and the file's new size and digest), bumping the version. */
  async updateMetadata(tx: Db, id: string, metadata: object, expiresAt: string | null, sizeBytes: number, digest: string): Promise<ImageRow> {
    return (await rows<ImageRow>(tx,
      `UPDATE images SET metadata = $2, expires_at = $3, size_bytes = $4, digest = $5, version = version + 1, updated_at = now() WHERE id = $1 RETURNING *`,
      [id, JSON.stringify(metadata), expiresAt, sizeBytes, digest],
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
