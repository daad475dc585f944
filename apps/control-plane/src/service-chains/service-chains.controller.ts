import { Body, Controller, Delete, Get, HttpCode, Param, Post, Query, Res } from '@nestjs/common';
import { ApiBearerAuth, ApiQuery, ApiTags } from '@nestjs/swagger';
import { Principal } from '@hyperplane/domain';
import type { FastifyReply } from 'fastify';
import { Caller } from '../common/auth';
import { Mutation } from '../common/rest';
import { MutationOptions } from '../common/transactions';
import { AuthService } from '../projects/auth.service';
import { AddReplicaInput, AttachInput, CreateServiceChainInput, LinkInput } from './service-chains.dto';
import { AttachmentOperationView, ChainOperationView, ServiceChainsService } from './service-chains.service';

/** REST door for service chains. Changes answer 202 with the operation and a Location header. */
@ApiTags('service-chains')
@ApiBearerAuth()
@ApiQuery({ name: 'project', required: false, description: 'Project id or name (cluster-admin tokens only)' })
@Controller('v1/service-chains')
export class ServiceChainsController {
  constructor(
    private readonly chains: ServiceChainsService,
    private readonly auth: AuthService,
  ) {}

  @Post()
  @HttpCode(202)
  async create(@Caller() p: Principal, @Body() body: CreateServiceChainInput, @Res({ passthrough: true }) res: FastifyReply, @Mutation() m: MutationOptions, @Query('project') project?: string): Promise<ChainOperationView> {
    return accepted(res, await this.chains.create(p, await this.auth.projectScope(p, project), body, m));
  }

  @Get()
  async list(@Caller() p: Principal, @Query() q: Record<string, unknown>) {
    return this.chains.list(p, await this.auth.projectScope(p, q.project as string | undefined), q);
  }

  @Get(':id')
  async get(@Caller() p: Principal, @Param('id') id: string, @Query('project') project?: string) {
    return this.chains.get(p, await this.auth.projectScope(p, project), id);
  }

  @Get(':id/status')
  async status(@Caller() p: Principal, @Param('id') id: string, @Query('project') project?: string) {
    return this.chains.status(p, await this.auth.projectScope(p, project), id);
  }

  @Delete(':id')
  @HttpCode(202)
  async delete(@Caller() p: Principal, @Param('id') id: string, @Res({ passthrough: true }) res: FastifyReply, @Mutation() m: MutationOptions, @Query('project') project?: string) {
    return accepted(res, await this.chains.delete(p, await this.auth.projectScope(p, project), id, m));
  }

  @Post(':id/links')
  @HttpCode(202)
  async addLink(@Caller() p: Principal, @Param('id') id: string, @Body() body: LinkInput, @Res({ passthrough: true }) res: FastifyReply, @Mutation() m: MutationOptions, @Query('project') project?: string) {
    return accepted(res, await this.chains.addLink(p, await this.auth.projectScope(p, project), id, body, m));
  }

  @Delete(':id/links/:link')
  @HttpCode(202)
  async removeLink(@Caller() p: Principal, @Param('id') id: string, @Param('link') link: string, @Res({ passthrough: true }) res: FastifyReply, @Mutation() m: MutationOptions, @Query('project') project?: string) {
    return accepted(res, await this.chains.removeLink(p, await this.auth.projectScope(p, project), id, link, m));
  }

  @Post(':id/links/:link/replicas')
  @HttpCode(202)
  async addReplica(@Caller() p: Principal, @Param('id') id: string, @Param('link') link: string, @Body() body: AddReplicaInput, @Res({ passthrough: true }) res: FastifyReply, @Mutation() m: MutationOptions, @Query('project') project?: string) {
    return accepted(res, await this.chains.addReplica(p, await this.auth.projectScope(p, project), id, link, body, m));
  }

  @Get(':id/links/:link/replicas/:replica/log')
  @ApiQuery({ name: 'tailBytes', required: false })
  async replicaLog(@Caller() p: Principal, @Param('id') id: string, @Param('link') link: string, @Param('replica') replica: string, @Query('tailBytes') tailBytes?: string, @Query('project') project?: string) {
    return this.chains.replicaLog(p, await this.auth.projectScope(p, project), id, link, replica, tailBytes);
  }

  @Delete(':id/links/:link/replicas/:replica')
  @HttpCode(202)
  async removeReplica(@Caller() p: Principal, @Param('id') id: string, @Param('link') link: string, @Param('replica') replica: string, @Res({ passthrough: true }) res: FastifyReply, @Mutation() m: MutationOptions, @Query('project') project?: string) {
    return accepted(res, await this.chains.removeReplica(p, await this.auth.projectScope(p, project), id, link, replica, m));
  }
}

/** REST door for partition attachments (`/v1/partitions/{id}/attachments`). */
@ApiTags('service-chains')
@ApiBearerAuth()
@ApiQuery({ name: 'project', required: false, description: 'Project id or name (cluster-admin tokens only)' })
@Controller('v1/partitions')
export class AttachmentsController {
  constructor(
    private readonly chains: ServiceChainsService,
    private readonly auth: AuthService,
  ) {}

  @Post(':id/attachments')
  @HttpCode(202)
  async attach(@Caller() p: Principal, @Param('id') id: string, @Body() body: AttachInput, @Res({ passthrough: true }) res: FastifyReply, @Mutation() m: MutationOptions, @Query('project') project?: string): Promise<AttachmentOperationView> {
    return accepted(res, await this.chains.attach(p, await this.auth.projectScope(p, project), id, body, m));
  }

  @Get(':id/attachments')
  async list(@Caller() p: Principal, @Param('id') id: string, @Query() q: Record<string, unknown>) {
    return this.chains.attachments(p, await this.auth.projectScope(p, q.project as string | undefined), id, q);
  }

  @Delete(':id/attachments/:attachment')
  @HttpCode(202)
  async detach(@Caller() p: Principal, @Param('id') id: string, @Param('attachment') attachment: string, @Res({ passthrough: true }) res: FastifyReply, @Mutation() m: MutationOptions, @Query('project') project?: string) {
    return accepted(res, await this.chains.detach(p, await this.auth.projectScope(p, project), id, attachment, m));
  }
}

/** Sets the Location of the operation on a 202. */
function accepted<T extends { operation: { id: string } }>(res: FastifyReply, r: T): T {
  void res.header('location', `/v1/operations/${r.operation.id}`);
  return r;
}

