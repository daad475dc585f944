import { Injectable } from '@nestjs/common';
import { FailedPreconditionError, Principal, requireRole } from '@hyperplane/domain';
import { ConsoleSession, ConsoleSessions } from '../agents/console-sessions';
import { PartitionsService } from './partitions.service';

/** Interactive serial consoles (WebSocket on REST, a bidi stream on gRPC): what the user types reaches the guest's serial port. */
@Injectable()
export class ConsoleService {
  constructor(
    private readonly partitions: PartitionsService,
    private readonly consoles: ConsoleSessions,
  ) {}

  /** Opens a session to a running partition's serial port; operators and up. */
  async attach(principal: Principal, projectId: string, id: string): Promise<ConsoleSession> {
    requireRole(principal, 'operator', 'attach to consoles');
    const row = await this.partitions.find(projectId, id);
    if (row.state !== 'running' || !row.node_id) throw new FailedPreconditionError(`cannot attach to the console of partition ${row.name}: it is ${row.state}`);
    return this.consoles.attach(row.node_id, row.id);
  }
}
