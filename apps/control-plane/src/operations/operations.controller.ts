import { Controller, Get, HttpCode, Param, Post, Query, Req } from '@nestjs/common';
import { ApiBearerAuth, ApiQuery, ApiTags } from '@nestjs/swagger';
import { Principal } from '@hyperplane/domain';
import type { FastifyRequest } from 'fastify';
import { Caller } from '../common/auth';
import { AuthService } from '../projects/auth.service';
import { OperationsService } from './operations.service';

/** REST door for operations. */
@ApiTags('operations')
@ApiBearerAuth()
@ApiQuery({ name: 'project', required: false, description: 'Project id or name (cluster-admin tokens only)' })
@Controller('v1/operations')
export class OperationsController {
  constructor(
    private readonly ops: OperationsService,
    private readonly auth: AuthService,
  ) {}

  @Get()
  @ApiQuery({ name: 'status', required: false })
  @ApiQuery({ name: 'targetId', required: false })
  async list(@Caller() p: Principal, @Query() q: Record<string, string | undefined>) {
    return this.ops.list(p, await this.auth.projectOrAll(p, q.project), q);
  }

  @Get(':id')
  async get(@Caller() p: Principal, @Param('id') id: string, @Query('project') project?: string) {
    return this.ops.get(p, await this.auth.projectOrAll(p, project), id);
  }

  @Get(':id/wait')
  @ApiQuery({ name: 'timeoutSeconds', required: false })
  async wait(@Caller() p: Principal, @Param('id') id: string, @Req() req: FastifyRequest, @Query('timeoutSeconds') timeoutSeconds?: string, @Query('project') project?: string) {
    const ac = new AbortController();
    req.raw.once('close', () => ac.abort());
    return this.ops.wait(p, await this.auth.projectOrAll(p, project), id, timeoutSeconds, ac.signal);
  }

  @Post(':id/cancel')
  @HttpCode(200)
  async cancel(@Caller() p: Principal, @Param('id') id: string, @Query('project') project?: string) {
    return this.ops.cancel(p, await this.auth.projectOrAll(p, project), id);
  }
}
