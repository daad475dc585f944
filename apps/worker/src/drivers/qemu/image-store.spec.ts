import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ValidationError } from '@hyperplane/domain';
import { writeMetadata } from '@hyperplane/disk-formats';
import { ImageStore, formatOfName } from './image-store';

const qemuImg = (...args: string[]) => execFileSync('qemu-img', args, { stdio: 'ignore' });
const ID = '0193a1b2-1111-7000-8000-00000000abcd';

let root: string;
let dir: string;
let store: ImageStore;
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'hp-store-'));
  dir = join(root, 'images');
  mkdirSync(dir);
  store = new ImageStore(dir, 'qemu-img');
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

/** The field and message of a ValidationError thrown by `f`. */
async function refusal(f: () => Promise<unknown>): Promise<string> {
  try {
    await f();
  } catch (e) {
    expect(e).toBeInstanceOf(ValidationError);
    return `${(e as ValidationError).fieldErrors[0]!.field}: ${(e as Error).message}`;
  }
  throw new Error('expected a refusal');
}

describe('formatOfName', () => {
  it.each([['a.qcow2', 'qcow2'], ['a.vhdx', 'vhdx'], ['a.raw', 'raw'], ['a.img', undefined], ['.qcow2', undefined], ['qcow2', undefined]])('%s -> %s', (n, f) => expect(formatOfName(n)).toBe(f));
});

describe('resolveSendPath', () => {
  beforeEach(() => {
    qemuImg('create', '-q', '-f', 'qcow2', join(dir, 'web.qcow2'), '1M');
    writeFileSync(join(root, 'secret.raw'), 'secret');
    mkdirSync(join(dir, 'library'));
    mkdirSync(join(dir, 'staging'));
    qemuImg('create', '-q', '-f', 'qcow2', join(dir, 'library', `${ID}.qcow2`), '1M');
    qemuImg('create', '-q', '-f', 'qcow2', join(dir, 'staging', 'export.qcow2'), '1M');
    symlinkSync(join(root, 'secret.raw'), join(dir, 'out.raw'));
    symlinkSync(join(dir, 'web.qcow2'), join(dir, 'alias.qcow2'));
    mkdirSync(join(dir, 'sub.qcow2'));
    writeFileSync(join(dir, '.fetch-x'), '');
  });

  it('resolves store files, relative or absolute, through symlinks that stay inside', async () => {
    expect(await store.resolveSendPath('web.qcow2', { allowStaging: false })).toBe(join(dir, 'web.qcow2'));
    expect(await store.resolveSendPath(join(dir, 'web.qcow2'), { allowStaging: false })).toBe(join(dir, 'web.qcow2'));
    expect(await store.resolveSendPath('alias.qcow2', { allowStaging: false })).toBe(join(dir, 'web.qcow2'));
    expect(await store.resolveSendPath('staging/export.qcow2', { allowStaging: true })).toBe(join(dir, 'staging', 'export.qcow2'));
  });

  it.each<[string, boolean, RegExp]>([
    ['out.raw', false, /resolves to .*secret\.raw, outside the node's image store/],
    ['../secret.raw', false, /must not contain '\.\.'/],
    ['missing.qcow2', false, /no such file/],
    [`library/${ID}.qcow2`, false, /copy of a library image/],
    [`library/${ID}.qcow2`, true, /copy of a library image/],
    ['staging/export.qcow2', false, /not an image of the store/],
    ['sub.qcow2', false, /not a regular file/],
    ['.fetch-x', false, /hidden file/],
  ])('refuses %s (staging allowed: %s)', async (p, allowStaging, message) => {
    expect(await refusal(() => store.resolveSendPath(p, { allowStaging }))).toMatch(new RegExp(`^path: .*${message.source}`));
  });

  it('removes only staging files', async () => {
    await expect(store.removeStaged(join(dir, 'web.qcow2'))).rejects.toThrow(/not a staging file/);
    await store.removeStaged(join(dir, 'staging', 'export.qcow2'));
    expect(readdirSync(join(dir, 'staging'))).toEqual([]);
  });
});

describe('list and resolve treat every file as hostile', () => {
  it('reports good images with their metadata and hostile ones with the reason, and never uses the hostile ones', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', join(dir, 'good.qcow2'), '16M');
    await writeMetadata(join(dir, 'good.qcow2'), { schemaVersion: 1, description: 'a good image', tags: ['web'] });
    qemuImg('create', '-q', '-f', 'vhdx', join(dir, 'win.vhdx'), '8M');
    qemuImg('create', '-q', '-f', 'qcow2', '-b', join(dir, 'good.qcow2'), '-F', 'qcow2', join(dir, 'child.qcow2'));
    writeFileSync(join(dir, 'trunc.qcow2'), readFileSync(join(dir, 'good.qcow2')).subarray(0, 40));
    writeFileSync(join(dir, 'fake.qcow2'), Buffer.alloc(65536));
    qemuImg('create', '-q', '-f', 'qcow2', join(dir, 'disguised.raw'), '1M');
    qemuImg('create', '-q', '-f', 'qcow2', join(dir, 'huge.qcow2'), '5T');
    writeFileSync(join(root, 'outside.raw'), Buffer.alloc(4096));
    symlinkSync(join(root, 'outside.raw'), join(dir, 'linked.raw'));
    execFileSync('mkfifo', [join(dir, 'pipe.qcow2')]);
    writeFileSync(join(dir, 'README.txt'), 'not an image');

    const list = await store.list();
    const by = Object.fromEntries(list.map((e) => [e.name, e]));
    expect(Object.keys(by).sort()).toEqual(['child', 'disguised', 'fake', 'good', 'huge', 'linked', 'trunc', 'win']);
    expect(by.good).toMatchObject({ format: 'qcow2', virtualSizeBytes: 16 * 1024 ** 2 });
    expect(by.good!.rejected).toBeUndefined();
    expect(JSON.parse(by.good!.metadataJson!)).toMatchObject({ description: 'a good image', tags: ['web'] });
    expect(by.win).toMatchObject({ format: 'vhdx', virtualSizeBytes: 8 * 1024 ** 2, metadataJson: '' });
    expect(by.child!.rejected?.reason).toBe('backing-file');
    expect(by.trunc!.rejected?.reason).toMatch(/truncated|bad-header/);
    expect(by.fake!.rejected?.reason).toBe('format-mismatch');
    expect(by.disguised!.rejected?.reason).toBe('format-mismatch');
    expect(by.huge!.rejected?.reason).toBe('virtual-size-too-large');
    expect(by.linked!.rejected?.reason).toBe('outside-store');
    for (const bad of ['child', 'trunc', 'fake', 'disguised', 'huge', 'linked']) {
      expect(await refusal(() => store.resolve(bad))).toMatch(new RegExp(`^image: .*image "${bad}" is rejected \\(`));
    }
    expect(await store.resolve('good')).toEqual({ path: join(dir, 'good.qcow2'), format: 'qcow2' });
    expect(await store.resolve('win')).toEqual({ path: join(dir, 'win.vhdx'), format: 'vhdx' });
    expect(await refusal(() => store.resolve('nope'))).toMatch(/not in this node's store/);
    expect(await refusal(() => store.resolve('../x'))).toMatch(/not a valid image name/);
  });

  it('notices a file replaced under the same name (the cache follows the file)', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', join(dir, 'img.qcow2'), '1M');
    expect((await store.list())[0]!.rejected).toBeUndefined();
    await writeFile(join(dir, 'img.qcow2'), Buffer.alloc(4096));
    expect((await store.list())[0]!.rejected?.reason).toBe('format-mismatch');
  });
});

describe('fetch targets', () => {
  it('commit checks the file with the format pinned and renames it into library/; abort and sweep leave nothing', async () => {
    const src = join(root, 'src.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', src, '1M');
    const t = await store.beginFetch(ID, 'qcow2');
    writeFileSync(t.path, readFileSync(src), { mode: 0o600 });
    expect(await t.commit()).toBe(join(dir, 'library', `${ID}.qcow2`));
    expect(await store.hasLibraryCopy(ID)).toBe(true);
    expect((await store.list()).find((e) => e.libraryImageId === ID)).toMatchObject({ name: `library/${ID}`, format: 'qcow2' });
    expect(await store.resolveLibrary(ID)).toEqual({ path: join(dir, 'library', `${ID}.qcow2`), format: 'qcow2' });

    const other = '0193a1b2-2222-7000-8000-00000000abcd';
    const bad = await store.beginFetch(other, 'vhdx');
    writeFileSync(bad.path, readFileSync(src)); // a qcow2 sent as vhdx
    expect(await refusal(() => bad.commit())).toMatch(/rejected \(format-mismatch\)/);
    await bad.abort();
    const half = await store.beginFetch(other, 'qcow2');
    writeFileSync(half.path, 'half a file');
    expect(await store.sweepPartialFetches()).toBe(1);
    expect(readdirSync(join(dir, 'library'))).toEqual([`${ID}.qcow2`]);
    expect(await store.hasLibraryCopy(other)).toBe(false);
    await expect(store.beginFetch('../x', 'qcow2')).rejects.toThrow(/not a library image id/);
  });
});
