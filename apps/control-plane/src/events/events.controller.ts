import { Controller, Get, Query, Req, Res } from '@nestjs/common';
import { ApiBearerAuth, ApiProduces, ApiQuery, ApiTags } from '@nestjs/swagger';
import { Principal } from '@hyperplane/domain';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { Caller } from '../common/auth';
import { AuthService } from '../projects/auth.service';
import { EventsService } from './events.service';

/** REST door for the event stream: Server-Sent Events. */
@ApiTags('events')
@ApiBearerAuth()
@Controller('v1/events')
export class EventsController {
  constructor(
    private readonly events: EventsService,
    private readonly auth: AuthService,
  ) {}

  @Get()
  @ApiProduces('text/event-stream')
  @ApiQuery({ name: 'type', required: false, description: 'Resource types to receive (partition, operation, node), repeatable' })
  @ApiQuery({ name: 'project', required: false, description: 'Project id or name (cluster-admin tokens; omit to see every project)' })
  async stream(@Caller() p: Principal, @Req() req: FastifyRequest, @Res() res: FastifyReply, @Query('type') type?: string | string[], @Query('project') project?: string): Promise<void> {
    const projectId = p.projectId || project ? await this.auth.projectScope(p, project) : null;
    const filter = this.events.filterFor(p, projectId, type);
    res.hijack();
    const raw = res.raw;
    raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    raw.write(': hyperplane events\n\n');
    const unsubscribe = this.events.watch(filter, (e) => {
      raw.write(`id: ${e.id}\nevent: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`);
    });
    const keepalive = setInterval(() => raw.write(': keepalive\n\n'), 15_000);
    req.raw.once('close', () => {
      clearInterval(keepalive);
      unsubscribe();
    });
  }
}
