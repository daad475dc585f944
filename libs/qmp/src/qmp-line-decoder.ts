import { StringDecoder } from 'node:string_decoder';
import { QmpProtocolError } from './qmp-errors';

/**
 * Splits a byte stream into QMP's newline-delimited messages. Copes with a message split across
 * chunks (even inside a UTF-8 character) and with several messages in one chunk. Blank lines and
 * the `\r` of QEMU's `\r\n` are dropped. Throws `QmpProtocolError` when a line grows beyond
 * `maxLineLength` characters, so a peer that never sends a newline cannot exhaust memory.
 */
export class QmpLineDecoder {
  private readonly utf8 = new StringDecoder('utf8');
  private buffer = '';

  constructor(private readonly maxLineLength: number) {}

  /** Feeds one chunk; returns the complete lines it finished, in order. */
  push(chunk: Buffer | string): string[] {
    const scanFrom = this.buffer.length;
    this.buffer += typeof chunk === 'string' ? chunk : this.utf8.write(chunk);
    const lines: string[] = [];
    let start = 0;
    let newline = this.buffer.indexOf('\n', scanFrom);
    while (newline !== -1) {
      const line = this.buffer.slice(start, newline).trim();
      if (line.length > this.maxLineLength) throw this.tooLong();
      if (line !== '') lines.push(line);
      start = newline + 1;
      newline = this.buffer.indexOf('\n', start);
    }
    this.buffer = this.buffer.slice(start);
    if (this.buffer.length > this.maxLineLength) throw this.tooLong();
    return lines;
  }

  /** Characters received after the last newline (an unfinished message). */
  get pendingLength(): number {
    return this.buffer.length;
  }

  private tooLong(): QmpProtocolError {
    return new QmpProtocolError(`QMP message longer than ${this.maxLineLength} characters without a newline`);
  }
}
