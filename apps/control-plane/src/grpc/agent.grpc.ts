import * as grpc from '@grpc/grpc-js';
import { Inject, Injectable } from '@nestjs/common';
import { agentV1 } from '@hyperplane/proto';
import { Logger } from 'pino';
import { LOGGER } from '../common/tokens';
import { AgentRejectedError, AgentsService } from '../agents/agents.service';
import { AgentStreamWriter } from '../agents/agent-sessions';
import { ChainAgents } from '../service-chains/chain-agents';

type AgentCall = grpc.ServerDuplexStream<agentV1.AgentMessage__Output, agentV1.ControlMessage>;

/**
 * The agent protocol door: one bidirectional stream per node. Messages of one stream are handled
 * strictly in order; the first must be `register`.
 */
@Injectable()
export class AgentGrpcApi {
  constructor(
    private readonly agents: AgentsService,
    private readonly chains: ChainAgents,
    @Inject(LOGGER) private readonly log: Logger,
  ) {}

  /** The AgentService implementation. */
  service(): grpc.UntypedServiceImplementation {
    return { Connect: (call: AgentCall) => this.onConnect(call) };
  }

  private onConnect(call: AgentCall): void {
    let nodeId: string | undefined;
    let chain = Promise.resolve();
    let closed = false;
    const writer: AgentStreamWriter = {
      write: (m) => {
        if (!closed) call.write(m);
      },
    };
    const handle = async (m: agentV1.AgentMessage__Output) => {
      if (!nodeId) {
        if (m.body !== 'register' || !m.register) throw new AgentRejectedError('the first message must be register');
        nodeId = await this.agents.register(m.register, writer);
        await this.chains.onRegister(nodeId, m.register);
        return;
      }
      switch (m.body) {
        case 'heartbeat':
          return this.agents.onHeartbeat(nodeId);
        case 'status':
          return this.agents.onStatus(nodeId, m.status!);
        case 'result':
          return this.agents.onResult(m.result!);
        case 'event':
          return this.agents.onGuestEvents(nodeId, [m.event!]);
        case 'consoleOutput':
          return this.agents.onConsoleOutput(m.consoleOutput!);
        case 'images':
          return this.agents.onImages(nodeId, m.images!);
        case 'migrationProgress':
          return this.agents.onMigrationProgress(nodeId, m.migrationProgress!);
        case 'providerStatus':
          return this.chains.onProviderStatus(nodeId, m.providerStatus!);
        case 'replicaLost':
          return this.chains.onReplicaLost(nodeId, m.replicaLost!);
        case 'register':
          throw new AgentRejectedError('register sent twice on one stream');
      }
    };
    // Guest events that arrive while the messages before them are handled wait together: one step
    // handles them all (a node passes on a burst at once, kept back while its guest migrated).
    let waitingEvents: agentV1.GuestEvent__Output[] | undefined;
    const step = (m: agentV1.AgentMessage__Output): (() => Promise<void>) | undefined => {
      if (m.body !== 'event') {
        waitingEvents = undefined;
        return () => handle(m);
      }
      if (waitingEvents) {
        waitingEvents.push(m.event!);
        return undefined;
      }
      const events = (waitingEvents = [m.event!]);
      return () => {
        if (waitingEvents === events) waitingEvents = undefined;
        return nodeId ? this.agents.onGuestEvents(nodeId, events) : handle(m); // before register: refused
      };
    };
    call.on('data', (m: agentV1.AgentMessage__Output) => {
      if (m.body === 'result' && nodeId && this.agents.answersAtOnce(m.result!)) {
        // Its waiter does not depend on the messages before it (see CommandOptions.atOnce).
        void this.agents.onResult(m.result!).catch((err: unknown) => this.log.error({ err, nodeId }, 'agent message failed'));
        return;
      }
      const next = step(m);
      if (!next) return;
      chain = chain.then(next).catch((err: unknown) => {
        if (err instanceof AgentRejectedError) {
          this.log.warn({ reason: err.message, nodeId }, 'agent rejected');
          writer.write({ rejected: { reason: err.message } });
          closed = true;
          call.end();
        } else {
          this.log.error({ err, nodeId }, 'agent message failed');
        }
      });
    });
    const finish = () => {
      if (closed && !nodeId) return;
      closed = true;
      chain = chain.then(async () => {
        if (nodeId) await this.agents.disconnected(nodeId, writer);
      }).catch((err: unknown) => this.log.warn({ err, nodeId }, 'agent disconnect handling failed'));
    };
    call.on('end', () => { finish(); call.end(); });
    call.on('cancelled', finish);
    call.on('error', finish);
  }
}
