import { Injectable } from '@nestjs/common';
import { FailedPreconditionError, Principal, ValidationError, uuidv7 } from '@hyperplane/domain';
import { MutationOptions } from '../common/transactions';
import { ImagePolicy } from '../images/image-policy';
import { NodeRepository, NodeRow } from '../nodes/node.repository';
import { PartitionRepository, PartitionRow } from '../partitions/partition.repository';
import { PartitionOperationView, PartitionsService } from '../partitions/partitions.service';
import { PlacementService, PlacementSpec } from '../partitions/placement.service';
import { ServiceChainRepository } from '../service-chains/service-chain.repository';
import { SnapshotRepository } from '../snapshots/snapshot.repository';
import { AcceptedMigration, MigrationOperations } from './migration-operations';
import { MigratePartitionInput } from './migration.dto';

/** What a `partition.migrate` operation carries (its params). */
export interface MigrateParams {
  sourceNodeId: string;
  targetNodeId: string;
  live: boolean;
  storage: 'copy' | 'shared';
  tls: boolean;
  /** The destination's node name: its TLS certificate must carry it. */
  targetNodeName: string;
  /** running or stopped: what the partition goes back to. */
  previousState: 'running' | 'stopped';
  discardSnapshots: boolean;
  options: {
    maxDowntimeMs?: number;
    bandwidthBytesPerSec?: number;
    autoConverge?: boolean;
    postcopy?: boolean;
    postcopyAfterMs?: number;
  };
}

/**
 * Moving partitions between nodes. The request is checked and the destination chosen and
 * reserved synchronously, in the transaction that marks the partition `migrating` (so "no node
 * fits" is a 422 that changes nothing, and both nodes' capacity is held until it ends); the
 * `partition.migrate` operation then does the work (MigrationOperations).
 */
@Injectable()
export class MigrationService {
  constructor(
    private readonly partitionsService: PartitionsService,
    private readonly partitions: PartitionRepository,
    private readonly nodes: NodeRepository,
    private readonly snapshots: SnapshotRepository,
    private readonly placement: PlacementService,
    private readonly imagePolicy: ImagePolicy,
    private readonly chains: ServiceChainRepository,
    private readonly operations: MigrationOperations,
  ) {}

  /**
   * Migrates a partition: live when it runs (the default), cold when it is stopped; to the named
   * node or one the scheduler chooses among the others under the partition's placement rules.
   */
  migrate(principal: Principal, projectId: string, id: string, input: MigratePartitionInput, opts: MutationOptions = {}): Promise<PartitionOperationView> {
    // The destination starts getting ready before the commit (its QEMU start is most of a
    // migration's time): a named one as soon as it is read, one the scheduler chooses once it is
    // chosen and reserved; undone if the commit does not come.
    let ahead: { operationId: string; row: PartitionRow; params: MigrateParams } | undefined;
    let committed = false;
    return this.partitionsService.act(principal, projectId, id, 'migrate', 'partition.migrate', {}, opts, async (db, row, operationId) => {
      const running = row.state === 'running';
      const live = input.live ?? running;
      // Shared storage: where the source has the disk is asked now, while the transaction goes on,
      // for the destination that starts getting ready once it is chosen (see prepareAhead).
      const sharedDiskPath = live && running && input.storage === 'shared' ? this.operations.sharedDiskPath(row) : undefined;
      sharedDiskPath?.catch(() => undefined); // the request may still be refused; the operation asks again
      if (live && !running) throw new FailedPreconditionError(`cannot migrate partition ${row.name} live: it is ${row.state} (a stopped partition migrates cold: leave live unset or false)`);
      if (!live && running) throw new FailedPreconditionError(`cannot migrate running partition ${row.name} cold: stop it first, or migrate it live`);
      if (!live && input.storage === 'shared') throw ValidationError.field('storage', 'a cold migration moves the disk file; shared storage is for live migration');
      if (!live && input.postcopy) throw ValidationError.field('postcopy', 'post-copy is a live migration option');
      const storage = input.storage ?? 'copy';
      const [source, named] = await this.nodes.findWithRef(row.node_id!, input.targetNode, db);
      if (!source) throw new FailedPreconditionError(`partition ${row.name} is on node ${row.node_id}, which is no longer registered`);
      if (input.targetNode !== undefined && !named) throw ValidationError.field('targetNode', `node '${input.targetNode}' does not exist`);
      if (named?.id === source.id) throw ValidationError.field('targetNode', `partition ${row.name} is on node ${named.name} already`);
      const paramsTo = (target: NodeRow): MigrateParams => {
        if (source.tls !== target.tls) {
          const [withTls, without] = source.tls ? [source, target] : [target, source];
          throw new FailedPreconditionError(`cannot migrate partition ${row.name} from node ${source.name} to node ${target.name}: node ${withTls.name} encrypts migrations (TLS) and node ${without.name} has no TLS credentials`);
        }
        return {
          sourceNodeId: source.id,
          targetNodeId: target.id,
          targetNodeName: target.name,
          live,
          storage,
          tls: source.tls && target.tls,
          previousState: running ? 'running' : 'stopped',
          discardSnapshots: Boolean(input.discardSnapshots),
          options: {
            maxDowntimeMs: input.maxDowntimeMs,
            bandwidthBytesPerSec: input.bandwidthBytesPerSec,
            autoConverge: input.autoConverge,
            postcopy: input.postcopy,
            postcopyAfterMs: input.postcopyAfterMs,
          },
        };
      };
      const prepareAhead = (params: MigrateParams) => {
        if (this.operations.prepareAhead(operationId, row, params, sharedDiskPath)) ahead = { operationId, row, params };
      };
      // A named destination that takes partitions gets ready while the checks and its reservation
      // run: should one of them refuse, what it prepared goes again (abandonAhead).
      if (named && named.status === 'ready' && !named.cordoned) prepareAhead(paramsTo(named));
      const disks = await this.chains.attachmentsOf(row.id, db);
      if (disks.length) throw new FailedPreconditionError(`cannot migrate partition ${row.name}: it has ${disks.length} service-chain disk(s) attached; detach them first`);
      if (live && storage === 'copy' && !input.discardSnapshots) {
        const n = await this.snapshots.count(db, row.id);
        if (n > 0) {
          throw new FailedPreconditionError(
            `cannot migrate partition ${row.name} live with copy storage: it has ${n} snapshot(s), which the disk copy does not carry ` +
              '(set discardSnapshots to drop them, use shared storage, or stop it and migrate it cold: a cold migration keeps them)',
          );
        }
      }
      const pinned = named?.id;
      const { node: _pinnedAtCreate, ...rules } = row.placement as PlacementSpec;
      const terms = await this.imagePolicy.requirements(db, projectId, row.image);
      const [targetId] = await this.placement.place(
        db,
        projectId,
        [{ requestId: opts.requestId ?? uuidv7(), vcpus: row.vcpus, memoryMiB: Number(row.memory_mib), diskGiB: row.disk_gib, image: row.image, spec: { ...rules, ...(pinned ? { node: pinned } : {}) }, imageRequirements: terms.requirements, imageInLibrary: terms.inLibrary }],
        { avoidNodes: [source.id], moving: true, pinned: named },
      );
      const target = targetId === named?.id ? named! : (await this.nodes.findByIdOrName(targetId!, db))!;
      const params = ahead?.params ?? paramsTo(target);
      if (!ahead) prepareAhead(params);
      const moving = await this.partitions.beginMigration(db, row.id, target.id, `${live ? 'live' : 'cold'} migration to node ${target.name}`);
      // What the handler would read first (MigrationOperations.handleMigrate), as committed here.
      const read: AcceptedMigration | undefined = moving && { row: moving, source, target };
      return { row: moving, params: params as unknown as Record<string, unknown>, read };
    }, async () => {
      committed = true;
    }).then(
      ({ partition, operation }) => ({ partition, operation }),
      (e: unknown) => {
        if (ahead && !committed) this.operations.abandonAhead(ahead.operationId, ahead.row, ahead.params);
        throw e;
      },
    );
  }
}
