import { Body, Controller, Get, HttpCode, Param, Post, Query, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import { Mutation } from '../common/rest';
import { MutationOptions } from '../common/transactions';
import { ApiBearerAuth, ApiTags } from '@nestjs/swagger';
import { Principal } from '@hyperplane/domain';
import { Caller } from '../common/auth';
import { DrainNodeInput } from './nodes.dto';
import { NodesService } from './nodes.service';
import { NodeImageInventory } from '../images/node-image-inventory';

/** REST door for nodes (cluster admins). */
@ApiTags('nodes')
@ApiBearerAuth()
@Controller('v1/nodes')
export class NodesController {
  constructor(
    private readonly nodes: NodesService,
    private readonly nodeImages: NodeImageInventory,
  ) {}

  @Get()
  list(@Caller() p: Principal, @Query('pageSize') pageSize?: string, @Query('pageToken') pageToken?: string, @Query('state') state?: string) {
    return this.nodes.list(p, { pageSize, pageToken, state });
  }

  @Get(':id')
  get(@Caller() p: Principal, @Param('id') id: string) {
    return this.nodes.get(p, id);
  }

  /** What the node's agent last reported of its image store (metadata, rejections, library copies). */
  @Get(':id/images')
  images(@Caller() p: Principal, @Param('id') id: string) {
    return this.nodeImages.list(p, id);
  }

  @Post(':id/cordon')
  @HttpCode(200)
  cordon(@Caller() p: Principal, @Param('id') id: string) {
    return this.nodes.setCordoned(p, id, true);
  }

  @Post(':id/drain')
  @HttpCode(202)
  async drain(@Caller() p: Principal, @Param('id') id: string, @Body() body: DrainNodeInput, @Mutation() m: MutationOptions, @Res({ passthrough: true }) res: FastifyReply) {
    const r = await this.nodes.drain(p, id, body ?? {}, m);
    void res.header('location', `/v1/operations/${r.operation.id}`);
    return r;
  }

  @Post(':id/uncordon')
  @HttpCode(200)
  uncordon(@Caller() p: Principal, @Param('id') id: string) {
    return this.nodes.setCordoned(p, id, false);
  }
}
