import * as grpc from '@grpc/grpc-js';
import { Inject, Injectable } from '@nestjs/common';
import { ValidationError } from '@hyperplane/domain';
import { agentV1 } from '@hyperplane/proto';
import { Logger } from 'pino';
import { LOGGER } from '../common/tokens';
import { TransfersService } from '../transfers/transfers.service';
import { toGrpcError } from './grpc-errors';

/** Bytes per FetchFile message. */
const CHUNK_BYTES = 1024 * 1024;
/** How often the bytes served are recorded. */
const PROGRESS_MS = 500;

/**
 * The agent's file-transfer calls (agent.proto FetchFile, SendFile): parse, hand to
 * TransfersService, map errors. Authorised by the one-time transfer token, not by the stream.
 */
@Injectable()
export class TransferGrpcApi {
  constructor(
    private readonly transfers: TransfersService,
    @Inject(LOGGER) private readonly log: Logger,
  ) {}

  /** FetchFile and SendFile, to merge into the AgentService implementation. */
  service(): grpc.UntypedServiceImplementation {
    return {
      FetchFile: (call: grpc.ServerWritableStream<agentV1.FetchFileRequest__Output, agentV1.FileData>) => void this.fetchFile(call),
      SendFile: (call: grpc.ServerReadableStream<agentV1.FileData__Output, agentV1.SendFileResult>, cb: grpc.sendUnaryData<agentV1.SendFileResult>) => void this.sendFile(call, cb),
    };
  }

  private async fetchFile(call: grpc.ServerWritableStream<agentV1.FetchFileRequest__Output, agentV1.FileData>): Promise<void> {
    const id = call.request.transferId ?? '';
    let bytes = 0;
    let claimed = false;
    let gone = false;
    call.on('cancelled', () => (gone = true));
    try {
      const t = await this.transfers.openFetch(id, call.request.token ?? '');
      claimed = true;
      let last = Date.now();
      const file = this.transfers.readFile(t, CHUNK_BYTES);
      try {
        for await (const chunk of file) {
          if (gone) throw new Error('the node closed the stream');
          const data = chunk as Buffer;
          bytes += data.length;
          if (!call.write({ data })) {
            // A node that goes away while the buffer is full emits no drain: stop waiting on close too.
            await new Promise<void>((r) => {
              const done = () => {
                call.off('drain', done);
                call.off('close', done);
                call.off('cancelled', done);
                r();
              };
              call.once('drain', done);
              call.once('close', done);
              call.once('cancelled', done);
            });
          }
          if (Date.now() - last > PROGRESS_MS) {
            last = Date.now();
            if (!(await this.transfers.progress(id, bytes))) throw new Error(`transfer ${id} was cancelled`);
          }
        }
      } finally {
        file.destroy();
      }
      await this.transfers.endServe(id, undefined, bytes);
      call.end();
    } catch (e) {
      if (claimed) await this.transfers.endServe(id, e as Error, bytes).catch(() => undefined);
      this.log.warn({ transferId: id, err: e }, 'FetchFile failed');
      const err = toGrpcError(e);
      call.destroy(Object.assign(new Error(String(err.details ?? (e as Error).message)), err));
    }
  }

  private async sendFile(call: grpc.ServerReadableStream<agentV1.FileData__Output, agentV1.SendFileResult>, cb: grpc.sendUnaryData<agentV1.SendFileResult>): Promise<void> {
    try {
      const it = (call as AsyncIterable<agentV1.FileData__Output>)[Symbol.asyncIterator]();
      const first = await it.next();
      if (first.done || !first.value.transferId) throw ValidationError.field('transferId', 'the first SendFile message must name the transfer');
      const head = first.value;
      async function* rest(): AsyncGenerator<{ data?: Buffer; digest?: string }> {
        if (head.data?.length || head.digest) yield { data: head.data ? Buffer.from(head.data) : undefined, digest: head.digest || undefined };
        for (let n = await it.next(); !n.done; n = await it.next()) yield { data: n.value.data?.length ? Buffer.from(n.value.data) : undefined, digest: n.value.digest || undefined };
      }
      const r = await this.transfers.receive(head.transferId ?? '', head.token ?? '', Number(head.sizeBytes ?? 0), rest());
      cb(null, { bytes: r.bytes, digest: r.digest });
    } catch (e) {
      cb(toGrpcError(e));
    }
  }
}
