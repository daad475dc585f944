/**
 * Service-chain providers against real qemu-storage-daemon processes, driven the way the control
 * plane drives them (ProviderSpec messages into a ProviderReconciler per node), with qemu-io as
 * the client. Two "nodes" on one machine (their own data dirs and addresses 127.0.0.41/.42) with
 * TLS credentials made by openssl, so replicas on the other node are reached over TCP with TLS.
 * afterAll kills every daemon whose command line names this spec's directory.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { agentV1 } from '@hyperplane/proto';
import pino from 'pino';
import { makeTlsDirs } from '../../../../test/helpers/tls';
import { findOnPath } from '../drivers/qemu/host-tools';
import { pidAlive } from '../drivers/qemu/qemu-process';
import { ProviderDriver } from './provider-driver';
import { ProviderReconciler } from './provider-reconciler';
import { ProviderStore } from './provider-store';

const missing = !findOnPath('qemu-storage-daemon') ? 'qemu-storage-daemon' : !findOnPath('qemu-io') ? 'qemu-io' : !findOnPath('openssl') ? 'openssl' : '';
if (missing) console.warn(`Skipping the provider spec: ${missing} is not on PATH.`);
const d = missing ? describe.skip : describe;
jest.setTimeout(120_000);

const silent = pino({ level: process.env.HP_TEST_LOG_LEVEL ?? 'silent' });
const id = (n: number) => `01900000-0000-7000-8000-${n.toString(16).padStart(12, '0')}`;
const MiB = 1024 * 1024;

/** One node: a driver and a reconciler, and what it reported. */
class Node {
  readonly statuses = new Map<string, agentV1.ProviderStatus>();
  readonly lost: agentV1.ReplicaLost[] = [];
  readonly reconciler: ProviderReconciler;
  readonly driver: ProviderDriver;
  constructor(readonly name: string, readonly address: string, readonly dir: string, tlsDir: string) {
    this.driver = new ProviderDriver({ dataDir: dir, address, nodeName: name, tlsDir, resolveImage: async (n) => ({ path: join(dir, 'images', `${n}.qcow2`), format: 'qcow2' }), log: silent });
    this.reconciler = new ProviderReconciler({
      driver: this.driver,
      store: new ProviderStore(dir),
      report: (s) => this.statuses.set(s.id!, s),
      replicaLost: (l) => this.lost.push(l),
      address,
      log: silent,
    });
  }
  /** The endpoint a consumer on `from` uses for replica `rid` of this node. */
  endpoint(rid: string, from: Node): agentV1.ProviderEndpoint {
    const s = this.statuses.get(rid)!;
    return from === this ? { replicaId: rid, unixPath: s.unixPath! } : { replicaId: rid, host: s.tcpHost!, port: s.tcpPort!, tls: s.tls!, tlsHostname: s.tlsHostname! };
  }
  async until(rid: string, state: string, ms = 60_000): Promise<agentV1.ProviderStatus> {
    const end = Date.now() + ms;
    for (;;) {
      const s = this.statuses.get(rid);
      if (s?.state === state) return s;
      if (s?.state === 'failed' && state !== 'failed') throw new Error(`provider ${rid} failed: ${s.reason}`);
      if (Date.now() > end) throw new Error(`provider ${rid} is ${s?.state ?? 'unknown'}, not ${state}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

let dir: string;
let tls: Record<string, string>;
let n1: Node;
let n2: Node;
const generations = new Map<string, number>();
function spec(p: Partial<agentV1.ProviderSpec> & { id: string }): agentV1.ProviderSpec__Output {
  const g = (generations.get(p.id) ?? 0) + 1;
  generations.set(p.id, g);
  return { chainId: id(999), desired: 'running', generation: g, ...p } as agentV1.ProviderSpec__Output;
}

/** qemu-io through a unix NBD export; throws with its output unless every command succeeded. */
function io(socket: string, commands: string[]): string {
  const args = ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), `nbd+unix:///link?socket=${socket}`];
  const out = execFileSync('qemu-io', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (/error|fail|Pattern verification/i.test(out)) throw new Error(`qemu-io ${commands.join('; ')}: ${out}`);
  return out;
}

function daemonsMentioning(needle: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8');
      if (cmd.includes('qemu-storage-daemon') && cmd.includes(needle) && pidAlive(Number(e))) out.push(Number(e));
    } catch {
      continue;
    }
  }
  return out;
}

d('service-chain providers (real qemu-storage-daemon)', () => {
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hp-prov-'));
    tls = makeTlsDirs(join(dir, 'tls'), ['pn1', 'pn2']);
    n1 = new Node('pn1', '127.0.0.41', join(dir, 'n1'), tls.pn1!);
    n2 = new Node('pn2', '127.0.0.42', join(dir, 'n2'), tls.pn2!);
    await n1.reconciler.init();
    await n2.reconciler.init();
  });

  afterAll(async () => {
    n1?.reconciler.close();
    n2?.reconciler.close();
    for (const pid of daemonsMentioning(dir)) process.kill(pid, 'SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  const A = id(1), B = id(2), ENC = id(3), THR = id(4), C = id(5);
  const key = randomBytes(32);

  it('chains base (2 replicas, one across nodes over TLS) -> encrypt -> throttle; the base holds ciphertext only', async () => {
    n1.reconciler.upsert(spec({ id: A, link: 'base', kind: 'base', sizeBytes: 32 * MiB }));
    n2.reconciler.upsert(spec({ id: B, link: 'base', kind: 'base', sizeBytes: 32 * MiB, exposeTcp: true }));
    await n1.until(A, 'running');
    const b = await n2.until(B, 'running');
    expect(b).toMatchObject({ tls: true, tlsHostname: 'pn2', tcpHost: '127.0.0.42' });
    expect(b.tcpPort).toBeGreaterThan(0);

    n1.reconciler.upsert(spec({ id: ENC, link: 'enc', kind: 'encrypt', key, format: true, upstream: [n1.endpoint(A, n1), n2.endpoint(B, n1)] }));
    const enc = await n1.until(ENC, 'running');
    expect(enc.sizeBytes).toBeLessThan(32 * MiB); // the LUKS header takes its share
    n1.reconciler.upsert(spec({ id: THR, link: 'qos', kind: 'throttle', throttle: { iopsTotal: 2000, bpsTotal: 200 * MiB }, upstream: [n1.endpoint(ENC, n1)] }));
    const thr = await n1.until(THR, 'running');

    io(thr.unixPath!, ['write -P 0x5a 0 1M', 'read -P 0x5a 0 1M']);
    // Both base replicas got the (encrypted) write; neither holds the plaintext pattern; both start with a LUKS header.
    const pattern = Buffer.alloc(4096, 0x5a);
    for (const [node, rid] of [[n1, A], [n2, B]] as const) {
      execFileSync('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', join(node.dir, 'providers', rid, 'data.qcow2'), join(dir, `${rid}.raw`)]);
      const bytes = readFileSync(join(dir, `${rid}.raw`));
      expect(bytes.subarray(0, 6).toString('latin1')).toBe('LUKS\xba\xbe');
      expect(bytes.includes(pattern)).toBe(false);
    }
    // The TCP export refuses a client without TLS.
    expect(() => execFileSync('qemu-io', ['-f', 'raw', '-c', 'read 0 4k', `nbd://127.0.0.42:${b.tcpPort}/link`], { stdio: 'pipe' })).toThrow();
  });

  it('after an agent restart, adopts the running providers (same processes, same endpoints) and keeps serving', async () => {
    const before = [A, ENC, THR].map((rid) => n1.statuses.get(rid)!);
    n1.reconciler.close();
    await n1.driver.close();
    n1 = new Node('pn1', '127.0.0.41', join(dir, 'n1'), tls.pn1!);
    await n1.reconciler.init();
    const after = new Map(n1.reconciler.statuses().map((s) => [s.id, s]));
    for (const s of before) {
      expect(after.get(s.id)).toMatchObject({ state: 'running', pid: s.pid, unixPath: s.unixPath, tcpPort: s.tcpPort });
      n1.statuses.set(s.id!, after.get(s.id)!);
    }
    io(n1.statuses.get(THR)!.unixPath!, ['read -P 0x5a 0 1M']);
  });

  it('keeps serving when a base replica is SIGKILLed, drops it from the quorum and reports it; a replacement resyncs and takes over', async () => {
    const b = n2.statuses.get(B)!;
    process.kill(b.pid!, 'SIGKILL');
    const thr = n1.statuses.get(THR)!;
    io(thr.unixPath!, ['write -P 0x6b 1M 1M', 'read -P 0x6b 1M 1M', 'read -P 0x5a 0 1M']);
    await n2.until(B, 'failed');
    expect(n2.statuses.get(B)!.reason).toMatch(/SIGKILL/);
    await waitFor(() => n1.lost.some((l) => l.replicaId === B && l.consumer === `provider:${ENC}`), 'replica B reported lost');

    // Replacement C on node 2, copied from A (exposed over TLS for it), then added to the encrypt link's quorum.
    n1.reconciler.upsert(spec({ id: A, link: 'base', kind: 'base', sizeBytes: 32 * MiB, exposeTcp: true }));
    await waitFor(() => (n1.statuses.get(A)?.tcpPort ?? 0) > 0, 'A exposed on TCP');
    n2.reconciler.upsert(spec({ id: C, link: 'base', kind: 'base', sizeBytes: 32 * MiB, exposeTcp: true, syncFrom: n1.endpoint(A, n2) }));
    const c = await n2.until(C, 'running', 90_000);
    expect(c.syncPercent).toBe(100);
    n1.reconciler.upsert(spec({ id: ENC, link: 'enc', kind: 'encrypt', key, upstream: [n1.endpoint(A, n1), n2.endpoint(C, n1)] }));
    await n1.reconciler.idle();
    io(thr.unixPath!, ['write -P 0x7c 2M 1M']);

    // The copy is whole: C's own file has the LUKS header A and B were given, without any backing file.
    execFileSync('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', join(n2.dir, 'providers', C, 'data.qcow2'), join(dir, 'c.raw')]);
    expect(readFileSync(join(dir, 'c.raw')).subarray(0, 6).toString('latin1')).toBe('LUKS\xba\xbe');

    // A goes too: C alone has everything, old and new.
    process.kill(n1.statuses.get(A)!.pid!, 'SIGKILL');
    io(thr.unixPath!, ['read -P 0x5a 0 1M', 'read -P 0x6b 1M 1M', 'read -P 0x7c 2M 1M']);
    await n1.until(A, 'failed');
  });

  it('a cache link keeps what it read from the link below in its own file (copy-on-read)', async () => {
    const BASE = id(21), CACHE = id(22);
    n1.reconciler.upsert(spec({ id: BASE, link: 'b', kind: 'base', sizeBytes: 16 * MiB }));
    const base = await n1.until(BASE, 'running');
    io(base.unixPath!, ['write -P 0x3c 4M 1M']);
    n1.reconciler.upsert(spec({ id: CACHE, link: 'c', kind: 'cache', upstream: [n1.endpoint(BASE, n1)] }));
    const cache = await n1.until(CACHE, 'running');
    const file = join(n1.dir, 'providers', CACHE, 'data.qcow2');
    const allocated = () => JSON.parse(execFileSync('qemu-img', ['map', '-U', '-f', 'qcow2', '--output=json', file], { encoding: 'utf8' })).filter((m: { data: boolean; depth: number }) => m.data && m.depth === 0);
    expect(allocated()).toEqual([]);
    io(cache.unixPath!, ['read -P 0x3c 4M 1M', 'flush']);
    expect(allocated()).toEqual([expect.objectContaining({ start: 4 * MiB, length: MiB })]);
    n1.reconciler.upsert(spec({ id: CACHE, desired: 'absent' }));
    n1.reconciler.upsert(spec({ id: BASE, desired: 'absent' }));
    await n1.reconciler.idle();
  });

  it('removes a replica it is told is absent, and everything of it; a failed replica is never started again', async () => {
    n1.reconciler.upsert(spec({ id: A, link: 'base', kind: 'base', sizeBytes: 32 * MiB, exposeTcp: true }));
    await n1.reconciler.idle();
    expect(n1.statuses.get(A)!.state).toBe('failed');
    n1.reconciler.upsert(spec({ id: A, desired: 'absent' }));
    await waitFor(() => n1.statuses.get(A)?.state === 'absent', 'A absent');
    expect(existsSync(join(n1.dir, 'providers', A))).toBe(false);
    n1.reconciler.desired([]);
    n2.reconciler.desired([]);
    await n1.reconciler.idle();
    await n2.reconciler.idle();
    expect(daemonsMentioning(dir)).toEqual([]);
    expect(readdirSync(join(n1.dir, 'providers'))).toEqual([]);
  });
});

async function waitFor(fn: () => boolean, what: string, ms = 30_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
