import * as grpc from '@grpc/grpc-js';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import { Inject, Injectable, OnModuleDestroy } from '@nestjs/common';
import { AGENT_PROTO_FILE, PUBLIC_PROTO_FILES, loadDefinition } from '@hyperplane/proto';
import { Logger } from 'pino';
import { Config, CONFIG, runsOperations, servesApi } from '../config';
import { LOGGER } from '../common/tokens';
import { HealthService } from '../health/health.service';
import { AgentGrpcApi } from './agent.grpc';
import { PublicGrpcApi } from './public-api.grpc';
import { TransferGrpcApi } from './transfer.grpc';
import { ServiceChainsGrpcApi } from '../service-chains/service-chains.grpc';

/** Names of the public services, as health checks and reflection list them. */
const PUBLIC_SERVICES = ['ProjectService', 'NodeService', 'PartitionService', 'OperationService', 'EventService', 'ImageService', 'SnapshotService', 'MigrationService', 'ServiceChainService'];

/**
 * The gRPC server on HYPERPLANE_GRPC_PORT: the public API (hyperplane.v1), the agent protocol
 * (hyperplane.agent.v1), the standard health checking protocol and server reflection. A process
 * of role `api` does not take agents, one of role `operations` does not serve the public API.
 */
@Injectable()
export class GrpcServer implements OnModuleDestroy {
  private server: grpc.Server | undefined;
  private healthTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly api: PublicGrpcApi,
    private readonly chainsApi: ServiceChainsGrpcApi,
    private readonly agents: AgentGrpcApi,
    private readonly health: HealthService,
    private readonly transfers: TransferGrpcApi,
    @Inject(CONFIG) private readonly config: Config,
    @Inject(LOGGER) private readonly log: Logger,
  ) {}

  /** Binds and starts serving; resolves with the bound port. */
  async start(): Promise<number> {
    const server = new grpc.Server({ 'grpc.max_receive_message_length': 4 * 1024 * 1024, 'grpc.keepalive_time_ms': 30_000, 'grpc.keepalive_permit_without_calls': 1 });
    const publicDef = loadDefinition(PUBLIC_PROTO_FILES);
    const agentDef = loadDefinition([AGENT_PROTO_FILE]);
    const publicServices = servesApi(this.config.role) ? PUBLIC_SERVICES : [];
    const impls = publicServices.length ? { ...this.api.services(), ...this.chainsApi.services() } : {};
    for (const name of publicServices) {
      const def = publicDef[`hyperplane.v1.${name}`] as grpc.ServiceDefinition;
      server.addService(def, impls[name]!);
    }
    // Agents and their file transfers go to the replicas that run operations (role all or operations).
    const agents = runsOperations(this.config.role);
    if (agents) server.addService(agentDef['hyperplane.agent.v1.AgentService'] as grpc.ServiceDefinition, { ...this.agents.service(), ...this.transfers.service() });

    const serving = Object.fromEntries(['', ...publicServices.map((s) => `hyperplane.v1.${s}`), ...(agents ? ['hyperplane.agent.v1.AgentService'] : [])].map((s) => [s, 'NOT_SERVING' as const]));
    const health = new HealthImplementation(serving);
    health.addToServer(server);
    new ReflectionService({ ...publicDef, ...agentDef }).addToServer(server);

    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`${this.config.bindAddress}:${this.config.grpcPort}`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    this.server = server;
    const refresh = async () => {
      const ready = (await this.health.check()).status === 'ok' ? 'SERVING' : 'NOT_SERVING';
      for (const s of Object.keys(serving)) health.setStatus(s, ready);
    };
    await refresh();
    this.healthTimer = setInterval(() => void refresh().catch(() => undefined), 5000);
    this.healthTimer.unref();
    this.log.info({ port }, 'gRPC listening');
    return port;
  }

  async onModuleDestroy(): Promise<void> {
    if (this.healthTimer) clearInterval(this.healthTimer);
    const s = this.server;
    if (!s) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => { s.forceShutdown(); resolve(); }, 3000);
      s.tryShutdown(() => { clearTimeout(t); resolve(); });
    });
  }
}
