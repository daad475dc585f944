import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readTail } from './console-log';

describe('readTail', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hp-tail-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('returns the last bytes and says the log holds more', async () => {
    await writeFile(join(dir, 'a.log'), 'line 1\nline 2\nhb 3\n');

    await expect(readTail(join(dir, 'a.log'), 5)).resolves.toEqual({ data: 'hb 3\n', truncated: true });
    await expect(readTail(join(dir, 'a.log'), 1000)).resolves.toEqual({ data: 'line 1\nline 2\nhb 3\n', truncated: false });
  });

  it('drops a multi-byte character cut in half at the start', async () => {
    await writeFile(join(dir, 'b.log'), 'x→y');

    await expect(readTail(join(dir, 'b.log'), 3)).resolves.toEqual({ data: 'y', truncated: true });
  });

  it('a missing log is empty', async () => {
    await expect(readTail(join(dir, 'none.log'), 10)).resolves.toEqual({ data: '', truncated: false });
  });
});
