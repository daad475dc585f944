import { Body, Controller, HttpCode, Param, Post, Query, Res } from '@nestjs/common';
import { ApiBearerAuth, ApiQuery, ApiTags } from '@nestjs/swagger';
import { Principal } from '@hyperplane/domain';
import type { FastifyReply } from 'fastify';
import { Caller } from '../common/auth';
import { Mutation } from '../common/rest';
import { MutationOptions } from '../common/transactions';
import { AuthService } from '../projects/auth.service';
import { MigratePartitionInput } from './migration.dto';
import { MigrationService } from './migration.service';

/** REST door for migration: POST /v1/partitions/{id}/migrate answers 202 with the operation. */
@ApiTags('partitions')
@ApiBearerAuth()
@ApiQuery({ name: 'project', required: false, description: 'Project id or name (cluster-admin tokens only)' })
@Controller('v1/partitions')
export class MigrationController {
  constructor(
    private readonly migration: MigrationService,
    private readonly auth: AuthService,
  ) {}

  @Post(':id/migrate')
  @HttpCode(202)
  async migrate(@Caller() p: Principal, @Param('id') id: string, @Body() body: MigratePartitionInput, @Res({ passthrough: true }) res: FastifyReply, @Mutation() m: MutationOptions, @Query('project') project?: string) {
    const r = await this.migration.migrate(p, await this.auth.projectScope(p, project), id, body, m);
    void res.header('location', `/v1/operations/${r.operation.id}`);
    return r;
  }
}
