import { Body, Controller, Delete, Get, HttpCode, Param, Patch, Post, Query } from '@nestjs/common';
import { ApiBearerAuth, ApiTags } from '@nestjs/swagger';
import { Principal } from '@hyperplane/domain';
import { Caller } from '../common/auth';
import { Mutation } from '../common/rest';
import { MutationOptions } from '../common/transactions';
import { CreateProjectInput, CreateTokenInput, UpdateProjectInput } from './projects.dto';
import { ProjectsService } from './projects.service';

/** REST door for projects and tokens. */
@ApiTags('projects')
@ApiBearerAuth()
@Controller('v1/projects')
export class ProjectsController {
  constructor(private readonly projects: ProjectsService) {}

  @Post()
  @HttpCode(201)
  create(@Caller() p: Principal, @Body() body: CreateProjectInput, @Mutation() m: MutationOptions) {
    return this.projects.create(p, body, m);
  }

  @Get()
  list(@Caller() p: Principal, @Query('pageSize') pageSize?: string, @Query('pageToken') pageToken?: string) {
    return this.projects.list(p, pageSize, pageToken);
  }

  @Get(':project')
  get(@Caller() p: Principal, @Param('project') project: string) {
    return this.projects.get(p, project);
  }

  @Patch(':project')
  update(@Caller() p: Principal, @Param('project') project: string, @Body() body: UpdateProjectInput, @Mutation() m: MutationOptions) {
    return this.projects.update(p, project, body, m);
  }

  @Post(':project/tokens')
  @HttpCode(201)
  createToken(@Caller() p: Principal, @Param('project') project: string, @Body() body: CreateTokenInput, @Mutation() m: MutationOptions) {
    return this.projects.createToken(p, project, body, m);
  }

  @Get(':project/tokens')
  listTokens(@Caller() p: Principal, @Param('project') project: string, @Query('pageSize') pageSize?: string, @Query('pageToken') pageToken?: string) {
    return this.projects.listTokens(p, project, pageSize, pageToken);
  }

  @Delete(':project/tokens/:tokenId')
  @HttpCode(204)
  async deleteToken(@Caller() p: Principal, @Param('project') project: string, @Param('tokenId') tokenId: string): Promise<void> {
    await this.projects.deleteToken(p, project, tokenId);
  }
}
