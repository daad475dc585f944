/**
 * Interactive serial consoles over the agent stream: each `console_open` connects to the
 * partition's serial port (QEMU: its `console.sock`), bytes flow both ways as ConsoleInput /
 * ConsoleOutput, and `console_close` or the end of the port closes the session.
 *
 * One session per partition at a time. QEMU's chardev socket server serves a single client: a
 * second connection would sit unanswered in the listen backlog until the first one closes. So the
 * agent refuses a second `console_open` for a partition that has an open session, at once, with
 * one ConsoleOutput{closed: true, error: "... in use by another session"}; the caller may retry
 * after the first session closed.
 */
import type { Duplex } from 'node:stream';
import type { agentV1 } from '@hyperplane/proto';
import type { Logger } from 'pino';
import type { PartitionDriver } from './drivers/driver';

interface Session {
  id: string;
  partitionId: string;
  port: Duplex;
  closed: boolean;
}

/** The open console sessions of one node. */
export class ConsoleSessions {
  private readonly sessions = new Map<string, Session>();
  private readonly byPartition = new Map<string, string>();

  constructor(
    private readonly driver: PartitionDriver,
    private readonly send: (output: agentV1.ConsoleOutput) => void,
    private readonly log: Logger,
  ) {}

  /** Number of open sessions. */
  get size(): number {
    return this.sessions.size;
  }

  /**
   * Opens a session. `knows(partitionId)` tells whether the partition is on this node. Errors are
   * answered with one closed ConsoleOutput carrying `error`.
   */
  open(sessionId: string, partitionId: string, knows: (id: string) => boolean): void {
    const refuse = (error: string) => this.send({ sessionId, data: Buffer.alloc(0), closed: true, error });
    if (!sessionId) return;
    if (this.sessions.has(sessionId)) return refuse(`console session ${sessionId} is already open`);
    if (!knows(partitionId)) return refuse(`partition ${partitionId} is not on this node`);
    const holder = this.byPartition.get(partitionId);
    if (holder) {
      return refuse(`the console of partition ${partitionId} is in use by another session (its serial port serves one client at a time); retry once that session closed`);
    }
    let port: Duplex;
    try {
      port = this.driver.openConsole(partitionId);
    } catch (error) {
      return refuse((error as Error).message);
    }
    const session: Session = { id: sessionId, partitionId, port, closed: false };
    this.sessions.set(sessionId, session);
    this.byPartition.set(partitionId, sessionId);
    port.on('data', (data: Buffer) => {
      if (!session.closed) this.send({ sessionId, data, closed: false, error: '' });
    });
    port.on('error', (error: Error) => this.end(session, `console of partition ${partitionId}: ${error.message}`));
    port.on('end', () => this.end(session, ''));
    port.on('close', () => this.end(session, ''));
    this.log.info({ partition: partitionId, session: sessionId }, 'console session opened');
  }

  /** Bytes typed by the user; unknown or closed sessions are ignored. */
  input(sessionId: string, data: Buffer | undefined): void {
    const session = this.sessions.get(sessionId);
    if (!session || session.closed || !data?.length) return;
    session.port.write(data);
  }

  /** Closes a session on request; answers with ConsoleOutput{closed: true}. */
  close(sessionId: string): void {
    const session = this.sessions.get(sessionId);
    if (session) this.end(session, '');
  }

  /** Closes every session WITHOUT answering (the stream they belong to is gone). */
  closeAll(): void {
    for (const session of [...this.sessions.values()]) this.end(session, '', false);
  }

  private end(session: Session, error: string, answer = true): void {
    if (session.closed) return;
    session.closed = true;
    this.sessions.delete(session.id);
    if (this.byPartition.get(session.partitionId) === session.id) this.byPartition.delete(session.partitionId);
    session.port.destroy();
    if (answer) this.send({ sessionId: session.id, data: Buffer.alloc(0), closed: true, error });
    this.log.info({ partition: session.partitionId, session: session.id, error: error || undefined }, 'console session closed');
  }
}
