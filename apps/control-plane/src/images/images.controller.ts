import { Body, Controller, Delete, Get, HttpCode, Param, Post, Put, Query, Req, Res } from '@nestjs/common';
import { ApiBearerAuth, ApiConsumes, ApiQuery, ApiTags } from '@nestjs/swagger';
import { Principal } from '@hyperplane/domain';
import type { Readable } from 'node:stream';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { Caller } from '../common/auth';
import { Mutation } from '../common/rest';
import { MutationOptions } from '../common/transactions';
import { AuthService } from '../projects/auth.service';
import { ImagesService } from './images.service';

/** REST door for the image library. */
@ApiTags('images')
@ApiBearerAuth()
@ApiQuery({ name: 'project', required: false, description: 'Project id or name (cluster-admin tokens only)' })
@Controller('v1/images')
export class ImagesController {
  constructor(
    private readonly images: ImagesService,
    private readonly auth: AuthService,
  ) {}

  /**
   * Registers an image: the file as an `application/octet-stream` body (`?name=`; 201), or, with an
   * `application/json` body `{"name","node","path"}`, a file already in a node's image store (202
   * with the image, state `importing`, and the operation that brings it in).
   */
  @Post()
  @HttpCode(201)
  @ApiConsumes('application/octet-stream', 'application/json')
  @ApiQuery({ name: 'name', required: false, description: 'upload: DNS label, unique in the project' })
  async upload(@Caller() p: Principal, @Req() req: FastifyRequest, @Res({ passthrough: true }) res: FastifyReply, @Mutation() m: MutationOptions, @Query('name') name?: string, @Query('project') project?: string) {
    const projectId = await this.auth.projectScope(p, project);
    if (req.headers['content-type']?.startsWith('application/json')) {
      const started = await this.images.startImport(p, projectId, req.body, m);
      void res.status(202).header('location', `/v1/operations/${started.operation.id}`);
      return started;
    }
    const body = req.headers['content-type']?.startsWith('application/octet-stream') ? (req.body as Readable) : undefined;
    try {
      const view = await this.images.upload(p, projectId, name, body, m);
      void res.header('location', `/v1/images/${view.id}`);
      return view;
    } catch (e) {
      // A refused upload that was not read to the end: answer, then drop the connection rather than read gigabytes.
      if (!req.raw.complete) void res.header('connection', 'close');
      throw e;
    }
  }

  @Get()
  @ApiQuery({ name: 'tag', required: false, description: 'repeatable; every tag must be present' })
  @ApiQuery({ name: 'label', required: false, description: 'key:value, repeatable' })
  @ApiQuery({ name: 'text', required: false, description: 'words in the name, description, content and tags' })
  @ApiQuery({ name: 'filter', required: false, description: 'PATH OP VALUE, repeatable, e.g. hardware.minMemoryMiB>=2048' })
  @ApiQuery({ name: 'compatibleWith', required: false, description: 'node id or name' })
  @ApiQuery({ name: 'includeExpired', required: false })
  async search(@Caller() p: Principal, @Query() q: Record<string, unknown>) {
    const projectId = await this.auth.projectScope(p, q.project as string | undefined);
    return this.images.search(p, projectId, q);
  }

  @Get(':id')
  async get(@Caller() p: Principal, @Param('id') id: string, @Query('project') project?: string) {
    return this.images.get(p, await this.auth.projectScope(p, project), id);
  }

  @Delete(':id')
  @HttpCode(204)
  async delete(@Caller() p: Principal, @Param('id') id: string, @Mutation() m: MutationOptions, @Query('project') project?: string): Promise<void> {
    await this.images.delete(p, await this.auth.projectScope(p, project), id, m);
  }

  @Get(':id/metadata')
  async getMetadata(@Caller() p: Principal, @Param('id') id: string, @Res({ passthrough: true }) res: FastifyReply, @Query('project') project?: string) {
    const r = await this.images.getMetadata(p, await this.auth.projectScope(p, project), id);
    void res.header('etag', r.etag);
    return r.metadata;
  }

  @Put(':id/metadata')
  async putMetadata(@Caller() p: Principal, @Param('id') id: string, @Body() body: Record<string, unknown>, @Mutation() m: MutationOptions, @Query('project') project?: string) {
    return this.images.putMetadata(p, await this.auth.projectScope(p, project), id, body, m);
  }

  @Get(':id/file')
  async file(@Caller() p: Principal, @Param('id') id: string, @Res() res: FastifyReply, @Query('project') project?: string) {
    const f = await this.images.file(p, await this.auth.projectScope(p, project), id);
    await res
      .header('content-type', 'application/octet-stream')
      .header('content-length', String(f.bytes))
      .header('content-disposition', `attachment; filename="${f.row.name}.${f.row.format}"`)
      .header('etag', `"${f.row.version}"`)
      .send(f.stream);
  }
}
