import { Inject, Injectable, OnModuleInit } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { DATA_SOURCE } from '../common/tokens';
import { AlreadyExistsError, CancelledError, InternalError, Principal } from '@hyperplane/domain';
import type { ImageMetadata } from '@hyperplane/disk-formats';
import { AgentSessions } from '../agents/agent-sessions';
import { agentFailure } from '../agents/agent-errors';
import { MutationOptions } from '../common/transactions';
import { ImageRepository } from '../images/image.repository';
import { ImagesService } from '../images/images.service';
import { PartitionImages } from '../images/partition-images';
import { OperationContext, OperationRunner } from '../operations/operation-runner';
import { OperationRow } from '../operations/operation.repository';
import { PartitionRepository } from '../partitions/partition.repository';
import { PartitionsService } from '../partitions/partitions.service';
import { SnapshotRepository } from './snapshot.repository';
import { snapshotView } from './snapshot-view';
import { SnapshotOperationView, SnapshotsService } from './snapshots.service';
import { ExportSnapshotInput } from './snapshots.dto';

/** Longest the node may take to write the snapshot out as an image (the whole disk is read). */
const EXPORT_TIMEOUT_MS = 30 * 60_000;

/**
 * Exporting a snapshot as a new image of the project's library: the node writes the snapshot's
 * disk as a standalone qcow2 (its backing image flattened in) into its store's staging area, the
 * control plane imports it like any image (hostile-image intake, digest, index), with the metadata
 * of the image the partition was created from, a description naming the snapshot, and an
 * `exported` entry in both images' history. All or nothing: a failure leaves no image and no
 * file on the node.
 */
@Injectable()
export class SnapshotExports implements OnModuleInit {
  constructor(
    private readonly partitionsService: PartitionsService,
    private readonly partitions: PartitionRepository,
    private readonly snapshots: SnapshotRepository,
    private readonly snapshotsService: SnapshotsService,
    private readonly images: ImageRepository,
    private readonly imagesService: ImagesService,
    private readonly partitionImages: PartitionImages,
    private readonly sessions: AgentSessions,
    private readonly runner: OperationRunner,
    @Inject(DATA_SOURCE) private readonly ds: DataSource,
  ) {}

  onModuleInit(): void {
    this.runner.register('snapshot.export', (op, ctx) => this.handleExport(op, ctx));
  }

  /** Starts the export (202): the image appears in the library under `imageName` once the operation succeeded. */
  async export(principal: Principal, projectId: string, partitionId: string, sid: string, input: ExportSnapshotInput, opts: MutationOptions = {}): Promise<SnapshotOperationView> {
    const r = await this.partitionsService.act(principal, projectId, partitionId, 'export snapshots of', 'snapshot.export', {}, { ...opts, ifMatch: undefined }, async (db, row) => {
      const snap = await this.snapshotsService.lockReady(db, row, sid, 'export');
      if (await this.images.getByName(db, projectId, input.imageName)) throw new AlreadyExistsError('image', input.imageName);
      return { params: { snapshotId: snap.id, imageName: input.imageName }, extra: snapshotView(snap, row.current_snapshot_id) };
    });
    return { snapshot: r.extra!, partition: r.partition, operation: r.operation };
  }

  /** snapshot.export: the node writes the file, then the import registers it. */
  async handleExport(op: OperationRow, ctx: OperationContext): Promise<void> {
    const partition = await this.partitions.getById(op.target_id);
    if (!partition) throw new CancelledError(`partition ${op.target_id} no longer exists`);
    if (!partition.node_id) throw new InternalError(`partition ${partition.name} has no node`);
    const snap = await this.snapshots.get(partition.id, String(op.params.snapshotId));
    if (!snap) throw new CancelledError(`snapshot ${String(op.params.snapshotId)} no longer exists`);
    const name = String(op.params.imageName);
    const existing = await this.images.getByName(this.ds.manager, partition.project_id, name);
    if (existing?.state === 'ready' && (existing.metadata as Partial<ImageMetadata>).history?.some((h) => h.by === `operation:${op.id}`)) return; // done before a crash
    await ctx.progress('writing the snapshot out on the node', 5);
    const file = `export-${op.id}-${op.attempts}.qcow2`;
    const r = await this.sessions.command(partition.node_id, { snapshotExport: { partitionId: partition.id, tag: snap.id, fileName: file } }, EXPORT_TIMEOUT_MS);
    if (!r.ok) throw agentFailure(r, `export of snapshot ${snap.name} of partition ${partition.name}`);
    const out = JSON.parse(r.payload || '{}') as { path?: string };
    const base = partition.image_id ? await this.images.getById(partition.image_id) : undefined;
    const { history: _history, ...inherited } = (base?.metadata ?? {}) as Partial<ImageMetadata>;
    const description = `snapshot ${snap.name} of partition ${partition.name}${base ? ` (from image ${base.name})` : ` (from node image ${partition.image})`}`;
    await this.imagesService.importFromNode(
      partition.project_id,
      {
        name,
        nodeId: partition.node_id,
        path: out.path ?? '',
        metadataPatch: { ...inherited, description, savedStateRef: `snapshot:${snap.id}` },
        by: `operation:${op.id}`,
        allowStaging: true,
        removeSource: true,
      },
      ctx,
    );
    await this.partitionImages.record(op, partition, 'exported', { details: { snapshot: snap.name, image: name } });
  }
}
