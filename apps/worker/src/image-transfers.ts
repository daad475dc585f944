/**
 * The agent's side of image transfers (agent.proto, "Image transfers"): `image_fetch` puts a
 * control-plane library image into the node's store through `FetchFile`, `image_send` sends a
 * file of the store to the control plane through `SendFile`. Both calls go to the control plane's
 * gRPC port, authorised by the one-time token in the command.
 *
 * A fetch writes a temporary file (0600) in `library/`, hashing as it writes; only when the size
 * and the digest equal what the control plane recorded, and the disk-formats checks pass with the
 * format pinned, is it fsynced and renamed into place. Anything else removes it, and an agent that
 * starts removes what a crash left. Concurrent fetches of one image share one transfer.
 */
import { once } from 'node:events';
import { createReadStream, createWriteStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as grpc from '@grpc/grpc-js';
import { BlockDigest, isDigest } from '@hyperplane/disk-formats';
import type { agentV1 } from '@hyperplane/proto';
import type { Logger } from 'pino';
import type { ImageFormat, NodeImageStore } from './drivers/driver';

/** A transfer that moves no byte for this long is given up. */
export const TRANSFER_STALL_MS = 60_000;

/** Bytes per SendFile message (the control plane accepts messages up to 4 MiB). */
const SEND_CHUNK_BYTES = 1024 * 1024;

const FORMATS: readonly string[] = ['qcow2', 'vhdx', 'raw'];

/** What ImageTransfers needs. */
export interface ImageTransfersOptions {
  /** The node's store; undefined for hollow nodes (their fetches succeed without moving bytes). */
  store: NodeImageStore | undefined;
  client: agentV1.AgentServiceClient;
  log: Logger;
  /** Called after a fetch added a file to the store (so the control plane hears at once). */
  onStoreChanged: () => void;
  stallMs?: number;
}

/** An error with a protocol error code (agent.proto CommandResult.error_code). */
function coded(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

/** Runs `image_fetch` and `image_send` commands. */
export class ImageTransfers {
  private readonly fetches = new Map<string, Promise<string>>();

  constructor(private readonly options: ImageTransfersOptions) {}

  /** True for the commands this class runs. */
  handles(cmd: agentV1.Command__Output): boolean {
    return cmd.body === 'imageFetch' || cmd.body === 'imageSend';
  }

  /** Runs one command; resolves with its result (never rejects). */
  async command(cmd: agentV1.Command__Output): Promise<agentV1.CommandResult> {
    const commandId = cmd.id ?? '';
    try {
      const payload = cmd.body === 'imageFetch' ? await this.fetch(cmd.imageFetch!) : await this.send(cmd.imageSend!);
      return { commandId, ok: true, errorCode: '', errorMessage: '', payload };
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      return { commandId, ok: false, errorCode: typeof code === 'string' && /^[A-Z_]+$/.test(code) ? code : 'INTERNAL', errorMessage: (error as Error).message, payload: '' };
    }
  }

  /** image_fetch: joins a fetch of the same image in progress, else starts one. */
  private fetch(body: agentV1.ImageFetch__Output): Promise<string> {
    const id = body.imageId ?? '';
    const running = this.fetches.get(id);
    if (running) return running;
    const p = this.fetchOnce(body).finally(() => this.fetches.delete(id));
    this.fetches.set(id, p);
    return p;
  }

  private async fetchOnce(body: agentV1.ImageFetch__Output): Promise<string> {
    const { store, log } = this.options;
    const id = body.imageId ?? '';
    const format = body.format ?? '';
    const size = Number(body.sizeBytes ?? 0);
    const expected = body.digest ?? '';
    if (!FORMATS.includes(format)) throw coded('INVALID_ARGUMENT', `image_fetch: format must be one of ${FORMATS.join(', ')} (got ${JSON.stringify(format)})`);
    if (!Number.isSafeInteger(size) || size <= 0) throw coded('INVALID_ARGUMENT', `image_fetch: size_bytes must be positive (got ${body.sizeBytes})`);
    if (!isDigest(expected)) throw coded('INVALID_ARGUMENT', `image_fetch: digest must be sha256-64m:<hex> (got ${JSON.stringify(expected)})`);
    if (!store) return JSON.stringify({ bytes: 0, ms: 0, present: true, simulated: true });
    if (await store.hasLibraryCopy(id)) return JSON.stringify({ bytes: 0, ms: 0, present: true });
    const started = Date.now();
    const target = await store.beginFetch(id, format as ImageFormat);
    const call = this.options.client.FetchFile({ transferId: body.transferId ?? '', token: body.token ?? '' });
    const digest = new BlockDigest();
    const stallMs = this.options.stallMs ?? TRANSFER_STALL_MS;
    let stall: NodeJS.Timeout | undefined;
    let stalled = false;
    const armStall = () => {
      if (stall) clearTimeout(stall);
      stall = setTimeout(() => {
        stalled = true;
        call.cancel();
      }, stallMs);
      stall.unref();
    };
    armStall();
    try {
      const take = new Transform({
        objectMode: false,
        writableObjectMode: true,
        transform(m: agentV1.FileData__Output, _enc, done) {
          armStall();
          const data = m.data ? Buffer.from(m.data) : Buffer.alloc(0);
          if (digest.bytes + data.length > size) return done(coded('UNAVAILABLE', `library image ${id}: the control plane sent more than the ${size} bytes recorded`));
          digest.update(data);
          done(null, data);
        },
      });
      await pipeline(call, take, createWriteStream(target.path, { flags: 'wx', mode: 0o600 }));
      const got = digest.finish();
      if (got.bytes !== size) throw coded('UNAVAILABLE', `library image ${id}: received ${got.bytes} of ${size} bytes`);
      if (got.digest !== expected) throw coded('UNAVAILABLE', `library image ${id}: digest ${got.digest} does not match the recorded ${expected}`);
      const path = await target.commit();
      log.info({ imageId: id, bytes: size, ms: Date.now() - started, path }, 'library image fetched');
      this.options.onStoreChanged();
      return JSON.stringify({ bytes: size, ms: Date.now() - started, present: false });
    } catch (error) {
      await target.abort();
      log.warn({ imageId: id, err: error }, 'library image fetch failed; nothing kept');
      if (stalled) throw coded('DEADLINE_EXCEEDED', `library image ${id}: no data from the control plane for ${stallMs} ms`);
      throw withCode(error, 'UNAVAILABLE');
    } finally {
      if (stall) clearTimeout(stall);
    }
  }

  /** image_send: streams a store file to the control plane. */
  private async send(body: agentV1.ImageSend__Output): Promise<string> {
    const { store, log } = this.options;
    if (!store) throw coded('FAILED_PRECONDITION', 'this node has no image store (simulated driver)');
    const allowStaging = Boolean(body.allowStaging);
    const path = await store.resolveSendPath(body.path ?? '', { allowStaging }).catch((e: unknown) => {
      throw withCode(e, 'INVALID_ARGUMENT');
    });
    const size = (await stat(path)).size;
    const started = Date.now();
    const digest = new BlockDigest();
    const result = await new Promise<agentV1.SendFileResult__Output>((resolve, reject) => {
      let ended = false;
      let markEnded!: () => void;
      const endedP = new Promise<void>((r) => (markEnded = r));
      const call = this.options.client.SendFile((err, res) => {
        ended = true;
        markEnded();
        if (err) reject(coded(grpcCode(err), err.details || err.message));
        else resolve(res!);
      });
      void (async () => {
        try {
          call.write({ transferId: body.transferId ?? '', token: body.token ?? '', sizeBytes: size });
          for await (const chunk of createReadStream(path, { highWaterMark: SEND_CHUNK_BYTES })) {
            if (ended) return; // the control plane answered (an error) before the end: stop reading
            const data = chunk as Buffer;
            digest.update(data);
            // A control plane that answers while the buffer is full emits no drain: stop waiting then too.
            if (!call.write({ data })) await Promise.race([once(call, 'drain'), endedP]);
          }
          if (ended) return;
          call.write({ digest: digest.finish().digest });
          call.end();
        } catch (error) {
          call.cancel();
          reject(error);
        }
      })();
    });
    const sent = digest.bytes;
    if (Number(result.bytes) !== sent) throw coded('UNAVAILABLE', `sent ${sent} bytes of ${path} but the control plane received ${result.bytes}`);
    if (body.removeAfter && allowStaging) await store.removeStaged(path);
    log.info({ path, bytes: sent, ms: Date.now() - started }, 'image file sent to the control plane');
    return JSON.stringify({ bytes: sent, ms: Date.now() - started, digest: result.digest, path });
  }
}

/** `error` with a protocol code: its own (a domain error's), else `fallback`. */
function withCode(error: unknown, fallback: string): Error {
  const e = error instanceof Error ? error : new Error(String(error));
  const code = (e as { code?: unknown }).code;
  if (typeof code === 'string' && /^[A-Z_]+$/.test(code)) return e;
  if (typeof code === 'number' && typeof grpc.status[code] === 'string') return coded(grpc.status[code], (e as grpc.ServiceError).details || e.message);
  return Object.assign(e, { code: fallback });
}

/** The domain error code of a gRPC status. */
function grpcCode(err: grpc.ServiceError): string {
  const name = grpc.status[err.code];
  return typeof name === 'string' ? name : 'UNAVAILABLE';
}
