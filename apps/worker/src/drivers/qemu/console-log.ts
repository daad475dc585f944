/** Reading the end of a guest's serial log without reading the whole file. */
import { open } from 'node:fs/promises';
import type { ConsoleTail } from '../driver';

/**
 * The last `bytes` bytes of `path` as UTF-8. Only the tail is read. When the cut falls inside a
 * multi-byte character, its leftover continuation bytes are dropped. A missing file is empty.
 */
export async function readTail(path: string, bytes: number): Promise<ConsoleTail> {
  let handle;
  try {
    handle = await open(path, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { data: '', truncated: false };
    throw error;
  }
  try {
    const { size } = await handle.stat();
    const start = Math.max(0, size - bytes);
    const length = size - start;
    const buffer = Buffer.alloc(length);
    let read = 0;
    while (read < length) {
      const { bytesRead } = await handle.read(buffer, read, length - read, start + read);
      if (bytesRead === 0) break;
      read += bytesRead;
    }
    let from = 0;
    if (start > 0) while (from < read && from < 3 && (buffer[from]! & 0xc0) === 0x80) from++;
    return { data: buffer.subarray(from, read).toString('utf8'), truncated: start > 0 };
  } finally {
    await handle.close();
  }
}
