import { Body, Controller, Delete, Get, HttpCode, Param, Post, Query, Res } from '@nestjs/common';
import { ApiBearerAuth, ApiQuery, ApiTags } from '@nestjs/swagger';
import { Principal } from '@hyperplane/domain';
import type { FastifyReply } from 'fastify';
import { Caller } from '../common/auth';
import { Mutation } from '../common/rest';
import { MutationOptions } from '../common/transactions';
import { EmptyInput } from '../partitions/partitions.dto';
import { AuthService } from '../projects/auth.service';
import { CreateSnapshotInput, ExportSnapshotInput } from './snapshots.dto';
import { SnapshotExports } from './snapshot-exports';
import { SnapshotsService } from './snapshots.service';

/** REST door for a partition's snapshots. Changes answer 202 with the operation and a Location header. */
@ApiTags('snapshots')
@ApiBearerAuth()
@ApiQuery({ name: 'project', required: false, description: 'Project id or name (cluster-admin tokens only)' })
@Controller('v1/partitions/:id/snapshots')
export class SnapshotsController {
  constructor(
    private readonly snapshots: SnapshotsService,
    private readonly exports: SnapshotExports,
    private readonly auth: AuthService,
  ) {}

  @Post()
  @HttpCode(202)
  async create(@Caller() p: Principal, @Param('id') id: string, @Body() body: CreateSnapshotInput, @Res({ passthrough: true }) res: FastifyReply, @Mutation() m: MutationOptions, @Query('project') project?: string) {
    return located(res, await this.snapshots.create(p, await this.auth.projectScope(p, project), id, body, m));
  }

  @Get()
  async list(@Caller() p: Principal, @Param('id') id: string, @Query() q: Record<string, unknown>) {
    return this.snapshots.list(p, await this.auth.projectScope(p, q.project as string | undefined), id, q);
  }

  @Get(':sid')
  async get(@Caller() p: Principal, @Param('id') id: string, @Param('sid') sid: string, @Query('project') project?: string) {
    return this.snapshots.get(p, await this.auth.projectScope(p, project), id, sid);
  }

  @Delete(':sid')
  @HttpCode(202)
  async delete(@Caller() p: Principal, @Param('id') id: string, @Param('sid') sid: string, @Res({ passthrough: true }) res: FastifyReply, @Mutation() m: MutationOptions, @Query('project') project?: string) {
    return located(res, await this.snapshots.delete(p, await this.auth.projectScope(p, project), id, sid, m));
  }

  @Post(':sid/revert')
  @HttpCode(202)
  async revert(@Caller() p: Principal, @Param('id') id: string, @Param('sid') sid: string, @Body() _body: EmptyInput, @Res({ passthrough: true }) res: FastifyReply, @Mutation() m: MutationOptions, @Query('project') project?: string) {
    return located(res, await this.snapshots.revert(p, await this.auth.projectScope(p, project), id, sid, m));
  }

  @Post(':sid/export')
  @HttpCode(202)
  async export(@Caller() p: Principal, @Param('id') id: string, @Param('sid') sid: string, @Body() body: ExportSnapshotInput, @Res({ passthrough: true }) res: FastifyReply, @Mutation() m: MutationOptions, @Query('project') project?: string) {
    return located(res, await this.exports.export(p, await this.auth.projectScope(p, project), id, sid, body, m));
  }
}

/** Sets the Location of the operation on a 202. */
function located<T extends { operation: { id: string } }>(res: FastifyReply, r: T): T {
  void res.header('location', `/v1/operations/${r.operation.id}`);
  return r;
}
