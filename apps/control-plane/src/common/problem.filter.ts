import { ArgumentsHost, Catch, ExceptionFilter, HttpException, Inject } from '@nestjs/common';
import { DomainError } from '@hyperplane/domain';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { Logger } from 'pino';
import { httpProblem, Problem, toProblem } from './problem';
import { LOGGER } from './tokens';

/** Maps Fastify's own request errors (parsing, size, media type) to problems. */
export function fastifyErrorProblem(err: { statusCode?: number; code?: string; message: string }): Problem | null {
  switch (err.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return httpProblem(400, `malformed JSON body: ${err.message}`, 'INVALID_ARGUMENT', [{ field: '', message: 'body is not valid JSON' }]);
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return httpProblem(413, 'request body is larger than 1 MiB', 'PAYLOAD_TOO_LARGE');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return httpProblem(415, `unsupported Content-Type: ${err.message}`, 'INVALID_ARGUMENT');
  }
  if (err instanceof SyntaxError || (err.statusCode === 400 && /JSON/i.test(err.message))) {
    return httpProblem(400, `malformed JSON body: ${err.message}`, 'INVALID_ARGUMENT', [{ field: '', message: 'body is not valid JSON' }]);
  }
  if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) return httpProblem(err.statusCode, err.message, 'INVALID_ARGUMENT');
  return null;
}

/** The REST transport's single exception filter. */
@Catch()
export class ProblemFilter implements ExceptionFilter {
  constructor(@Inject(LOGGER) private readonly log: Logger) {}

  catch(exception: unknown, host: ArgumentsHost): void {
    const ctx = host.switchToHttp();
    const reply = ctx.getResponse<FastifyReply>();
    const req = ctx.getRequest<FastifyRequest>();
    let problem: Problem;
    if (exception instanceof DomainError) {
      problem = toProblem(exception, req.url);
    } else if (exception instanceof HttpException) {
      const status = exception.getStatus();
      const code = status === 404 ? 'NOT_FOUND' : status === 413 ? 'PAYLOAD_TOO_LARGE' : status < 500 ? 'INVALID_ARGUMENT' : 'INTERNAL';
      const detail = status === 404 ? `no route ${req.method} ${req.url.split('?')[0]}` : exception.message;
      problem = fastifyErrorProblem({ statusCode: status, message: exception.message, code: (exception.cause as { code?: string } | undefined)?.code }) ?? httpProblem(status, detail, code);
      if (status === 404) problem = httpProblem(404, detail, code);
    } else {
      problem = fastifyErrorProblem(exception as Error) ?? toProblem(exception, req.url);
    }
    if (problem.status >= 500) this.log.error({ err: exception, requestId: req.id, url: req.url }, 'request failed');
    void reply.status(problem.status).header('content-type', 'application/problem+json').send(problem);
  }
}
