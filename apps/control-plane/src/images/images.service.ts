import { Readable } from 'node:stream';
import { Injectable } from '@nestjs/common';
import {
  AlreadyExistsError,
  FailedPreconditionError,
  NotFoundError,
  Principal,
  UUID_RE,
  ValidationError,
  dnsLabelProblem,
  requireRole,
  uuidv7,
} from '@hyperplane/domain';
import { DIGEST_BLOCK_BYTES, ImageMetadata, validateMetadata } from '@hyperplane/disk-formats';
import { diskFormatDomainError } from './image-errors';
import { checkIfMatch } from '../common/etag';
import { Page, parsePage, toPage } from '../common/pagination';
import { MutationOptions, TransactionRunner } from '../common/transactions';
import { parseLabelSelectors } from '../common/validation';
import { EventBus } from '../events/event-bus';
import { NodeRepository } from '../nodes/node.repository';
import { ImageRepository, ImageRow, ImageSearch, MetadataFilter, NodeFit } from './image.repository';
import { ImageStore } from './image-store';
import { ImageView, imageView } from './image-view';
import { IMAGE_HISTORY_LIMIT, withHistoryEntry } from './image-history';
import { ImageWriter } from './image-writer';
import { ImageIntake } from './image-intake';
import { ImageImports, ImportFromNodeInput, ImportStarted } from './image-imports';
import { OperationContext } from '../operations/operation-runner';

/** Query parameters a search accepts (REST query string or the gRPC request's fields). */
export interface ImageSearchQuery {
  tag?: unknown;
  label?: unknown;
  text?: unknown;
  filter?: unknown;
  compatibleWith?: unknown;
  includeExpired?: unknown;
  pageSize?: unknown;
  pageToken?: unknown;
}

const SEARCH_KEYS = new Set(['tag', 'label', 'text', 'filter', 'compatibleWith', 'includeExpired', 'pageSize', 'pageToken', 'project']);
const FILTER_RE = /^\s*([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)\s*(<=|>=|!=|=|<|>)\s*(.*?)\s*$/;
const MAX_TEXT = 500;
const MAX_CRITERIA = 32;

/** A list of strings from a repeatable parameter. */
function many(name: string, raw: unknown): string[] {
  const list = raw === undefined ? [] : Array.isArray(raw) ? raw : [raw];
  if (list.length > MAX_CRITERIA) throw ValidationError.field(name, `at most ${MAX_CRITERIA} values`);
  for (const v of list) if (typeof v !== 'string' || v === '') throw ValidationError.field(name, 'must be a non-empty string');
  return list as string[];
}

/** Parses `PATH OP VALUE` (`hardware.minMemoryMiB>=2048`). */
export function parseFilter(raw: string): MetadataFilter {
  const m = FILTER_RE.exec(raw);
  if (!m) throw ValidationError.field('filter', `must be PATH OP VALUE with PATH a dotted metadata field and OP one of = != < <= > >= (got ${JSON.stringify(raw)})`);
  const [, path, op, value] = m as unknown as [string, string, MetadataFilter['op'], string];
  if (op !== '=' && op !== '!=' && (value === '' || !Number.isFinite(Number(value)))) {
    throw ValidationError.field('filter', `${path} ${op} needs a number (got ${JSON.stringify(value)})`);
  }
  return { path: path.split('.'), op, value };
}

export { diskFormatDomainError } from './image-errors';

/**
 * The image library: intake of uploaded files (hostile until proven otherwise), search over the
 * indexed metadata, metadata edits written into the file itself, and the policy partitions obey.
 */
@Injectable()
export class ImagesService {
  constructor(
    private readonly images: ImageRepository,
    private readonly store: ImageStore,
    private readonly nodes: NodeRepository,
    private readonly events: EventBus,
    private readonly tx: TransactionRunner,
    private readonly writer: ImageWriter,
    private readonly intake: ImageIntake,
    private readonly imports: ImageImports,
  ) {}

  /**
   * Registers an uploaded image: streams it to a temporary file, detects and pins the format,
   * rejects hostile images (backing or data files, oversize, corrupt or truncated headers, what
   * `qemu-img check` finds), then moves it into place and records it in one transaction. A
   * failure at any step leaves no file and no row.
   */
  async upload(principal: Principal, projectId: string, name: unknown, body: Readable | undefined, opts: MutationOptions = {}): Promise<ImageView> {
    requireRole(principal, 'operator', 'upload images');
    if (typeof name !== 'string' || name === '') throw ValidationError.field('name', 'is required (?name=NAME)');
    const problem = dnsLabelProblem(name);
    if (problem) throw ValidationError.field('name', `${problem} (got ${JSON.stringify(name)})`);
    if (!body || typeof (body as Readable).pipe !== 'function') throw ValidationError.field('body', 'must be the image file, sent as application/octet-stream');
    if (!opts.idempotencyKey && (await this.images.nameTaken(projectId, name))) {
      body.resume();
      throw new AlreadyExistsError('image', name);
    }
    const { path: tmp, bytes, digest: received } = await this.store.receive(body);
    let finalPath: string | undefined;
    try {
      const info = await this.intake.check(tmp, bytes);
      const stamped = await this.intake.stampCreated(tmp, info, { bytes, blocks: received.blocks }, { by: `token:${principal.tokenId}`, how: 'upload' });
      const id = uuidv7();
      const metadata = stamped.metadata;
      const view = await this.tx.run(
        { scope: `project:${projectId}`, name: 'images.upload', input: { name, bytes }, key: opts.idempotencyKey },
        async (db) => {
          const row = await this.images.insert(db, {
            id, projectId, name, format: info.format, sizeBytes: stamped.sizeBytes, virtualSizeBytes: info.virtualSizeBytes,
            storagePath: this.store.pathOf(id, info.format), metadata, expiresAt: metadata.expiresAt ?? null, digest: stamped.digest,
          });
          await this.images.saveDigest(db, id, { blocks: stamped.blocks }, DIGEST_BLOCK_BYTES, stamped.sizeBytes, stamped.mtimeMs);
          finalPath = await this.store.commit(tmp, id, info.format);
          return imageView(row);
        },
        async (v) => this.events.publish({ type: 'image.created', resourceType: 'image', resourceId: v.id, projectId, data: v }),
      );
      if (view.id !== id) await this.store.remove(tmp); // an idempotent replay: the first upload stands
      return view;
    } catch (e) {
      await this.store.remove(tmp);
      if (finalPath) await this.store.remove(finalPath); // the transaction did not commit
      throw e;
    }
  }

  /**
   * Starts importing a file already in a node's image store (`{"name","node","path"}`): the name is
   * reserved and an operation moves the file and registers it (see ImageImports).
   */
  startImport(principal: Principal, projectId: string, input: unknown, opts: MutationOptions = {}): Promise<ImportStarted> {
    return this.imports.start(principal, projectId, input, opts);
  }

  /**
   * For other operation handlers (a snapshot export, say): registers the file `path` of node
   * `nodeId`'s store as image `name` of the project, through the same intake as an upload, within
   * the caller's operation. All or nothing; see ImageImports.importFromNode.
   */
  importFromNode(projectId: string, input: ImportFromNodeInput, ctx: OperationContext): Promise<ImageView> {
    return this.imports.importFromNode(projectId, input, ctx);
  }

  /** An image of the project. */
  async get(principal: Principal, projectId: string, id: string): Promise<ImageView> {
    requireRole(principal, 'viewer', 'read images');
    return imageView(await this.find(projectId, id));
  }

  /** Searches the project's images (API.md, Images: upload and search); keyset pages by id. */
  async search(principal: Principal, projectId: string, q: ImageSearchQuery & Record<string, unknown>): Promise<Page<ImageView>> {
    requireRole(principal, 'viewer', 'list images');
    for (const k of Object.keys(q)) if (!SEARCH_KEYS.has(k)) throw ValidationError.field(k, `is not a search parameter (use tag, label, text, filter, compatibleWith, includeExpired, pageSize, pageToken)`);
    const page = parsePage(q.pageSize, q.pageToken);
    const s: ImageSearch = {};
    const tags = many('tag', q.tag);
    if (tags.length) s.tags = tags;
    const labels = parseLabelSelectors(q.label);
    if (Object.keys(labels).length) s.labels = labels;
    if (q.text !== undefined && q.text !== '') {
      if (typeof q.text !== 'string' || q.text.length > MAX_TEXT) throw ValidationError.field('text', `must be a string of at most ${MAX_TEXT} characters`);
      s.text = q.text;
    }
    const filters = many('filter', q.filter).map(parseFilter);
    if (filters.length) s.filters = filters;
    if (q.compatibleWith !== undefined && q.compatibleWith !== '') s.compatibleWith = await this.nodeFit(String(q.compatibleWith));
    if (q.includeExpired !== undefined && q.includeExpired !== '' && q.includeExpired !== false) {
      if (q.includeExpired !== 'true' && q.includeExpired !== 'false' && q.includeExpired !== true) throw ValidationError.field('includeExpired', 'must be true or false');
      s.includeExpired = q.includeExpired === true || q.includeExpired === 'true';
    }
    const now = Date.now();
    return toPage(await this.images.search(projectId, page, s), page, (r) => imageView(r, now));
  }

  /** The metadata stored in the image file (read from the file, not the index). */
  async getMetadata(principal: Principal, projectId: string, id: string): Promise<{ metadata: ImageMetadata | Record<string, never>; etag: string }> {
    requireRole(principal, 'viewer', 'read image metadata');
    const row = await this.find(projectId, id, true);
    const metadata = row.format === 'raw' ? null : await this.store.readMetadata(row.storage_path).catch((e) => { throw diskFormatDomainError(e, `image ${row.name}`); });
    return { metadata: metadata ?? {}, etag: imageView(row).etag };
  }

  /**
   * Replaces the image's metadata: validates it, writes it into the file (crash-safely, with the
   * row locked so writers of one file take turns), and re-indexes it. Honours If-Match.
   */
  async putMetadata(principal: Principal, projectId: string, id: string, input: unknown, opts: MutationOptions = {}): Promise<ImageView> {
    requireRole(principal, 'operator', 'edit image metadata');
    const valid = validateMetadata(input);
    if (!valid.ok) throw new ValidationError(valid.errors.map((f) => ({ field: f.field ? `metadata.${f.field}` : 'metadata', message: f.message })));
    const view = await this.tx.run({ scope: `project:${projectId}`, name: 'images.metadata', input: { id, input } }, async (db) => {
      if (!UUID_RE.test(id)) throw new NotFoundError('image', id);
      const row = await this.images.lock(db, projectId, id);
      if (!row) {
        if ((await this.images.get(projectId, id, db))?.state === 'importing') throw new FailedPreconditionError(`image ${id} is being imported`);
        throw new NotFoundError('image', id);
      }
      checkIfMatch('image', id, opts.ifMatch, row.version);
      if (row.format === 'raw') throw new FailedPreconditionError(`image ${row.name} is raw: raw images cannot hold metadata`);
      // The history is the control plane's record of what was done: a PUT keeps the file's, and adds to it.
      const current = await this.store.readMetadata(row.storage_path).catch((e) => { throw diskFormatDomainError(e, `image ${row.name}`); });
      const { history: _ignored, ...doc } = valid.value;
      const next = withHistoryEntry({ ...doc, ...(current?.history ? { history: current.history } : {}) }, { at: new Date().toISOString(), operation: 'metadata-updated', by: `token:${principal.tokenId}` }, IMAGE_HISTORY_LIMIT)!;
      return imageView(await this.writer.writeMetadata(db, row, next).catch((e) => { throw diskFormatDomainError(e, `image ${row.name}`); }));
    });
    await this.events.publish({ type: 'image.updated', resourceType: 'image', resourceId: view.id, projectId, data: view });
    return view;
  }

  /** Deletes an image no partition uses: the record, then the file. Honours If-Match. */
  async delete(principal: Principal, projectId: string, id: string, opts: MutationOptions = {}): Promise<void> {
    requireRole(principal, 'operator', 'delete images');
    const row = await this.tx.run({ scope: `project:${projectId}`, name: 'images.delete', input: { id } }, async (db) => {
      if (!UUID_RE.test(id)) throw new NotFoundError('image', id);
      const r = await this.images.lock(db, projectId, id);
      if (!r) {
        if ((await this.images.get(projectId, id, db))?.state === 'importing') throw new FailedPreconditionError(`cannot delete image ${id}: it is being imported; cancel its operation instead`);
        throw new NotFoundError('image', id);
      }
      checkIfMatch('image', id, opts.ifMatch, r.version);
      const using = await this.images.partitionsUsing(db, projectId, r.name);
      if (using > 0) throw new FailedPreconditionError(`cannot delete image ${r.name}: ${using} partition${using === 1 ? '' : 's'} use${using === 1 ? 's' : ''} it`);
      await this.images.delete(db, id);
      return r;
    });
    await this.store.remove(row.storage_path);
    await this.events.publish({ type: 'image.deleted', resourceType: 'image', resourceId: row.id, projectId, data: imageView(row) });
  }

  /**
   * The image file for download (metadata inside), as it is at the request: the row lock that
   * serialises writers is held while a snapshot link pins the content, so a history append during
   * the download cannot tear it.
   */
  async file(principal: Principal, projectId: string, id: string) {
    requireRole(principal, 'viewer', 'download images');
    const row = await this.find(projectId, id, true);
    return this.tx.run({ scope: `project:${projectId}`, name: 'images.file', input: { id } }, async (db) => {
      const locked = await this.images.lock(db, projectId, row.id);
      if (!locked) throw new NotFoundError('image', id);
      return { row: locked, ...(await this.store.open(locked.storage_path)) };
    });
  }

  /** An image by id within the project (with `ready`, only a ready one: not one being imported); anything else is 404. */
  async find(projectId: string, id: string, ready = false): Promise<ImageRow> {
    if (!UUID_RE.test(id)) throw new NotFoundError('image', id);
    const row = await this.images.get(projectId, id);
    if (!row) throw new NotFoundError('image', id);
    if (ready && row.state !== 'ready') throw new FailedPreconditionError(`image ${row.name} is being imported`);
    return row;
  }

  /** A node's capacity and features for `compatibleWith`. */
  private async nodeFit(ref: string): Promise<NodeFit> {
    const n = await this.nodes.findByIdOrName(ref);
    if (!n) throw ValidationError.field('compatibleWith', `node '${ref}' does not exist`);
    const flags = new Set<string>();
    for (const f of n.cpu_flags) {
      flags.add(f);
      flags.add(f.replace(/_/g, '.'));
      flags.add(f.replace(/_/g, '-'));
    }
    return { vcpus: n.vcpus, memoryMiB: Number(n.memory_mib), cpuFlags: [...flags], machineTypes: n.machine_types, kvm: n.accelerator === 'kvm' };
  }
}
