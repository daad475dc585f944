import { createReadStream, createWriteStream, ReadStream, WriteStream } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { Injectable } from '@nestjs/common';

/** The files transfers read and write: the only code of transfers that touches the disk. */
@Injectable()
export class TransferFiles {
  /** A new file (0600; an existing one is an error), open for writing once the promise resolves. */
  async create(path: string): Promise<WriteStream> {
    const out = createWriteStream(path, { flags: 'wx', mode: 0o600 });
    await new Promise<void>((resolve, reject) => {
      out.once('open', () => resolve());
      out.once('error', reject);
    });
    return out;
  }

  /** Writes `data`, waiting when the stream asks for it. */
  async write(out: WriteStream, data: Buffer): Promise<void> {
    if (!out.write(data)) await new Promise<void>((r) => out.once('drain', () => r()));
  }

  /** Ends the stream and makes the file durable. */
  async close(out: WriteStream, path: string): Promise<void> {
    await new Promise<void>((resolve, reject) => out.end((e?: Error | null) => (e ? reject(e) : resolve())));
    const h = await open(path, 'r');
    try {
      await h.sync();
    } finally {
      await h.close();
    }
  }

  /** Drops a partly written file. */
  async discard(out: WriteStream | undefined, path: string): Promise<void> {
    out?.destroy();
    await rm(path, { force: true });
  }

  /** A stream of the file, in chunks of `chunkBytes`. */
  read(path: string, chunkBytes: number): ReadStream {
    return createReadStream(path, { highWaterMark: chunkBytes });
  }
}
