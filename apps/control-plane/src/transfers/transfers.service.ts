import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { Inject, Injectable, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import {
  CancelledError,
  DeadlineExceededError,
  DomainError,
  FailedPreconditionError,
  NotFoundError,
  PayloadTooLargeError,
  PermissionDeniedError,
  UUID_RE,
  UnavailableError,
  ValidationError,
  uuidv7,
} from '@hyperplane/domain';
import { BlockDigest } from '@hyperplane/disk-formats';
import { Logger } from 'pino';
import { agentV1 } from '@hyperplane/proto';
import { agentFailure } from '../agents/agent-errors';
import { AgentSessions, CommandBody } from '../agents/agent-sessions';
import { LOGGER } from '../common/tokens';
import { TransferFiles } from './transfer-files';
import { TransferDirection, TransferRepository, TransferRow } from './transfer.repository';

/** A transfer as the node gets it in its command: the id and the one-time token. */
export interface TransferHandle {
  id: string;
  token: string;
}

/** What `run` moves and how. */
export interface TransferRequest {
  direction: TransferDirection;
  nodeId: string;
  /**
   * to-node: the file the control plane serves (it must not change until `run` returns).
   * from-node: where it writes (must not exist). A function is called with the transfer's id once
   * the transfer is recorded, and returns the path (e.g. a snapshot link named after the transfer).
   */
  path: string | ((transferId: string) => Promise<string>);
  /** from-node: refuse more bytes than this. */
  maxBytes?: number;
  /** to-node: the file's size (progress is measured against it). */
  sizeBytes?: number;
  /** The command that makes the node call FetchFile / SendFile with this transfer. */
  command: (t: TransferHandle) => CommandBody;
  /** Aborting cancels the transfer (the serving side stops, a partial file is removed). */
  signal?: AbortSignal;
  /** Bytes moved so far and the total when known, about twice a second while it moves. */
  onProgress?: (bytes: number, totalBytes: number | null) => Promise<void> | void;
  /** Give up when no byte moved for this long (default 60 s). */
  stallMs?: number;
}

/** What a finished transfer moved, and the node's command result payload. */
export interface TransferOutcome {
  transfer: TransferRow;
  payload: string;
}

/** An unclaimed token is good for this long. */
const TOKEN_TTL_MS = 10 * 60_000;
/** How long a node may take to answer a transfer command at most (the stall check ends stuck ones sooner). */
const COMMAND_TIMEOUT_MS = 6 * 3600_000;
const POLL_MS = 500;
const DEFAULT_STALL_MS = 60_000;
/** Final transfers are forgotten after a day. */
const PRUNE_AFTER_MS = 24 * 3600_000;
/** A live transfer without progress for this long lost its replica (the waiting operation gave up long before). */
const ABANDONED_AFTER_MS = 3600_000;

const hashToken = (token: string) => createHash('sha256').update(token).digest('hex');

/**
 * The domain error of a node's failed transfer command: a refused path is the caller's input
 * (INVALID_ARGUMENT on `path`), a file over the limit PAYLOAD_TOO_LARGE, the rest as agentFailure.
 */
export function commandError(r: agentV1.CommandResult__Output, what: string): DomainError {
  const m = r.errorMessage || 'the node gave no reason';
  if (r.errorCode === 'INVALID_ARGUMENT') return new ValidationError([{ field: 'path', message: m }], m);
  if (r.errorCode === 'PAYLOAD_TOO_LARGE') return new PayloadTooLargeError(m);
  return agentFailure(r, what);
}

/**
 * File transfers between the control plane and nodes, on the agent gRPC port (agent.proto "Image
 * transfers"). A caller asks `run` to move one file: a one-time token is issued and recorded
 * (hashed) in PostgreSQL, the node gets it in a command and opens FetchFile or SendFile with it,
 * whichever replica serves that call records the bytes moved, and `run` follows the row (progress,
 * stall, cancel) until the node's command answers. Reusable by any operation that moves a file:
 * image import, image distribution, snapshot export.
 */
@Injectable()
export class TransfersService implements OnModuleInit, OnModuleDestroy {
  private pruneTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly repo: TransferRepository,
    private readonly files: TransferFiles,
    private readonly sessions: AgentSessions,
    @Inject(LOGGER) private readonly log: Logger,
  ) {}

  onModuleInit(): void {
    this.pruneTimer = setInterval(() => void this.repo.prune(PRUNE_AFTER_MS, ABANDONED_AFTER_MS).catch(() => undefined), 600_000);
    this.pruneTimer.unref();
  }

  onModuleDestroy(): void {
    if (this.pruneTimer) clearInterval(this.pruneTimer);
  }

  /** Moves one file between the control plane and a node; see TransferRequest. Throws the node's error, a stall or a cancel. */
  async run(req: TransferRequest): Promise<TransferOutcome> {
    if (req.signal?.aborted) throw new CancelledError('cancelled');
    const token = randomBytes(32).toString('base64url');
    const id = uuidv7();
    const prepared = typeof req.path === 'function';
    const t = await this.repo.insert({
      id,
      tokenHash: hashToken(token),
      direction: req.direction,
      nodeId: req.nodeId,
      path: typeof req.path === 'string' ? req.path : '',
      maxBytes: req.maxBytes ?? null,
      sizeBytes: req.sizeBytes ?? null,
      // A path still to be prepared: not claimable until it is set.
      ttlMs: prepared ? 0 : TOKEN_TTL_MS,
    });
    if (typeof req.path === 'function') {
      try {
        await this.repo.setPath(id, await req.path(id), TOKEN_TTL_MS);
      } catch (e) {
        await this.repo.finish(id, 'failed', { error: (e as Error).message }).catch(() => undefined);
        throw e;
      }
    }
    const stallMs = req.stallMs ?? DEFAULT_STALL_MS;
    let answered: { ok: true; payload: string } | { ok: false; error: unknown } | undefined;
    const command = this.sessions.command(req.nodeId, req.command({ id: t.id, token }), COMMAND_TIMEOUT_MS).then(
      (r) => {
        answered = r.ok ? { ok: true, payload: r.payload ?? '' } : { ok: false, error: commandError(r, req.direction === 'to-node' ? `fetching a file to node ${req.nodeId}` : `receiving a file from node ${req.nodeId}`) };
      },
      (e: unknown) => {
        answered = { ok: false, error: e };
      },
    );
    let lastBytes = -1;
    let lastMove = Date.now();
    const aborted = abortOf(req.signal);
    try {
      for (;;) {
        await Promise.race([command, sleep(POLL_MS), aborted]);
        if (req.signal?.aborted) throw new CancelledError('cancelled');
        const row = await this.repo.get(t.id);
        const bytes = Number(row?.bytes_done ?? 0);
        if (bytes !== lastBytes) {
          lastBytes = bytes;
          lastMove = Date.now();
          await req.onProgress?.(bytes, row?.size_bytes === null || row?.size_bytes === undefined ? null : Number(row.size_bytes));
        }
        if (answered) {
          if (!answered.ok) throw answered.error;
          const done = (await this.repo.finish(t.id, 'done')) ?? (await this.repo.get(t.id))!;
          if (done.state !== 'done') throw new UnavailableError(`transfer ${t.id} ended ${done.state}: ${done.error ?? 'no reason recorded'}`);
          return { transfer: done, payload: answered.payload };
        }
        if (row?.state === 'issued' && row.expires_at.getTime() < Date.now() - 1000) throw new DeadlineExceededError(`the node did not start transfer ${t.id} within ${TOKEN_TTL_MS / 1000} s`);
        if (row && row.state !== 'issued' && row.state !== 'streaming' && row.state !== 'done') throw new UnavailableError(`transfer ${t.id} ${row.state}: ${row.error ?? 'no reason recorded'}`);
        if (Date.now() - lastMove > stallMs) throw new DeadlineExceededError(`transfer ${t.id} moved no byte for ${Math.round(stallMs / 1000)} s`);
      }
    } catch (e) {
      const cancelled = e instanceof CancelledError;
      await this.repo.finish(t.id, cancelled ? 'cancelled' : 'failed', { error: (e as Error).message }).catch(() => undefined);
      throw e;
    }
  }

  /**
   * FetchFile, serving side: checks the token and claims the transfer (once). Returns the file to
   * stream and its expected size.
   */
  async openFetch(id: string, token: string): Promise<TransferRow> {
    return this.claim(id, token, 'to-node');
  }

  /** Records bytes served or received; false when the transfer was cancelled (stop streaming). */
  async progress(id: string, bytes: number): Promise<boolean> {
    return (await this.repo.progress(id, bytes)) === 'streaming';
  }

  /** Ends a served transfer. */
  async endServe(id: string, error: Error | undefined, bytes: number): Promise<void> {
    await this.repo.finish(id, error ? 'failed' : 'done', { bytes, error: error?.message });
  }

  /**
   * SendFile, receiving side: checks the token, claims the transfer, and writes the bytes of
   * `chunks` to its path (0600, new file), within its size limit, hashing as it writes. The sender's
   * digest (last message) must match. Any failure removes the file and fails the transfer.
   */
  async receive(id: string, token: string, announcedBytes: number, chunks: AsyncIterable<{ data?: Buffer; digest?: string }>): Promise<{ bytes: number; digest: string }> {
    const t = await this.claim(id, token, 'from-node');
    const max = t.max_bytes === null ? Number.MAX_SAFE_INTEGER : Number(t.max_bytes);
    if (Number.isSafeInteger(announcedBytes) && announcedBytes > 0) await this.repo.setSize(id, announcedBytes);
    const digest = new BlockDigest();
    let senderDigest = '';
    let lastReport = 0;
    let out: Awaited<ReturnType<TransferFiles['create']>> | undefined;
    try {
      out = await this.files.create(t.path);
      if (announcedBytes > max) throw new PayloadTooLargeError(`the file is ${announcedBytes} bytes, more than the ${max} allowed (HYPERPLANE_MAX_IMAGE_BYTES)`);
      for await (const c of chunks) {
        if (c.digest) senderDigest = c.digest;
        if (!c.data?.length) continue;
        if (digest.bytes + c.data.length > max) throw new PayloadTooLargeError(`the file is larger than the ${max} bytes allowed (HYPERPLANE_MAX_IMAGE_BYTES)`);
        digest.update(c.data);
        await this.files.write(out, c.data);
        if (Date.now() - lastReport > POLL_MS) {
          lastReport = Date.now();
          if (!(await this.progress(id, digest.bytes))) throw new CancelledError(`transfer ${id} was cancelled`);
        }
      }
      await this.files.close(out, t.path);
      const got = digest.finish();
      if (got.bytes !== announcedBytes) throw new UnavailableError(`the node announced ${announcedBytes} bytes but sent ${got.bytes}`);
      if (senderDigest !== got.digest) throw new UnavailableError(`the node's digest ${senderDigest || '(none)'} does not match what arrived (${got.digest})`);
      const done = await this.repo.finish(id, 'done', { bytes: got.bytes, sizeBytes: got.bytes, digest: got.digest });
      if (!done) throw new CancelledError(`transfer ${id} was cancelled`);
      return { bytes: got.bytes, digest: got.digest };
    } catch (e) {
      await this.files.discard(out, t.path);
      await this.repo.finish(id, e instanceof CancelledError ? 'cancelled' : 'failed', { bytes: digest.bytes, error: (e as Error).message }).catch(() => undefined);
      this.log.warn({ transferId: id, err: e }, 'file from a node not received');
      throw e;
    }
  }

  /** The file a FetchFile call streams, in chunks. */
  readFile(t: TransferRow, chunkBytes: number) {
    return this.files.read(t.path, chunkBytes);
  }

  /** Ids of transfers still in progress among `ids` (for sweeping files they use). */
  live(ids: string[]): Promise<Set<string>> {
    return this.repo.live(ids);
  }

  private async claim(id: string, token: string, direction: TransferDirection): Promise<TransferRow> {
    if (!UUID_RE.test(id)) throw new NotFoundError('transfer', id);
    const t = await this.repo.get(id);
    if (!t) throw new NotFoundError('transfer', id);
    const given = Buffer.from(hashToken(token ?? ''), 'hex');
    if (!timingSafeEqual(given, Buffer.from(t.token_hash, 'hex'))) throw new PermissionDeniedError(`transfer token for ${id} is not valid`);
    if (t.direction !== direction) throw new FailedPreconditionError(`transfer ${id} goes ${t.direction}, not ${direction}`);
    const claimed = await this.repo.claim(id);
    if (!claimed) throw new FailedPreconditionError(`transfer ${id} was already used or has expired (${t.state})`);
    return claimed;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}

function abortOf(signal: AbortSignal | undefined): Promise<void> {
  if (!signal) return new Promise(() => undefined);
  return new Promise((r) => (signal.aborted ? r() : signal.addEventListener('abort', () => r(), { once: true })));
}
