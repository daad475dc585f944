import { Body, Controller, Delete, Get, HttpCode, Param, Patch, Post, Query, Res } from '@nestjs/common';
import { ApiBearerAuth, ApiQuery, ApiTags } from '@nestjs/swagger';
import { Principal } from '@hyperplane/domain';
import type { FastifyReply } from 'fastify';
import { Caller } from '../common/auth';
import { Mutation } from '../common/rest';
import { MutationOptions } from '../common/transactions';
import { AuthService } from '../projects/auth.service';
import { CreatePartitionInput, EmptyInput, StopPartitionInput, UpdatePartitionInput } from './partitions.dto';
import { PartitionBatchView, PartitionOperationView, PartitionsService } from './partitions.service';

/** REST door for partitions. Actions answer 202 with the operation and a Location header. */
@ApiTags('partitions')
@ApiBearerAuth()
@ApiQuery({ name: 'project', required: false, description: 'Project id or name (cluster-admin tokens only)' })
@Controller('v1/partitions')
export class PartitionsController {
  constructor(
    private readonly partitions: PartitionsService,
    private readonly auth: AuthService,
  ) {}

  @Post()
  @HttpCode(202)
  async create(
    @Caller() p: Principal,
    @Body() body: CreatePartitionInput,
    @Res({ passthrough: true }) res: FastifyReply,
    @Mutation() m: MutationOptions,
    @Query('project') project?: string,
  ): Promise<PartitionOperationView | PartitionBatchView> {
    return accepted(res, await this.partitions.create(p, await this.auth.projectScope(p, project), body, m));
  }

  @Get()
  @ApiQuery({ name: 'state', required: false })
  @ApiQuery({ name: 'label', required: false, description: 'key:value, repeatable' })
  @ApiQuery({ name: 'node', required: false })
  async list(@Caller() p: Principal, @Query() q: Record<string, unknown>) {
    const projectId = await this.auth.projectScope(p, q.project as string | undefined);
    return this.partitions.list(p, projectId, q);
  }

  @Get(':id')
  async get(@Caller() p: Principal, @Param('id') id: string, @Query('project') project?: string) {
    return this.partitions.get(p, await this.auth.projectScope(p, project), id);
  }

  @Patch(':id')
  async update(
    @Caller() p: Principal,
    @Param('id') id: string,
    @Body() body: UpdatePartitionInput,
    @Mutation() m: MutationOptions,
    @Query('project') project?: string,
  ) {
    return this.partitions.update(p, await this.auth.projectScope(p, project), id, body, m);
  }

  @Post(':id/start')
  @HttpCode(202)
  async start(@Caller() p: Principal, @Param('id') id: string, @Body() _body: EmptyInput, @Res({ passthrough: true }) res: FastifyReply, @Query('project') project?: string, @Mutation() m?: MutationOptions) {
    return accepted(res, await this.partitions.start(p, await this.auth.projectScope(p, project), id, m));
  }

  @Post(':id/stop')
  @HttpCode(202)
  async stop(@Caller() p: Principal, @Param('id') id: string, @Body() body: StopPartitionInput, @Res({ passthrough: true }) res: FastifyReply, @Query('project') project?: string, @Mutation() m?: MutationOptions) {
    return accepted(res, await this.partitions.stop(p, await this.auth.projectScope(p, project), id, body, m));
  }

  @Post(':id/reboot')
  @HttpCode(202)
  async reboot(@Caller() p: Principal, @Param('id') id: string, @Body() _body: EmptyInput, @Res({ passthrough: true }) res: FastifyReply, @Query('project') project?: string, @Mutation() m?: MutationOptions) {
    return accepted(res, await this.partitions.reboot(p, await this.auth.projectScope(p, project), id, m));
  }

  @Delete(':id')
  @HttpCode(202)
  async delete(@Caller() p: Principal, @Param('id') id: string, @Res({ passthrough: true }) res: FastifyReply, @Query('project') project?: string, @Mutation() m?: MutationOptions) {
    return accepted(res, await this.partitions.delete(p, await this.auth.projectScope(p, project), id, m));
  }

  @Get(':id/console')
  @ApiQuery({ name: 'tailBytes', required: false })
  async console(@Caller() p: Principal, @Param('id') id: string, @Query('tailBytes') tailBytes?: string, @Query('project') project?: string) {
    return this.partitions.console(p, await this.auth.projectScope(p, project), id, tailBytes);
  }
}

/** Sets the Location of the operation on a 202. */
function accepted<T extends PartitionOperationView | PartitionBatchView>(res: FastifyReply, r: T): T {
  if ('operation' in r) void res.header('location', `/v1/operations/${r.operation.id}`);
  return r;
}
