import { IncomingMessage } from 'node:http';
import { Duplex } from 'node:stream';
import { Injectable } from '@nestjs/common';
import { DomainError } from '@hyperplane/domain';
import { WebSocketServer, WebSocket } from 'ws';
import { HTTP_STATUS } from '../common/problem';
import { AuthService } from '../projects/auth.service';
import { ConsoleService } from './console.service';

const PATH = /^\/v1\/partitions\/([^/?]+)\/console(?:\?.*)?$/;

/**
 * `GET /v1/partitions/{id}/console` upgraded to a WebSocket: binary frames both ways between the
 * client and the guest's serial port. The token comes in the Authorization header (or, for
 * browsers, which cannot set it, the `access_token` query parameter).
 */
@Injectable()
export class ConsoleWebSocket {
  private readonly wss = new WebSocketServer({ noServer: true });

  constructor(
    private readonly auth: AuthService,
    private readonly consoles: ConsoleService,
  ) {}

  /** Handles an HTTP upgrade; returns false when the path is not a console. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean {
    const m = PATH.exec(req.url ?? '');
    if (!m) return false;
    void this.accept(req, socket, head, decodeURIComponent(m[1]!));
    return true;
  }

  private async accept(req: IncomingMessage, socket: Duplex, head: Buffer, id: string): Promise<void> {
    let session;
    try {
      const url = new URL(req.url ?? '/', 'http://x');
      const token = url.searchParams.get('access_token');
      const principal = await this.auth.authenticate(req.headers.authorization ?? (token ? `Bearer ${token}` : undefined));
      const projectId = await this.auth.projectScope(principal, url.searchParams.get('project') ?? undefined);
      session = await this.consoles.attach(principal, projectId, id);
    } catch (e) {
      const status = e instanceof DomainError ? HTTP_STATUS[e.code] : 500;
      const body = JSON.stringify({ status, detail: e instanceof DomainError ? e.message : 'internal error', code: e instanceof DomainError ? e.code : 'INTERNAL' });
      socket.end(`HTTP/1.1 ${status} Error\r\ncontent-type: application/problem+json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
      return;
    }
    const s = session;
    this.wss.handleUpgrade(req, socket, head, (ws: WebSocket) => {
      s.on('data', (d) => ws.readyState === WebSocket.OPEN && ws.send(d));
      s.on('close', (error) => ws.close(error ? 1011 : 1000, error?.slice(0, 120)));
      ws.on('message', (d) => s.write(Buffer.isBuffer(d) ? d : Buffer.from(d as ArrayBuffer)));
      ws.on('close', () => s.close());
      ws.on('error', () => s.close());
    });
  }
}
