import { Controller, Get, Res } from '@nestjs/common';
import { ApiTags } from '@nestjs/swagger';
import type { FastifyReply } from 'fastify';
import { Public } from '../common/auth';
import { HealthService } from './health.service';

/** Liveness and readiness probes; no token needed. */
@ApiTags('health')
@Controller()
export class HealthController {
  constructor(private readonly health: HealthService) {}

  /** The process is up. */
  @Public()
  @Get('healthz')
  healthz() {
    return { status: 'ok' };
  }

  /** PostgreSQL and Redis answer. */
  @Public()
  @Get('readyz')
  async readyz(@Res({ passthrough: true }) res: FastifyReply) {
    const r = await this.health.check();
    if (r.status !== 'ok') void res.status(503);
    return r;
  }
}
