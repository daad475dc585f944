import { Inject, Injectable, OnModuleInit } from '@nestjs/common';
import {
  CancelledError,
  FailedPreconditionError,
  Principal,
  UnavailableError,
  ValidationError,
  dnsLabelProblem,
  requireRole,
  storeFilePath,
  uuidv7,
} from '@hyperplane/domain';
import { DIGEST_BLOCK_BYTES, ImageMetadata } from '@hyperplane/disk-formats';
import { DataSource } from 'typeorm';
import { Config, CONFIG } from '../config';
import { DATA_SOURCE } from '../common/tokens';
import { MutationOptions, TransactionRunner } from '../common/transactions';
import { inTransaction } from '../database/database';
import { EventBus } from '../events/event-bus';
import { NodeRepository } from '../nodes/node.repository';
import { nodeState } from '../nodes/nodes.service';
import { OperationQueueRepository } from '../operations/operation-queue.repository';
import { OperationRepository, OperationRow } from '../operations/operation.repository';
import { OperationContext, OperationRunner } from '../operations/operation-runner';
import { OperationView, OperationsService, operationView } from '../operations/operations.service';
import { TransfersService } from '../transfers/transfers.service';
import { ImageIntake } from './image-intake';
import { ImageRepository, ImageRow } from './image.repository';
import { ImageStore } from './image-store';
import { ImageView, imageView } from './image-view';

/** What `importFromNode` registers. */
export interface ImportFromNodeInput {
  /** The new image's name (a DNS label, free in the project). */
  name: string;
  /** The node holding the file: id or name. */
  nodeId: string;
  /** The file, relative to the node's image store or absolute inside it. */
  path: string;
  /** Fields to set over the metadata the file holds (top-level fields replaced; the history is kept). */
  metadataPatch?: Partial<ImageMetadata>;
  /** Who asked, for the history (`token:<id>`, or a component). Default `control-plane`. */
  by?: string;
  /** Also accept files under the store's `staging/` dir (files a node produced, such as exports). */
  allowStaging?: boolean;
  /** Have the node remove its file once the control plane has it (staging files). */
  removeSource?: boolean;
}

/** The answer to an import request: the image (state `importing`) and the operation that brings it in. */
export interface ImportStarted {
  image: ImageView;
  operation: OperationView;
}

const KNOWN = new Set(['name', 'node', 'path']);
const mib = (b: number) => (b / 2 ** 20).toFixed(1);

/**
 * Images imported from a node's image store (API.md: `POST /v1/images {"name","node","path"}`):
 * the node sends the file over the agent port (TransfersService, SendFile), then it goes through
 * the same intake as an upload and is registered with its embedded metadata indexed. The name is
 * reserved (a row in state `importing`) for the duration; a failed or cancelled import drops the
 * reservation and the received file, so nothing is left half-registered.
 */
@Injectable()
export class ImageImports implements OnModuleInit {
  constructor(
    private readonly images: ImageRepository,
    private readonly store: ImageStore,
    private readonly intake: ImageIntake,
    private readonly nodes: NodeRepository,
    private readonly transfers: TransfersService,
    private readonly runner: OperationRunner,
    private readonly ops: OperationRepository,
    private readonly queue: OperationQueueRepository,
    private readonly operations: OperationsService,
    private readonly events: EventBus,
    private readonly tx: TransactionRunner,
    @Inject(DATA_SOURCE) private readonly ds: DataSource,
    @Inject(CONFIG) private readonly config: Config,
  ) {}

  onModuleInit(): void {
    this.runner.register('image.import', (op, ctx) => this.handleImport(op, ctx));
  }

  /** Validates an import request, reserves the name and starts the operation (202). */
  async start(principal: Principal, projectId: string, input: unknown, opts: MutationOptions = {}): Promise<ImportStarted> {
    requireRole(principal, 'operator', 'import images');
    if (typeof input !== 'object' || input === null || Array.isArray(input)) throw ValidationError.field('body', 'must be {"name", "node", "path"}');
    const body = input as Record<string, unknown>;
    for (const k of Object.keys(body)) if (!KNOWN.has(k)) throw ValidationError.field(k, 'is not a field of an import (name, node, path)');
    const name = body.name;
    if (typeof name !== 'string' || name === '') throw ValidationError.field('name', 'is required');
    const problem = dnsLabelProblem(name);
    if (problem) throw ValidationError.field('name', `${problem} (got ${JSON.stringify(name)})`);
    if (typeof body.node !== 'string' || body.node === '') throw ValidationError.field('node', 'is required: the id or name of the node whose store holds the file');
    const node = await this.nodes.findByIdOrName(body.node);
    if (!node) throw ValidationError.field('node', `node '${body.node}' does not exist`);
    const path = body.path;
    storeFilePath(node.image_store_dir ?? '', path);
    if (nodeState(node) === 'unreachable') throw new FailedPreconditionError(`cannot import from node ${node.name}: it is unreachable`);
    const by = `token:${principal.tokenId}`;
    return this.tx.run(
      { scope: `project:${projectId}`, name: 'images.import', input: { name, node: node.id, path }, key: opts.idempotencyKey },
      async (db) => {
        const row = await this.images.insertImporting(db, { id: uuidv7(), projectId, name });
        const op = await this.ops.insert(db, { id: uuidv7(), projectId, kind: 'image.import', targetType: 'image', targetId: row.id, params: { nodeId: node.id, path, by }, requestId: opts.requestId });
        return { image: imageView(row), operation: operationView(op) };
      },
      async (r) => {
        await this.queue.enqueue(r.operation.id, r.operation.kind).catch(() => undefined); // the sweep re-queues it
        await this.events.publish({ type: 'image.created', resourceType: 'image', resourceId: r.image.id, projectId, data: r.image });
        await this.operations.publishView(r.operation);
      },
    );
  }

  /** image.import: brings the file in; on failure or cancel, drops the reservation. Idempotent: a re-run starts the transfer over. */
  async handleImport(op: OperationRow, ctx: OperationContext): Promise<void> {
    const row = await this.images.getById(op.target_id);
    if (!row) throw new CancelledError(`image ${op.target_id} is gone`);
    if (row.state === 'ready') return;
    const p = op.params as { nodeId?: string; path?: string; by?: string };
    try {
      await this.bringIn(row, { name: row.name, nodeId: String(p.nodeId ?? ''), path: String(p.path ?? ''), by: p.by }, ctx);
    } catch (e) {
      await this.drop(row);
      throw e;
    }
  }

  /**
   * For operation handlers (snapshot export, say): reserves `input.name` in the project, brings the
   * file in from the node and registers it, reporting progress on `ctx`. All or nothing: on any
   * failure (AlreadyExistsError for a taken name, the node's refusal of the path, the intake's
   * rejection) nothing stays registered.
   */
  async importFromNode(projectId: string, input: ImportFromNodeInput, ctx: OperationContext): Promise<ImageView> {
    const problem = dnsLabelProblem(input.name);
    if (problem) throw ValidationError.field('name', `${problem} (got ${JSON.stringify(input.name)})`);
    const row = await inTransaction(this.ds, (db) => this.images.insertImporting(db, { id: uuidv7(), projectId, name: input.name }));
    try {
      return await this.bringIn(row, input, ctx);
    } catch (e) {
      await this.drop(row);
      throw e;
    }
  }

  /** Receives the file into a temporary file of the store, checks it, and turns the reserved row into a ready image. */
  private async bringIn(row: ImageRow, input: ImportFromNodeInput, ctx: OperationContext): Promise<ImageView> {
    const node = await this.nodes.findByIdOrName(input.nodeId);
    if (!node) throw ValidationError.field('node', `node '${input.nodeId}' does not exist`);
    storeFilePath(node.image_store_dir ?? '', input.path);
    if (nodeState(node) === 'unreachable') throw new UnavailableError(`node ${node.name} is unreachable`);
    const tmp = await this.store.newTempPath();
    let finalPath: string | undefined;
    try {
      await ctx.progress('receiving', 5);
      const got = await this.transfers.run({
        direction: 'from-node',
        nodeId: node.id,
        path: tmp,
        maxBytes: this.config.maxImageBytes,
        command: (t) => ({ imageSend: { transferId: t.id, token: t.token, path: input.path, allowStaging: Boolean(input.allowStaging), removeAfter: Boolean(input.removeSource) } }),
        signal: ctx.signal,
        onProgress: (bytes, total) => ctx.progress(total ? `receiving ${mib(bytes)} of ${mib(total)} MiB` : `receiving ${mib(bytes)} MiB`, 5 + Math.floor(55 * (total ? bytes / total : 0))),
      });
      const bytes = Number(got.transfer.size_bytes ?? got.transfer.bytes_done);
      await ctx.progress('checking', 60);
      const info = await this.intake.check(tmp, bytes);
      const stamped = await this.intake.stampCreated(tmp, info, { bytes }, { by: input.by ?? 'control-plane', node: node.name, how: 'import' }, input.metadataPatch);
      if (ctx.signal.aborted) throw new CancelledError('cancelled');
      await ctx.progress('registering', 90);
      const ready = await inTransaction(this.ds, async (db) => {
        const done = await this.images.completeImport(db, {
          id: row.id, projectId: row.project_id, name: row.name, format: info.format, sizeBytes: stamped.sizeBytes, virtualSizeBytes: info.virtualSizeBytes,
          storagePath: this.store.pathOf(row.id, info.format), metadata: stamped.metadata, expiresAt: stamped.metadata.expiresAt ?? null, digest: stamped.digest,
        });
        if (!done) throw new CancelledError(`image ${row.name} is no longer being imported`);
        await this.images.saveDigest(db, row.id, { blocks: stamped.blocks }, DIGEST_BLOCK_BYTES, stamped.sizeBytes, stamped.mtimeMs);
        finalPath = await this.store.commit(tmp, row.id, info.format);
        return done;
      });
      const view = imageView(ready);
      await this.events.publish({ type: 'image.updated', resourceType: 'image', resourceId: view.id, projectId: view.projectId, data: view });
      return view;
    } catch (e) {
      await this.store.remove(tmp);
      if (finalPath) await this.store.remove(finalPath); // the transaction did not commit
      throw e;
    }
  }

  /** Drops an import's reservation (nothing else of it exists by then). */
  private async drop(row: ImageRow): Promise<void> {
    const gone = await this.images.deleteImporting(row.id);
    if (gone) await this.events.publish({ type: 'image.deleted', resourceType: 'image', resourceId: gone.id, projectId: gone.project_id, data: imageView(gone) });
  }
}
