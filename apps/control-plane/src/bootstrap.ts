import { randomUUID } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import 'reflect-metadata';
import { LoggerService } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, NestFastifyApplication } from '@nestjs/platform-fastify';
import { DocumentBuilder, SwaggerModule } from '@nestjs/swagger';
import { MAX_BODY_BYTES } from '@hyperplane/domain';
import { Logger } from 'pino';
import { AppModule } from './app.module';
import { Config, servesApi } from './config';
import { createLogger } from './common/logger';
import { createDataSource, migrate } from './database/database';
import { createRedis } from './database/redis';
import { GrpcServer } from './grpc/grpc-server';
import { ProjectsService } from './projects/projects.service';
import { ConsoleWebSocket } from './partitions/console.websocket';

/** A running control plane. */
export interface ControlPlane {
  httpPort: number;
  grpcPort: number;
  logger: Logger;
  /** The first cluster-admin token, when this start created it. */
  adminToken: string | null;
  close(): Promise<void>;
}

/** Nest's own log lines, into the same JSON log. */
class PinoNestLogger implements LoggerService {
  constructor(private readonly pino: Logger) {}
  log(message: unknown, context?: string) { this.pino.debug({ context }, String(message)); }
  error(message: unknown, trace?: string, context?: string) { this.pino.error({ context, trace }, String(message)); }
  warn(message: unknown, context?: string) { this.pino.warn({ context }, String(message)); }
  debug(message: unknown, context?: string) { this.pino.debug({ context }, String(message)); }
  verbose(message: unknown, context?: string) { this.pino.trace({ context }, String(message)); }
}

/**
 * Starts the control plane: migrations, REST on Fastify, gRPC, the operation worker. On the first
 * start it creates a cluster-admin token and writes it to `<dataDir>/admin-token` (mode 0600).
 */
export async function startControlPlane(config: Config): Promise<ControlPlane> {
  const logger = createLogger(config.logLevel, 'control-plane');
  const dataSource = createDataSource(config.databaseUrl);
  await dataSource.initialize();
  const applied = await migrate(dataSource);
  if (applied.length) logger.info({ migrations: applied }, 'applied migrations');
  const redis = createRedis(config.redisUrl, 'hp-cp');
  const redisSub = createRedis(config.redisUrl, 'hp-cp-sub');
  for (const r of [redis, redisSub]) r.on('error', (err) => logger.warn({ err: err.message }, 'redis connection error'));

  const adapter = new FastifyAdapter({
    bodyLimit: MAX_BODY_BYTES,
    requestIdHeader: 'x-request-id',
    genReqId: () => randomUUID(),
    logger: false,
    routerOptions: { ignoreTrailingSlash: true },
  });
  const app = await NestFactory.create<NestFastifyApplication>(AppModule.with({ config, dataSource, redis, redisSub, logger }), adapter, {
    logger: new PinoNestLogger(logger),
    bodyParser: false, // Fastify's own JSON parser, configured below
  });
  const fastify = app.getHttpAdapter().getInstance();
  // JSON bodies as Fastify parses them (prototype-poisoning safe), except that an empty body with a
  // JSON content type means "no body" (curl -X DELETE -H 'content-type: application/json').
  const jsonParser = fastify.getDefaultJsonParser('error', 'error');
  fastify.removeContentTypeParser('application/json');
  fastify.addContentTypeParser('application/json', { parseAs: 'string', bodyLimit: MAX_BODY_BYTES }, (req, body, done) => {
    if (typeof body === 'string' && body.trim() === '') return done(null, undefined);
    jsonParser(req, String(body), done);
  });
  // Image uploads: the raw stream goes through to the image store, which writes it to a file and
  // enforces HYPERPLANE_MAX_IMAGE_BYTES itself (never buffered whole).
  fastify.addContentTypeParser('application/octet-stream', { bodyLimit: config.maxImageBytes }, (_req, payload, done) => done(null, payload));
  fastify.addHook('onRequest', (req, reply, done) => {
    void reply.header('x-request-id', req.id);
    (req as unknown as { t0: bigint }).t0 = process.hrtime.bigint();
    done();
  });
  // Every single-resource answer carries its etag as the ETag header too (for If-Match).
  fastify.addHook('preSerialization', (req, reply, payload: unknown, done) => {
    const etag = (payload as { etag?: unknown } | null)?.etag;
    if (typeof etag === 'string' && (req.method === 'GET' || req.method === 'PATCH' || req.method === 'PUT')) void reply.header('etag', etag);
    done(null, payload);
  });
  // One line per request: client errors at info, successes at debug (HYPERPLANE_LOG_LEVEL=debug shows
  // them), as Incus and Nomad do; server errors are logged where they happen.
  const accessDebug = logger.isLevelEnabled('debug');
  fastify.addHook('onResponse', (req, reply, done) => {
    const status = reply.statusCode;
    if (status >= 400 || accessDebug) {
      const ms = Number(process.hrtime.bigint() - (req as unknown as { t0: bigint }).t0) / 1e6;
      const line = { requestId: req.id, method: req.method, url: req.url, status, ms: Math.round(ms * 100) / 100 };
      if (status >= 400) logger.info(line, 'request');
      else logger.debug(line, 'request');
    }
    done();
  });

  const doc = SwaggerModule.createDocument(
    app,
    new DocumentBuilder()
      .setTitle('Hyperplane')
      .setDescription('Hypervisor control plane: projects, nodes, partitions and operations. Every mutating call accepts Idempotency-Key; errors are RFC 9457 problem+json.')
      .setVersion('v1')
      .addBearerAuth()
      .build(),
  );
  SwaggerModule.setup('docs', app, doc, { jsonDocumentUrl: 'openapi.json', yamlDocumentUrl: 'openapi.yaml' });

  const consoleWs = app.get(ConsoleWebSocket);
  fastify.server.on('upgrade', (req, socket, head) => {
    if (!servesApi(config.role) || !consoleWs.handleUpgrade(req, socket, head)) socket.destroy();
  });
  app.enableShutdownHooks();
  await app.init();
  const grpcPort = await app.get(GrpcServer).start();
  await app.listen({ port: config.httpPort, host: config.bindAddress });
  const address = fastify.server.address();
  const httpPort = typeof address === 'object' && address ? address.port : config.httpPort;

  const adminToken = await app.get(ProjectsService).bootstrapClusterAdmin();
  if (adminToken) {
    mkdirSync(config.dataDir, { recursive: true });
    writeFileSync(join(config.dataDir, 'admin-token'), adminToken + '\n', { mode: 0o600 });
    logger.info({ file: join(config.dataDir, 'admin-token') }, 'created the first cluster-admin token');
  }
  logger.info({ httpPort, grpcPort, role: config.role }, 'control plane ready');

  let closing: Promise<void> | undefined;
  return {
    httpPort,
    grpcPort,
    logger,
    adminToken,
    close: () =>
      (closing ??= (async () => {
        await app.close();
        await Promise.allSettled([redis.quit(), redisSub.quit()]);
        await dataSource.destroy();
      })()),
  };
}
