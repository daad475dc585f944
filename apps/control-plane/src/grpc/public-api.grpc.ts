import * as grpc from '@grpc/grpc-js';
import { Inject, Injectable } from '@nestjs/common';
import { Logger } from 'pino';
import { LOGGER } from '../common/tokens';
import { Principal, ValidationError } from '@hyperplane/domain';
import { v1 } from '@hyperplane/proto';
import { parseIfMatch } from '../common/etag';
import { MutationOptions } from '../common/transactions';
import { validateInput } from '../common/validation';
import { EventsService } from '../events/events.service';
import { DrainNodeInput } from '../nodes/nodes.dto';
import { NodesService } from '../nodes/nodes.service';
import { OperationsService } from '../operations/operations.service';
import { CreatePartitionInput, StopPartitionInput, UpdatePartitionInput } from '../partitions/partitions.dto';
import { PartitionsService } from '../partitions/partitions.service';
import { ConsoleService } from '../partitions/console.service';
import { ConsoleSession } from '../agents/console-sessions';
import { AuthService } from '../projects/auth.service';
import { CreateProjectInput, CreateTokenInput, UpdateProjectInput } from '../projects/projects.dto';
import { ProjectsService } from '../projects/projects.service';
import { toGrpcError } from './grpc-errors';
import { eventMsg, imageMsg, nodeMsg, nodeStoreImageMsg, operationMsg, partitionMsg, projectMsg, snapshotMsg, tokenMsg } from './grpc-mappers';
import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import { ImagesService } from '../images/images.service';
import { NodeImageInventory } from '../images/node-image-inventory';
import { MigratePartitionInput } from '../migration/migration.dto';
import { MigrationService } from '../migration/migration.service';
import { CreateSnapshotInput, ExportSnapshotInput } from '../snapshots/snapshots.dto';
import { SnapshotExports } from '../snapshots/snapshot-exports';
import { SnapshotOperationView, SnapshotsService } from '../snapshots/snapshots.service';

type Unary<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => void;

const opts = (idempotencyKey?: string, etag?: string): MutationOptions => {
  const ifMatch = parseIfMatch(etag);
  return { idempotencyKey: idempotencyKey || undefined, ifMatch: ifMatch === -1 ? undefined : ifMatch };
};
const pick = <T extends object>(o: T): Partial<T> => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;

/**
 * The gRPC door: parses each request into the same service call the REST door makes, with the
 * same validation (the DTO classes) and the same errors (mapped once, in grpc-errors.ts).
 */
@Injectable()
export class PublicGrpcApi {
  constructor(
    private readonly auth: AuthService,
    private readonly projects: ProjectsService,
    private readonly nodes: NodesService,
    private readonly partitions: PartitionsService,
    private readonly operations: OperationsService,
    private readonly events: EventsService,
    private readonly consoles: ConsoleService,
    private readonly images: ImagesService,
    private readonly nodeImages: NodeImageInventory,
    private readonly snapshots: SnapshotsService,
    private readonly snapshotExports: SnapshotExports,
    private readonly migration: MigrationService,
    @Inject(LOGGER) private readonly log: Logger,
  ) {}

  /** Wraps a handler: request id, authentication, error mapping. */
  private unary<Req, Res>(fn: (p: Principal, req: Req, md: grpc.Metadata, requestId: string) => Promise<Res>): Unary<Req, Res> {
    return (call, cb) => {
      const requestId = String(call.metadata.get('x-request-id')[0] ?? randomUUID());
      void (async () => {
        try {
          const principal = await this.auth.authenticate(String(call.metadata.get('authorization')[0] ?? '') || undefined);
          cb(null, await fn(principal, call.request, call.metadata, requestId));
        } catch (e) {
          const err = toGrpcError(e);
          if (err.code === grpc.status.INTERNAL) this.log.error({ err: e, requestId, method: call.getPath() }, 'gRPC call failed');
          cb(err);
        }
      })();
    };
  }

  private project(p: Principal, md: grpc.Metadata): Promise<string> {
    const requested = md.get('project')[0];
    return this.auth.projectScope(p, requested ? String(requested) : undefined);
  }

  private projectOrAll(p: Principal, md: grpc.Metadata): Promise<string | null> {
    const requested = md.get('project')[0];
    return this.auth.projectOrAll(p, requested ? String(requested) : undefined);
  }

  /** Implementations keyed by service name, for grpc.Server#addService. */
  services(): Record<string, grpc.UntypedServiceImplementation> {
    return {
      ProjectService: {
        CreateProject: this.unary<v1.CreateProjectRequest__Output, v1.Project>(async (p, r) =>
          projectMsg(await this.projects.create(p, validateInput(CreateProjectInput, pick({ name: r.name ?? '', description: r.description })), opts(r.requestId)))),
        ListProjects: this.unary<v1.ListProjectsRequest__Output, v1.ListProjectsResponse>(async (p, r) => {
          const page = await this.projects.list(p, r.pageSize, r.pageToken);
          return { items: page.items.map(projectMsg), nextPageToken: page.nextPageToken };
        }),
        GetProject: this.unary<v1.GetProjectRequest__Output, v1.Project>(async (p, r) => projectMsg(await this.projects.get(p, r.project ?? ''))),
        UpdateProject: this.unary<v1.UpdateProjectRequest__Output, v1.Project>(async (p, r) => {
          const quota = r.quota ? pick({ maxPartitions: r.quota.maxPartitions, maxVcpus: r.quota.maxVcpus, maxMemoryMiB: r.quota.maxMemoryMib }) : undefined;
          const input = validateInput(UpdateProjectInput, pick({ description: r.description, quota }));
          return projectMsg(await this.projects.update(p, r.project ?? '', input, opts(undefined, r.etag)));
        }),
        CreateToken: this.unary<v1.CreateTokenRequest__Output, v1.Token>(async (p, r) =>
          tokenMsg(await this.projects.createToken(p, r.project ?? '', validateInput(CreateTokenInput, pick({ role: r.role ?? '', description: r.description })), opts(r.requestId)))),
        ListTokens: this.unary<v1.ListTokensRequest__Output, v1.ListTokensResponse>(async (p, r) => {
          const page = await this.projects.listTokens(p, r.project ?? '', r.pageSize, r.pageToken);
          return { items: page.items.map(tokenMsg), nextPageToken: page.nextPageToken };
        }),
        DeleteToken: this.unary<v1.DeleteTokenRequest__Output, v1.DeleteTokenResponse>(async (p, r) => {
          await this.projects.deleteToken(p, r.project ?? '', r.tokenId ?? '');
          return {};
        }),
      },
      NodeService: {
        ListNodes: this.unary<v1.ListNodesRequest__Output, v1.ListNodesResponse>(async (p, r) => {
          const page = await this.nodes.list(p, { pageSize: r.pageSize, pageToken: r.pageToken, state: r.state });
          return { items: page.items.map(nodeMsg), nextPageToken: page.nextPageToken };
        }),
        GetNode: this.unary<v1.GetNodeRequest__Output, v1.Node>(async (p, r) => nodeMsg(await this.nodes.get(p, r.node ?? ''))),
        CordonNode: this.unary<v1.NodeActionRequest__Output, v1.Node>(async (p, r) => nodeMsg(await this.nodes.setCordoned(p, r.node ?? '', true))),
        UncordonNode: this.unary<v1.NodeActionRequest__Output, v1.Node>(async (p, r) => nodeMsg(await this.nodes.setCordoned(p, r.node ?? '', false))),
        DrainNode: this.unary<v1.NodeActionRequest__Output, v1.NodeOperation>(async (p, r, _md, rid) => {
          const out = await this.nodes.drain(p, r.node ?? '', validateInput(DrainNodeInput, pick({ mode: r.mode || undefined })), { ...opts(r.requestId), requestId: rid });
          return { node: nodeMsg(out.node), operation: operationMsg(out.operation) };
        }),
        ListNodeImages: this.unary<v1.GetNodeRequest__Output, v1.ListNodeImagesResponse>(async (p, r) => ({ items: (await this.nodeImages.list(p, r.node ?? '')).items.map(nodeStoreImageMsg) })),
      },
      PartitionService: {
        CreatePartition: this.unary<v1.CreatePartitionRequest__Output, v1.PartitionOperation>(async (p, r, md, rid) => {
          const input = validateInput(CreatePartitionInput, pick({
            name: r.name ?? '',
            vcpus: r.vcpus ?? 0,
            memoryMiB: r.memoryMib ?? 0,
            image: r.image ?? '',
            labels: r.labels,
            description: r.description,
            diskGiB: r.diskGib,
            count: r.count,
            placement: r.placement
              ? pick({
                  node: r.placement.node,
                  group: r.placement.group,
                  policy: r.placement.policy,
                  hard: r.placement.hard,
                  strategy: r.placement.strategy,
                  nodeSelector: r.placement.nodeSelector && Object.keys(r.placement.nodeSelector).length ? r.placement.nodeSelector : undefined,
                  accelerator: r.placement.accelerator,
                  cpuFeatures: r.placement.cpuFeatures?.length ? r.placement.cpuFeatures : undefined,
                  machineType: r.placement.machineType,
                })
              : undefined,
          }));
          const out = await this.partitions.create(p, await this.project(p, md), input, { ...opts(r.requestId), requestId: rid });
          if ('partitions' in out) return { partitions: out.partitions.map(partitionMsg), operations: out.operations.map(operationMsg) };
          return { partition: partitionMsg(out.partition), operation: operationMsg(out.operation) };
        }),
        GetPartition: this.unary<v1.GetPartitionRequest__Output, v1.Partition>(async (p, r, md) => partitionMsg(await this.partitions.get(p, await this.project(p, md), r.id ?? ''))),
        ListPartitions: this.unary<v1.ListPartitionsRequest__Output, v1.ListPartitionsResponse>(async (p, r, md) => {
          const page = await this.partitions.list(p, await this.project(p, md), { pageSize: r.pageSize, pageToken: r.pageToken, state: r.state, label: r.label, node: r.node });
          return { items: page.items.map(partitionMsg), nextPageToken: page.nextPageToken };
        }),
        UpdatePartition: this.unary<v1.UpdatePartitionRequest__Output, v1.Partition>(async (p, r, md) => {
          const hasLabels = r.labels && Object.keys(r.labels).length > 0;
          const input = validateInput(UpdatePartitionInput, pick({ labels: hasLabels || r.replaceLabels ? r.labels ?? {} : undefined, replaceLabels: r.replaceLabels || undefined, description: r.description }));
          return partitionMsg(await this.partitions.update(p, await this.project(p, md), r.id ?? '', input, opts(undefined, r.etag)));
        }),
        StartPartition: this.unary<v1.PartitionActionRequest__Output, v1.PartitionOperation>(async (p, r, md, rid) =>
          this.pair(await this.partitions.start(p, await this.project(p, md), r.id ?? '', { ...opts(r.requestId, r.etag), requestId: rid }))),
        StopPartition: this.unary<v1.StopPartitionRequest__Output, v1.PartitionOperation>(async (p, r, md, rid) => {
          const input = validateInput(StopPartitionInput, pick({ force: r.force }));
          return this.pair(await this.partitions.stop(p, await this.project(p, md), r.id ?? '', input, { ...opts(r.requestId, r.etag), requestId: rid }));
        }),
        RebootPartition: this.unary<v1.PartitionActionRequest__Output, v1.PartitionOperation>(async (p, r, md, rid) =>
          this.pair(await this.partitions.reboot(p, await this.project(p, md), r.id ?? '', { ...opts(r.requestId, r.etag), requestId: rid }))),
        DeletePartition: this.unary<v1.DeletePartitionRequest__Output, v1.PartitionOperation>(async (p, r, md, rid) =>
          this.pair(await this.partitions.delete(p, await this.project(p, md), r.id ?? '', { ...opts(r.requestId, r.etag), requestId: rid }))),
        AttachConsole: (call: grpc.ServerDuplexStream<v1.ConsoleInput__Output, v1.ConsoleChunk>) => this.attachConsole(call),
        GetConsole: this.unary<v1.GetConsoleRequest__Output, v1.ConsoleOutput>(async (p, r, md) => this.partitions.console(p, await this.project(p, md), r.id ?? '', r.tailBytes)),
      },
      ImageService: this.imageService(),
      SnapshotService: this.snapshotService(),
      MigrationService: {
        MigratePartition: this.unary<v1.MigratePartitionRequest__Output, v1.PartitionOperation>(async (p, r, md, rid) => {
          const input = validateInput(MigratePartitionInput, pick({
            targetNode: r.targetNode || undefined, live: r.live, storage: r.storage, maxDowntimeMs: r.maxDowntimeMs, bandwidthBytesPerSec: r.bandwidthBytesPerSec,
            autoConverge: r.autoConverge, postcopy: r.postcopy, postcopyAfterMs: r.postcopyAfterMs, discardSnapshots: r.discardSnapshots,
          }));
          return this.pair(await this.migration.migrate(p, await this.project(p, md), r.id ?? '', input, { ...opts(r.requestId, r.etag), requestId: rid }));
        }),
      },
      OperationService: {
        GetOperation: this.unary<v1.GetOperationRequest__Output, v1.Operation>(async (p, r, md) => operationMsg(await this.operations.get(p, await this.projectOrAll(p, md), r.id ?? ''))),
        ListOperations: this.unary<v1.ListOperationsRequest__Output, v1.ListOperationsResponse>(async (p, r, md) => {
          const page = await this.operations.list(p, await this.projectOrAll(p, md), { pageSize: r.pageSize, pageToken: r.pageToken, status: r.status, targetId: r.targetId });
          return { items: page.items.map(operationMsg), nextPageToken: page.nextPageToken };
        }),
        WaitOperation: this.unary<v1.WaitOperationRequest__Output, v1.Operation>(async (p, r, md) => operationMsg(await this.operations.wait(p, await this.projectOrAll(p, md), r.id ?? '', r.timeoutSeconds))),
        CancelOperation: this.unary<v1.CancelOperationRequest__Output, v1.Operation>(async (p, r, md) => operationMsg(await this.operations.cancel(p, await this.projectOrAll(p, md), r.id ?? ''))),
      },
      EventService: {
        Watch: (call: grpc.ServerWritableStream<v1.WatchRequest__Output, v1.Event>) => {
          void (async () => {
            try {
              const p = await this.auth.authenticate(String(call.metadata.get('authorization')[0] ?? '') || undefined);
              const requested = call.metadata.get('project')[0];
              const projectId = p.projectId || requested ? await this.project(p, call.metadata) : null;
              const filter = this.events.filterFor(p, projectId, call.request.types ?? []);
              const unsubscribe = this.events.watch(filter, (e) => call.write(eventMsg(e)));
              call.on('cancelled', unsubscribe);
              call.on('close', unsubscribe);
              call.on('error', unsubscribe);
              call.sendMetadata(new grpc.Metadata());
            } catch (e) {
              call.destroy(Object.assign(new Error((toGrpcError(e).details as string) ?? 'error'), toGrpcError(e)));
            }
          })();
        },
      },
    };
  }

  /** SnapshotService: the same service calls as /v1/partitions/{id}/snapshots. */
  private snapshotService(): grpc.UntypedServiceImplementation {
    const answer = (r: SnapshotOperationView): v1.SnapshotOperation => ({ snapshot: snapshotMsg(r.snapshot), operation: operationMsg(r.operation) });
    return {
      CreateSnapshot: this.unary<v1.CreateSnapshotRequest__Output, v1.SnapshotOperation>(async (p, r, md, rid) => {
        const input = validateInput(CreateSnapshotInput, pick({ name: r.name ?? '', description: r.description, memory: r.memory }));
        return answer(await this.snapshots.create(p, await this.project(p, md), r.partitionId ?? '', input, { ...opts(r.requestId), requestId: rid }));
      }),
      ListSnapshots: this.unary<v1.ListSnapshotsRequest__Output, v1.ListSnapshotsResponse>(async (p, r, md) => {
        const page = await this.snapshots.list(p, await this.project(p, md), r.partitionId ?? '', { pageSize: r.pageSize, pageToken: r.pageToken });
        return { items: page.items.map(snapshotMsg), nextPageToken: page.nextPageToken };
      }),
      GetSnapshot: this.unary<v1.SnapshotRequest__Output, v1.Snapshot>(async (p, r, md) => snapshotMsg(await this.snapshots.get(p, await this.project(p, md), r.partitionId ?? '', r.id ?? ''))),
      DeleteSnapshot: this.unary<v1.SnapshotActionRequest__Output, v1.SnapshotOperation>(async (p, r, md, rid) =>
        answer(await this.snapshots.delete(p, await this.project(p, md), r.partitionId ?? '', r.id ?? '', { ...opts(r.requestId, r.etag), requestId: rid }))),
      RevertSnapshot: this.unary<v1.SnapshotActionRequest__Output, v1.SnapshotOperation>(async (p, r, md, rid) =>
        answer(await this.snapshots.revert(p, await this.project(p, md), r.partitionId ?? '', r.id ?? '', { ...opts(r.requestId, r.etag), requestId: rid }))),
      ExportSnapshot: this.unary<v1.ExportSnapshotRequest__Output, v1.SnapshotOperation>(async (p, r, md, rid) => {
        const input = validateInput(ExportSnapshotInput, pick({ imageName: r.imageName ?? '' }));
        return answer(await this.snapshotExports.export(p, await this.project(p, md), r.partitionId ?? '', r.id ?? '', input, { ...opts(r.requestId), requestId: rid }));
      }),
    };
  }

  /** ImageService: the same service calls as /v1/images; metadata travels as its JSON text. */
  private imageService(): grpc.UntypedServiceImplementation {
    return {
      UploadImage: (call: grpc.ServerReadableStream<v1.UploadImageChunk__Output, v1.Image>, cb: grpc.sendUnaryData<v1.Image>) => this.uploadImage(call, cb),
      GetImage: this.unary<v1.GetImageRequest__Output, v1.Image>(async (p, r, md) => imageMsg(await this.images.get(p, await this.project(p, md), r.id ?? ''))),
      SearchImages: this.unary<v1.SearchImagesRequest__Output, v1.SearchImagesResponse>(async (p, r, md) => {
        const q = pick({
          tag: r.tag?.length ? r.tag : undefined, label: r.label?.length ? r.label : undefined, text: r.text || undefined, filter: r.filter?.length ? r.filter : undefined,
          compatibleWith: r.compatibleWith || undefined, includeExpired: r.includeExpired || undefined, pageSize: r.pageSize || undefined, pageToken: r.pageToken || undefined,
        });
        const page = await this.images.search(p, await this.project(p, md), q);
        return { items: page.items.map(imageMsg), nextPageToken: page.nextPageToken };
      }),
      DeleteImage: this.unary<v1.DeleteImageRequest__Output, v1.DeleteImageResponse>(async (p, r, md) => {
        await this.images.delete(p, await this.project(p, md), r.id ?? '', opts(undefined, r.etag));
        return {};
      }),
      GetImageMetadata: this.unary<v1.GetImageRequest__Output, v1.ImageMetadata>(async (p, r, md) => {
        const m = await this.images.getMetadata(p, await this.project(p, md), r.id ?? '');
        return { metadataJson: JSON.stringify(m.metadata), etag: m.etag };
      }),
      UpdateImageMetadata: this.unary<v1.UpdateImageMetadataRequest__Output, v1.Image>(async (p, r, md) => {
        let doc: unknown;
        try {
          doc = JSON.parse(r.metadataJson ?? '');
        } catch {
          throw ValidationError.field('metadata_json', 'is not valid JSON');
        }
        return imageMsg(await this.images.putMetadata(p, await this.project(p, md), r.id ?? '', doc, opts(undefined, r.etag)));
      }),
      ImportImage: this.unary<v1.ImportImageRequest__Output, v1.ImageOperation>(async (p, r, md, rid) => {
        const started = await this.images.startImport(p, await this.project(p, md), pick({ name: r.name || undefined, node: r.node || undefined, path: r.path || undefined }), { ...opts(r.requestId), requestId: rid });
        return { image: imageMsg(started.image), operation: operationMsg(started.operation) };
      }),
      DownloadImage: (call: grpc.ServerWritableStream<v1.GetImageRequest__Output, v1.FileChunk>) => {
        void (async () => {
          try {
            const p = await this.auth.authenticate(String(call.metadata.get('authorization')[0] ?? '') || undefined);
            const f = await this.images.file(p, await this.project(p, call.metadata), call.request.id ?? '');
            call.on('cancelled', () => f.stream.destroy());
            for await (const chunk of f.stream) {
              if (!call.write({ data: chunk as Buffer })) await new Promise((r) => call.once('drain', r));
            }
            call.end();
          } catch (e) {
            const err = toGrpcError(e);
            call.destroy(Object.assign(new Error(String(err.details)), err));
          }
        })();
      },
    };
  }

  /** ImageService.UploadImage: the first message names the image; the bytes of every message, in order, are the file. */
  private uploadImage(call: grpc.ServerReadableStream<v1.UploadImageChunk__Output, v1.Image>, cb: grpc.sendUnaryData<v1.Image>): void {
    const requestId = String(call.metadata.get('x-request-id')[0] ?? randomUUID());
    void (async () => {
      try {
        const p = await this.auth.authenticate(String(call.metadata.get('authorization')[0] ?? '') || undefined);
        const projectId = await this.project(p, call.metadata);
        const it = (call as AsyncIterable<v1.UploadImageChunk__Output>)[Symbol.asyncIterator]();
        const first = await it.next();
        if (first.done) throw ValidationError.field('name', 'the first message must name the image');
        const head = first.value;
        async function* bytes() {
          if (head.data?.length) yield Buffer.from(head.data);
          for (let n = await it.next(); !n.done; n = await it.next()) if (n.value.data?.length) yield Buffer.from(n.value.data);
        }
        cb(null, imageMsg(await this.images.upload(p, projectId, head.name ?? '', Readable.from(bytes()), { ...opts(head.requestId), requestId })));
      } catch (e) {
        cb(toGrpcError(e));
      }
    })();
  }

  /** PartitionService.AttachConsole: the first message names the partition, then bytes both ways. */
  private attachConsole(call: grpc.ServerDuplexStream<v1.ConsoleInput__Output, v1.ConsoleChunk>): void {
    let session: ConsoleSession | undefined;
    let opening = false;
    const pending: Buffer[] = [];
    const fail = (e: unknown) => {
      const err = toGrpcError(e);
      call.destroy(Object.assign(new Error(String(err.details)), err));
    };
    call.on('data', (m: v1.ConsoleInput__Output) => {
      const data = m.data?.length ? Buffer.from(m.data) : undefined;
      if (session) {
        if (data) session.write(data);
        return;
      }
      if (data) pending.push(data); // typed while the session opens: delivered once it is open
      if (opening) return;
      opening = true;
      void (async () => {
        try {
          const p = await this.auth.authenticate(String(call.metadata.get('authorization')[0] ?? '') || undefined);
          const s = await this.consoles.attach(p, await this.project(p, call.metadata), m.partitionId ?? '');
          session = s;
          s.on('data', (d) => call.write({ data: d }));
          s.on('close', () => call.end());
          for (const d of pending.splice(0)) s.write(d);
        } catch (e) {
          fail(e);
        }
      })();
    });
    const close = () => session?.close();
    call.on('end', () => { close(); call.end(); });
    call.on('cancelled', close);
    call.on('error', close);
  }

  private pair(r: { partition: Parameters<typeof partitionMsg>[0]; operation: Parameters<typeof operationMsg>[0] }): v1.PartitionOperation {
    return { partition: partitionMsg(r.partition), operation: operationMsg(r.operation) };
  }
}
