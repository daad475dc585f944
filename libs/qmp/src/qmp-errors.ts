/** Base of every error this library throws, so callers can catch QMP failures as one family. */
export abstract class QmpError extends Error {}

/**
 * The monitor connection is gone (peer closed it, socket error, or `close()` was called) or could
 * not be opened. Every command still waiting rejects with it, and every later command rejects with
 * it at once; `cause` holds the underlying socket or protocol error when there is one.
 */
export class QmpDisconnectedError extends QmpError {
  override readonly name = 'QmpDisconnectedError';

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/**
 * An operation got no answer in time: a command (`operation` is its name), the connect handshake
 * (`operation` is "QMP handshake"), or a wait for an event ("event NAME"). The connection stays
 * open; a reply that arrives later is dropped.
 */
export class QmpTimeoutError extends QmpError {
  override readonly name = 'QmpTimeoutError';

  constructor(
    readonly operation: string,
    readonly timeoutMs: number,
  ) {
    super(`${operation}: no answer from QEMU within ${timeoutMs} ms`);
  }
}

/** Error classes QEMU 7.2 reports in `{"error": {"class": ...}}`; other strings are possible. */
export type QmpErrorClass =
  | 'GenericError'
  | 'CommandNotFound'
  | 'DeviceNotActive'
  | 'DeviceNotFound'
  | 'KVMMissingCap'
  | (string & {});

/** QEMU answered a command with `{"error": {"class", "desc"}}`: QEMU is alive, the command failed. */
export class QmpCommandError extends QmpError {
  override readonly name = 'QmpCommandError';

  constructor(
    readonly command: string,
    readonly errorClass: QmpErrorClass,
    readonly desc: string,
  ) {
    super(`${command} failed: ${errorClass}: ${desc}`);
  }
}

/**
 * The peer sent something that is not QMP: a line that is not JSON, not an object, a bad greeting,
 * a reply without an id, or a line longer than the configured limit. The client closes the
 * connection when it sees one, since nothing after it can be trusted.
 */
export class QmpProtocolError extends QmpError {
  override readonly name = 'QmpProtocolError';
}
