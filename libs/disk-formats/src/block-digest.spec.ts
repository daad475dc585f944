import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { appendFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { BlockDigest, digestFile, digestOfBlocks, isDigest, updateFileDigest } from './block-digest';
import { writeMetadata } from './image';
import { createImage, makeTempDir } from './qemu-tools';

let tmp: Awaited<ReturnType<typeof makeTempDir>>;
beforeAll(async () => {
  tmp = await makeTempDir('hp-digest');
});
afterAll(async () => tmp.cleanup());

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest();

describe('BlockDigest', () => {
  it('is SHA-256 over the SHA-256 of each block, whatever the chunking', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.integer({ min: 1, max: 64 }), fc.array(fc.integer({ min: 1, max: 50 }), { maxLength: 20 }), (data, blockBytes, cuts) => {
        const d = new BlockDigest(blockBytes);
        let at = 0;
        for (const c of cuts) {
          d.update(data.subarray(at, at + c));
          at = Math.min(data.length, at + c);
        }
        d.update(data.subarray(at));
        const got = d.finish();
        const expected: Buffer[] = [];
        for (let i = 0; i < data.length; i += blockBytes) expected.push(sha(data.subarray(i, i + blockBytes)));
        expect(got.bytes).toBe(data.length);
        expect(got.blocks.equals(Buffer.concat(expected))).toBe(true);
        expect(got.digest).toBe(digestOfBlocks(Buffer.concat(expected)));
        expect(isDigest(got.digest)).toBe(true);
      }),
    );
  });

  it('matches the shell recipe in the file comment (split + sha256sum)', async () => {
    const p = join(tmp.dir, 'shell.bin');
    await writeFile(p, randomBytes(3 * 1024 * 1024 + 17));
    const d = await digestFile(p, 1024 * 1024);
    const shell = execFileSync('bash', ['-c', `split -b 1M --filter='sha256sum | head -c 64 | xxd -r -p' '${p}' | sha256sum | head -c 64`], { encoding: 'utf8' });
    expect(d.digest).toBe(`sha256-64m:${shell}`);
  });
});

describe('updateFileDigest', () => {
  it('after real metadata writes into qcow2 and VHDX files equals a full re-hash, reading only the touched blocks', async () => {
    for (const format of ['qcow2', 'vhdx'] as const) {
      const p = join(tmp.dir, `edit.${format}`);
      await createImage(p, format, '64M');
      const block = 256 * 1024;
      let d = await digestFile(p, block);
      for (let i = 0; i < 4; i++) {
        const r = await writeMetadata(p, { schemaVersion: 1, description: `edit ${i} ${'x'.repeat(i * 700)}`, tags: [`t${i}`] });
        expect(r.writtenRanges.length).toBeGreaterThan(0);
        const next = await updateFileDigest(p, d, r.writtenRanges, block);
        expect(next).toEqual(await digestFile(p, block));
        expect(next.digest).not.toBe(d.digest);
        d = next;
      }
    }
  });

  it('re-hashes from the old end when the file grew', async () => {
    const p = join(tmp.dir, 'grow.bin');
    await writeFile(p, randomBytes(10_000));
    const before = await digestFile(p, 4096);
    await appendFile(p, randomBytes(5000));
    expect(await updateFileDigest(p, before, [], 4096)).toEqual(await digestFile(p, 4096));
  });

  it('refuses a previous digest whose blocks do not fit its size', async () => {
    const p = join(tmp.dir, 'bad.bin');
    await writeFile(p, randomBytes(100));
    await expect(updateFileDigest(p, { blocks: Buffer.alloc(64), bytes: 100 }, [], 4096)).rejects.toThrow(RangeError);
  });
});
