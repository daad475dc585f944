import { DynamicModule, Module, Provider } from '@nestjs/common';
import { APP_FILTER, APP_GUARD, APP_PIPE } from '@nestjs/core';
import { Redis } from 'ioredis';
import { Logger } from 'pino';
import { DataSource } from 'typeorm';
import { Config, CONFIG, servesApi } from './config';
import { AgentSessions } from './agents/agent-sessions';
import { AgentsService } from './agents/agents.service';
import { ConsoleSessions } from './agents/console-sessions';
import { AuthGuard } from './common/auth';
import { IdempotencyRepository } from './common/idempotency.repository';
import { InputPipe } from './common/input.pipe';
import { ProblemFilter } from './common/problem.filter';
import { DATA_SOURCE, LOGGER, REDIS, REDIS_SUB } from './common/tokens';
import { TransactionRunner } from './common/transactions';
import { EventBus } from './events/event-bus';
import { EventsController } from './events/events.controller';
import { EventsService } from './events/events.service';
import { AgentGrpcApi } from './grpc/agent.grpc';
import { GrpcServer } from './grpc/grpc-server';
import { PublicGrpcApi } from './grpc/public-api.grpc';
import { TransferGrpcApi } from './grpc/transfer.grpc';
import { TransferFiles } from './transfers/transfer-files';
import { TransferRepository } from './transfers/transfer.repository';
import { TransfersService } from './transfers/transfers.service';
import { HealthController } from './health/health.controller';
import { HealthService } from './health/health.service';
import { ImagePolicy } from './images/image-policy';
import { ImageRepository } from './images/image.repository';
import { ImageStore } from './images/image-store';
import { ImagesController } from './images/images.controller';
import { ImagesService } from './images/images.service';
import { NodeImageInventory } from './images/node-image-inventory';
import { ImageDistribution } from './images/image-distribution';
import { ImageHistory } from './images/image-history';
import { ImageImports } from './images/image-imports';
import { ImageIntake } from './images/image-intake';
import { ImageWriter } from './images/image-writer';
import { PartitionImages } from './images/partition-images';
import { NodeImageRepository } from './images/node-image.repository';
import { NodeRepository } from './nodes/node.repository';
import { NodesController } from './nodes/nodes.controller';
import { NodesService } from './nodes/nodes.service';
import { NodeOperations } from './nodes/node-operations';
import { OperationQueueRepository } from './operations/operation-queue.repository';
import { OperationRepository } from './operations/operation.repository';
import { OperationRunner } from './operations/operation-runner';
import { OperationsController } from './operations/operations.controller';
import { OperationsService } from './operations/operations.service';
import { PartitionOperations } from './partitions/partition-operations';
import { PartitionRepository } from './partitions/partition.repository';
import { PartitionsController } from './partitions/partitions.controller';
import { PartitionsService } from './partitions/partitions.service';
import { PlacementService } from './partitions/placement.service';
import { NodeCache } from './nodes/node-cache';
import { ConsoleService } from './partitions/console.service';
import { ConsoleWebSocket } from './partitions/console.websocket';
import { AuthService } from './projects/auth.service';
import { ProjectRepository } from './projects/project.repository';
import { TokenRepository } from './projects/token.repository';
import { ProjectsController } from './projects/projects.controller';
import { ProjectsService } from './projects/projects.service';
import { MigrationController } from './migration/migration.controller';
import { MigrationOperations } from './migration/migration-operations';
import { MigrationService } from './migration/migration.service';
import { SnapshotExports } from './snapshots/snapshot-exports';
import { SnapshotOperations } from './snapshots/snapshot-operations';
import { ChainAgents } from './service-chains/chain-agents';
import { ChainKeys } from './service-chains/chain-keys';
import { ChainOperations } from './service-chains/chain-operations';
import { ChainPlacement } from './service-chains/chain-placement';
import { ChainRuntime } from './service-chains/chain-runtime';
import { ServiceChainRepository } from './service-chains/service-chain.repository';
import { AttachmentsController, ServiceChainsController } from './service-chains/service-chains.controller';
import { ServiceChainsGrpcApi } from './service-chains/service-chains.grpc';
import { ServiceChainsService } from './service-chains/service-chains.service';
import { SnapshotRepository } from './snapshots/snapshot.repository';
import { SnapshotsController } from './snapshots/snapshots.controller';
import { SnapshotsService } from './snapshots/snapshots.service';

/** Infrastructure handed in by the entrypoint (already connected and migrated). */
export interface Infrastructure {
  config: Config;
  dataSource: DataSource;
  redis: Redis;
  redisSub: Redis;
  logger: Logger;
}

/** One provider list; the entrypoint decides what to start (STYLE.md, after immich app.module.ts). */
const PROVIDERS: Provider[] = [
  // repositories: the only code that does I/O
  IdempotencyRepository,
  ProjectRepository,
  TokenRepository,
  NodeRepository,
  PartitionRepository,
  SnapshotRepository,
  ImageRepository,
  ImageStore,
  NodeImageRepository,
  TransferRepository,
  TransferFiles,
  OperationRepository,
  OperationQueueRepository,
  // services
  TransactionRunner,
  EventBus,
  AuthService,
  ProjectsService,
  NodesService,
  OperationsService,
  OperationRunner,
  PartitionsService,
  ImagesService,
  ImageWriter,
  ImageIntake,
  ImageHistory,
  ImageImports,
  ImageDistribution,
  PartitionImages,
  ImagePolicy,
  NodeImageInventory,
  TransfersService,
  PlacementService,
  NodeCache,
  ConsoleService,
  ConsoleWebSocket,
  PartitionOperations,
  SnapshotsService,
  SnapshotOperations,
  SnapshotExports,
  MigrationService,
  MigrationOperations,
  // service chains
  ServiceChainRepository,
  ChainKeys,
  ChainPlacement,
  ChainRuntime,
  ChainOperations,
  ChainAgents,
  ServiceChainsService,
  ServiceChainsGrpcApi,
  NodeOperations,
  AgentSessions,
  ConsoleSessions,
  AgentsService,
  EventsService,
  HealthService,
  // adapters
  PublicGrpcApi,
  AgentGrpcApi,
  TransferGrpcApi,
  GrpcServer,
  { provide: APP_GUARD, useClass: AuthGuard },
  { provide: APP_PIPE, useClass: InputPipe },
  { provide: APP_FILTER, useClass: ProblemFilter },
];

/** The control plane's Nest module. */
@Module({})
export class AppModule {
  static with(infra: Infrastructure): DynamicModule {
    return {
      module: AppModule,
      // A process of role `operations` answers health probes only on REST.
      controllers: servesApi(infra.config.role)
        ? [HealthController, ProjectsController, NodesController, PartitionsController, ImagesController, OperationsController, EventsController, SnapshotsController, MigrationController, ServiceChainsController, AttachmentsController]
        : [HealthController],
      providers: [
        { provide: CONFIG, useValue: infra.config },
        { provide: DATA_SOURCE, useValue: infra.dataSource },
        { provide: REDIS, useValue: infra.redis },
        { provide: REDIS_SUB, useValue: infra.redisSub },
        { provide: LOGGER, useValue: infra.logger },
        ...PROVIDERS,
      ],
    };
  }
}
