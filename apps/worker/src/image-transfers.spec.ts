import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { BlockDigest } from '@hyperplane/disk-formats';
import type { agentV1 } from '@hyperplane/proto';
import pino from 'pino';
import { ImageStore } from './drivers/qemu/image-store';
import { ImageTransfers } from './image-transfers';

const ID = '0193a1b2-3333-7000-8000-00000000abcd';
const log = pino({ level: 'silent' });

let root: string;
let store: ImageStore;
let image: Buffer;
let digest: string;
beforeAll(() => {
  const srcDir = mkdtempSync(join(tmpdir(), 'hp-xfer-src-'));
  const src = join(srcDir, 'src.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', src, '8M']);
  image = readFileSync(src);
  rmSync(srcDir, { recursive: true, force: true }); // only its bytes are used
  const d = new BlockDigest();
  d.update(image);
  digest = d.finish().digest;
});
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'hp-xfer-'));
  mkdirSync(join(root, 'images'));
  store = new ImageStore(join(root, 'images'), 'qemu-img');
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

/** A fake AgentService client whose FetchFile serves `serve()`'s stream, counting calls. */
function fakeClient(serve: () => Readable): { client: agentV1.AgentServiceClient; fetchCalls: number; sent: agentV1.FileData[] } {
  const state = { fetchCalls: 0, sent: [] as agentV1.FileData[], client: undefined as unknown as agentV1.AgentServiceClient };
  const client = {
    FetchFile: () => {
      state.fetchCalls++;
      const s = serve() as Readable & { cancel?: () => void };
      s.cancel = () => s.destroy(new Error('cancelled by the client'));
      return s;
    },
    SendFile: (cb: (err: unknown, res?: agentV1.SendFileResult__Output) => void) => {
      const w = new PassThrough({ objectMode: true }) as PassThrough & { cancel?: () => void };
      w.cancel = () => w.destroy();
      w.on('data', (m: agentV1.FileData) => state.sent.push(m));
      w.on('end', () => cb(null, { bytes: state.sent.reduce((n, m) => n + (m.data ? Buffer.from(m.data as Buffer).length : 0), 0), digest: String(state.sent.at(-1)?.digest ?? '') }));
      return w;
    },
  };
  state.client = client as unknown as agentV1.AgentServiceClient;
  return state;
}

/** FileData messages of `bytes`, in chunks, slowly enough for two commands to overlap. */
function messages(bytes: Buffer, opts: { chunk?: number; failAfter?: number; delayMs?: number } = {}): Readable {
  const chunk = opts.chunk ?? 64 * 1024;
  let at = 0;
  return new Readable({
    objectMode: true,
    read() {
      setTimeout(() => {
        if (opts.failAfter !== undefined && at >= opts.failAfter) return this.destroy(new Error('connection reset'));
        if (at >= bytes.length) return this.push(null);
        this.push({ data: bytes.subarray(at, at + chunk) });
        at += chunk;
      }, opts.delayMs ?? 0);
    },
  });
}

const fetchCmd = (over: Partial<agentV1.ImageFetch> = {}): agentV1.Command__Output =>
  ({ id: 'c1', body: 'imageFetch', imageFetch: { transferId: 't1', token: 'tok', imageId: ID, format: 'qcow2', sizeBytes: image.length, digest, ...over } }) as unknown as agentV1.Command__Output;

const libraryFiles = () => readdirSync(join(root, 'images', 'library'));

describe('image_fetch', () => {
  it('stores a verified copy; two fetches of one image at once share one transfer', async () => {
    const fake = fakeClient(() => messages(image, { delayMs: 2 }));
    let changed = 0;
    const t = new ImageTransfers({ store, client: fake.client, log, onStoreChanged: () => changed++ });
    const [a, b] = await Promise.all([t.command(fetchCmd()), t.command({ ...fetchCmd(), id: 'c2' })]);
    expect([a.ok, b.ok, a.commandId, b.commandId]).toEqual([true, true, 'c1', 'c2']);
    expect(fake.fetchCalls).toBe(1);
    expect(changed).toBe(1);
    expect(libraryFiles()).toEqual([`${ID}.qcow2`]);
    expect(readFileSync(join(root, 'images', 'library', `${ID}.qcow2`)).equals(image)).toBe(true);
    // Already there: answered at once, no transfer.
    const again = await t.command(fetchCmd());
    expect(JSON.parse(again.payload!)).toMatchObject({ present: true });
    expect(fake.fetchCalls).toBe(1);
  });

  it.each<[string, () => Readable, Partial<agentV1.ImageFetch>, RegExp]>([
    ['a digest that does not match', () => messages(image), { digest: `sha256-64m:${'0'.repeat(64)}` }, /does not match the recorded/],
    ['fewer bytes than recorded', () => messages(image.subarray(0, 4096)), {}, /received 4096 of \d+ bytes/],
    ['more bytes than recorded', () => messages(Buffer.concat([image, Buffer.alloc(10)])), {}, /more than the \d+ bytes recorded/],
    ['a stream cut in the middle', () => messages(image, { failAfter: 128 * 1024 }), {}, /connection reset/],
    ['a file that is not the format it was said to be', () => messages(image), { format: 'vhdx' }, /format-mismatch/],
  ])('refuses %s and keeps no file', async (_what, serve, over, message) => {
    const t = new ImageTransfers({ store, client: fakeClient(serve).client, log, onStoreChanged: () => undefined });
    const r = await t.command(fetchCmd(over));
    expect(r.ok).toBe(false);
    expect(r.errorMessage).toMatch(message);
    expect(libraryFiles()).toEqual([]);
  });

  it('gives up on a stream that stops moving (DEADLINE_EXCEEDED), keeping no file', async () => {
    const stuck = () => new Readable({ objectMode: true, read() { /* never */ } });
    const t = new ImageTransfers({ store, client: fakeClient(stuck).client, log, onStoreChanged: () => undefined, stallMs: 200 });
    const r = await t.command(fetchCmd());
    expect(r).toMatchObject({ ok: false, errorCode: 'DEADLINE_EXCEEDED' });
    expect(libraryFiles()).toEqual([]);
  });

  it('refuses malformed commands naming the field', async () => {
    const t = new ImageTransfers({ store, client: fakeClient(() => messages(image)).client, log, onStoreChanged: () => undefined });
    expect((await t.command(fetchCmd({ format: 'vmdk' }))).errorMessage).toMatch(/format must be one of/);
    expect((await t.command(fetchCmd({ digest: 'md5:x' }))).errorMessage).toMatch(/digest must be sha256-64m/);
    expect((await t.command(fetchCmd({ imageId: '../../x' }))).errorMessage).toMatch(/not a library image id/);
  });

  it('on a node without a store (hollow) succeeds without moving bytes', async () => {
    const fake = fakeClient(() => messages(image));
    const r = await new ImageTransfers({ store: undefined, client: fake.client, log, onStoreChanged: () => undefined }).command(fetchCmd());
    expect(JSON.parse(r.payload!)).toMatchObject({ simulated: true });
    expect(fake.fetchCalls).toBe(0);
  });
});

describe('image_send', () => {
  const sendCmd = (path: string): agentV1.Command__Output => ({ id: 's1', body: 'imageSend', imageSend: { transferId: 't2', token: 'tok', path } }) as unknown as agentV1.Command__Output;

  it('sends the file: the transfer and size first, the data, then the digest', async () => {
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(root, 'images', 'web.qcow2'), '8M']);
    const fake = fakeClient(() => messages(image));
    const r = await new ImageTransfers({ store, client: fake.client, log, onStoreChanged: () => undefined }).command(sendCmd('web.qcow2'));
    expect(r.ok).toBe(true);
    const file = readFileSync(join(root, 'images', 'web.qcow2'));
    expect(fake.sent[0]).toMatchObject({ transferId: 't2', token: 'tok', sizeBytes: file.length });
    expect(Buffer.concat(fake.sent.filter((m) => m.data).map((m) => Buffer.from(m.data as Buffer))).equals(file)).toBe(true);
    const d = new BlockDigest();
    d.update(file);
    expect(fake.sent.at(-1)!.digest).toBe(d.finish().digest);
  });

  it('refuses a path outside the store with INVALID_ARGUMENT, sending nothing', async () => {
    const fake = fakeClient(() => messages(image));
    const r = await new ImageTransfers({ store, client: fake.client, log, onStoreChanged: () => undefined }).command(sendCmd('../../etc/passwd'));
    expect(r).toMatchObject({ ok: false, errorCode: 'INVALID_ARGUMENT' });
    expect(r.errorMessage).toMatch(/must not contain '\.\.'/);
    expect(fake.sent).toEqual([]);
  });
});
