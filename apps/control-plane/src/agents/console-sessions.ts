import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { Injectable } from '@nestjs/common';
import { UnavailableError } from '@hyperplane/domain';
import { agentV1 } from '@hyperplane/proto';
import { AgentSessions } from './agent-sessions';

/** One interactive console session: bytes in, bytes out, until closed. */
export interface ConsoleSession {
  readonly id: string;
  write(data: Buffer): void;
  close(): void;
  on(event: 'data', fn: (data: Buffer) => void): this;
  on(event: 'close', fn: (error?: string) => void): this;
}

class Session extends EventEmitter implements ConsoleSession {
  private ended = false;
  constructor(
    readonly id: string,
    private readonly nodeId: string,
    private readonly sessions: AgentSessions,
    private readonly forget: (id: string) => void,
  ) {
    super();
  }

  write(data: Buffer): void {
    if (!this.ended) this.sessions.send(this.nodeId, { consoleInput: { sessionId: this.id, data } });
  }

  close(): void {
    if (this.ended) return;
    this.sessions.send(this.nodeId, { consoleClose: { sessionId: this.id } });
    this.end();
  }

  /** Delivers output from the agent. */
  deliver(m: agentV1.ConsoleOutput__Output): void {
    if (m.data && m.data.length) this.emit('data', Buffer.from(m.data));
    if (m.closed) this.end(m.error || undefined);
  }

  end(error?: string): void {
    if (this.ended) return;
    this.ended = true;
    this.forget(this.id);
    this.emit('close', error);
  }
}

/**
 * Interactive serial consoles, multiplexed over the node's agent stream. A session is served by
 * the replica that holds the node's stream (every replica when there is one).
 */
@Injectable()
export class ConsoleSessions {
  private readonly open = new Map<string, Session>();

  constructor(private readonly sessions: AgentSessions) {}

  /** Opens a session to a partition's serial port on its node. */
  attach(nodeId: string, partitionId: string): ConsoleSession {
    if (!this.sessions.isLocal(nodeId)) throw new UnavailableError('the node is not connected to this control-plane replica; retry, or connect to the replica that holds it');
    const s = new Session(randomUUID(), nodeId, this.sessions, (id) => this.open.delete(id));
    this.open.set(s.id, s);
    this.sessions.send(nodeId, { consoleOpen: { sessionId: s.id, partitionId } });
    return s;
  }

  /** Output from an agent for one of the sessions. */
  deliver(m: agentV1.ConsoleOutput__Output): void {
    this.open.get(m.sessionId ?? '')?.deliver(m);
  }

  /** Ends every session of a node whose stream closed. */
  closeAll(reason: string): void {
    for (const s of [...this.open.values()]) s.end(reason);
  }
}
