/**
 * Runs service-chain providers: one `qemu-storage-daemon` per replica, serving one block layer
 * over NBD.
 *
 * Block graph inside a provider (node names):
 * - `up`: a quorum over the replicas of the link below (every kind but base), see nbd-graph.ts;
 * - `store`: the qcow2 file `data.qcow2` of stateful kinds — base (blank, or over the node's
 *   image), overlay (backing `up`: copy-on-write), cache (the same, under a copy-on-read filter);
 * - the exported top node: `store`, `crypt` (luks over `up`, key as a QEMU secret object added
 *   over QMP, so it is never on disk or on a command line), `throttle` (throttle filter over `up`
 *   in a throttle group), or `cor` (copy-on-read over `store`).
 * A replica made as a copy of another (`syncFrom`) starts with `store` backed by an NBD client to
 * that replica and streams it in (`block-stream`); new writes land in `store` meanwhile. Once the
 * stream is done the copy is whole and standalone.
 *
 * The export is served on `nbd.sock` in the replica's directory. With `exposeTcp` a second,
 * stateless daemon (the gateway) re-exports it on the node's address, with TLS
 * (`tls-creds-x509`, peers verified) when the node has credentials: QEMU's NBD server serves one
 * address per process. When either daemon ends, the other is stopped and the replica is over: the
 * agent never restarts it (a replica that missed writes must never be read again), the control
 * plane replaces it.
 */
import { appendFile, mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { FailedPreconditionError, InternalError, UUID_RE, ValidationError } from '@hyperplane/domain';
import type { QmpClient, QmpEvent } from '@hyperplane/qmp';
import type { Logger } from 'pino';
import { readTail } from '../drivers/qemu/console-log';
import { findOnPath, run } from '../drivers/qemu/host-tools';
import { Reverter } from '../reverter';
import { childNodeName, dropFailedChild, LINK_EXPORT, NBD_TLS_CLIENT, nbdChild, needsTls, quorumOf, syncQuorum, type Endpoint } from './nbd-graph';
import { STATEFUL_KINDS, type LinkKind, type ProviderSpecRecord, type ThrottleLimits } from './provider-record';
import { adoptQsd, qsdFiles, spawnQsd, type QsdProcess } from './qsd-process';

/** Files of a replica's directory (`<data-dir>/providers/<id>/`). */
export const PROVIDER_FILES = { data: 'data.qcow2', nbd: 'nbd.sock', state: 'state.json', log: 'provider.log' } as const;

/** Longest unix socket path the kernel accepts. */
const MAX_SOCKET_PATH = 107;
/** Id of the resync job. */
const SYNC_JOB = 'hp-sync';
/** Id of the LUKS format job. */
const FORMAT_JOB = 'hp-format';
const TLS_SERVER = 'hp-nbd-tls-server';
const SECRET = 'hp-key';
const THROTTLE_GROUP = 'hp-throttle';
const EXPORT_ID = 'hp-export';

/** What consumers need to know about a running replica. */
export interface ProviderInfo {
  pid: number;
  unixPath: string;
  /** Set when it is exposed on TCP. */
  tcp: { host: string; port: number; tls: boolean; tlsHostname: string } | undefined;
  sizeBytes: number;
  /** Still copying from the replica it was made from. */
  syncing: boolean;
  syncPercent: number;
  /** Copied whole from another replica: reads nothing from the link below. */
  standalone: boolean;
}

/** Hears what happens to providers between calls. */
export interface ProviderListener {
  /** The replica's process (or its gateway) ended; it is over. */
  onEnded(id: string, reason: string): void;
  /** The resync finished (error set when it failed; the replica is then stopped). */
  onSynced(id: string, error?: string): void;
  /** A replica of the link below failed an I/O request and was dropped from this provider's quorum. */
  onUpstreamLost(id: string, replicaId: string, reason: string): void;
}

/** Settings of a provider driver. */
export interface ProviderDriverOptions {
  /** The node's data dir: replicas live in `providers/<id>/`. */
  dataDir: string;
  /** The node's address (TCP exports listen on it). */
  address: string;
  /** The node's name: its server certificate's name, which consumers check. */
  nodeName: string;
  /** QEMU tls-creds-x509 directory; TCP exports use TLS when it is set. */
  tlsDir?: string;
  /** The node's image store: the file of an image by name and its pinned format (ValidationError when it is not there). */
  resolveImage: (name: string) => Promise<{ path: string; format: string }>;
  log: Logger;
  qsdBinary?: string;
  qemuImgBinary?: string;
}

interface Instance {
  id: string;
  dir: string;
  kind: LinkKind;
  provider: QsdProcess;
  gateway: QsdProcess | undefined;
  info: ProviderInfo;
  upstream: Endpoint[];
  /** Set when the replica is being stopped on purpose (its end is then not news). */
  stopping: boolean;
}

/** Runs the providers of one node. */
export class ProviderDriver {
  private readonly instances = new Map<string, Instance>();
  private readonly qsd: string;
  private readonly qemuImg: string;
  private readonly root: string;
  private listener: ProviderListener = { onEnded: () => undefined, onSynced: () => undefined, onUpstreamLost: () => undefined };

  constructor(private readonly options: ProviderDriverOptions) {
    const qsd = findOnPath(options.qsdBinary ?? 'qemu-storage-daemon');
    const qemuImg = findOnPath(options.qemuImgBinary ?? 'qemu-img');
    if (!qsd) throw new FailedPreconditionError('qemu-storage-daemon is not installed (Debian package qemu-system-common)');
    if (!qemuImg) throw new FailedPreconditionError('qemu-img is not installed (Debian package qemu-utils)');
    this.qsd = qsd;
    this.qemuImg = qemuImg;
    this.root = join(resolve(options.dataDir), 'providers');
  }

  /** Where replicas live on this node. */
  get dir(): string {
    return this.root;
  }

  /** Sets who hears about ends, resyncs and lost upstream replicas. Call before `recover`. */
  setListener(listener: ProviderListener): void {
    this.listener = listener;
  }

  /** The directory of a replica; ValidationError unless `id` is a UUID. */
  dirOf(id: string): string {
    if (!UUID_RE.test(id)) throw ValidationError.field('id', `provider id ${JSON.stringify(id)} is not a UUID`);
    return join(this.root, id);
  }

  /** Whether the replica's daemon runs. */
  isRunning(id: string): boolean {
    return this.instances.has(id);
  }

  /** What consumers need, for a running replica. */
  info(id: string): ProviderInfo | undefined {
    return this.instances.get(id)?.info;
  }

  /** Ids of the replica directories on disk. */
  async onDisk(): Promise<string[]> {
    return (await readdir(this.root).catch(() => [] as string[])).filter((n) => UUID_RE.test(n)).sort();
  }

  /**
   * Re-attaches to the replicas an earlier agent process left running (`known`: their last spec
   * and TCP port). Returns the ones adopted; the others are gone (their daemons ended while the
   * agent was not running), and their stale runtime files are removed.
   */
  async recover(known: Array<{ spec: ProviderSpecRecord; tcpPort: number; standalone: boolean }>): Promise<Map<string, ProviderInfo>> {
    const out = new Map<string, ProviderInfo>();
    for (const k of known) {
      const id = k.spec.id;
      const dir = this.dirOf(id);
      const provider = await adoptQsd(dir, 'provider');
      const gateway = k.spec.exposeTcp ? await adoptQsd(dir, 'gateway') : undefined;
      if (!provider || (k.spec.exposeTcp && !gateway)) {
        await provider?.kill();
        await gateway?.kill();
        continue;
      }
      const inst: Instance = { id, dir, kind: k.spec.kind, provider, gateway, upstream: k.spec.upstream, stopping: false, info: { pid: provider.pid, unixPath: join(dir, PROVIDER_FILES.nbd), tcp: undefined, sizeBytes: 0, syncing: false, syncPercent: 0, standalone: k.standalone } };
      try {
        inst.info.sizeBytes = await exportSize(provider.qmp, exportNode(k.spec.kind));
        if (gateway) inst.info.tcp = this.tcpInfo(k.tcpPort);
        const job = (await provider.qmp.queryBlockJobs()).find((j) => j.device === SYNC_JOB);
        if (job) {
          inst.info.syncing = true;
          inst.info.syncPercent = job.len > 0 ? Math.floor((100 * job.offset) / job.len) : 0;
        }
      } catch (error) {
        this.options.log.warn({ provider: id, err: error }, 'adopted provider does not answer as expected; stopping it');
        await provider.kill();
        await gateway?.kill();
        continue;
      }
      this.track(inst);
      out.set(id, inst.info);
      this.options.log.info({ provider: id, pid: provider.pid, syncing: inst.info.syncing }, 're-attached to a running provider');
    }
    return out;
  }

  /**
   * Starts replica `spec` (with its key for an encrypt link) and resolves once it serves its
   * export (a resync goes on in the background: `onSynced` tells when it is done). On failure
   * nothing it started is left running, and its directory is removed.
   */
  async start(spec: ProviderSpecRecord, key: Buffer | undefined, tcpPort: number): Promise<ProviderInfo> {
    if (this.instances.has(spec.id)) throw new FailedPreconditionError(`provider ${spec.id} already runs`);
    const dir = this.dirOf(spec.id);
    for (const f of [qsdFiles(dir, 'gateway').qmp, join(dir, PROVIDER_FILES.nbd)]) {
      if (Buffer.byteLength(f) > MAX_SOCKET_PATH) throw ValidationError.field('dataDir', `socket path ${f} is longer than ${MAX_SOCKET_PATH} bytes; use a shorter data dir`);
    }
    if (spec.kind === 'encrypt' && key?.length !== 32) throw ValidationError.field('key', 'an encrypt link needs a 32-byte key');
    if (spec.exposeTcp && !tcpPort) throw new InternalError('a TCP export needs a port');
    const log = this.options.log.child({ provider: spec.id, link: spec.link, kind: spec.kind });
    const reverter = new Reverter();
    let provider: QsdProcess | undefined;
    try {
      const fresh = !(await exists(dir));
      await mkdir(dir, { recursive: true, mode: 0o700 });
      if (fresh) reverter.add(() => rm(dir, { recursive: true, force: true }));
      provider = await spawnQsd(this.qsd, dir, 'provider', []);
      const p = provider;
      reverter.add(() => p.kill());
      const syncing = await this.build(p.qmp, spec, key, dir, log);
      await p.qmp.nbdServerStart({ type: 'unix', path: join(dir, PROVIDER_FILES.nbd) });
      await p.qmp.blockExportAdd({ type: 'nbd', id: EXPORT_ID, 'node-name': exportNode(spec.kind), name: LINK_EXPORT, writable: true });
      const sizeBytes = await exportSize(p.qmp, exportNode(spec.kind));
      const inst: Instance = {
        id: spec.id,
        dir,
        kind: spec.kind,
        provider: p,
        gateway: undefined,
        upstream: syncing ? [] : spec.upstream,
        stopping: false,
        info: { pid: p.pid, unixPath: join(dir, PROVIDER_FILES.nbd), tcp: undefined, sizeBytes, syncing, syncPercent: 0, standalone: syncing },
      };
      if (spec.exposeTcp) {
        inst.gateway = await this.startGateway(dir, tcpPort);
        const g = inst.gateway;
        reverter.add(() => g.kill());
        inst.info.tcp = this.tcpInfo(tcpPort);
      }
      if (syncing) await p.qmp.blockStream(SYNC_JOB, 'store');
      reverter.success();
      this.track(inst);
      log.info({ pid: p.pid, sizeBytes, tcpPort: inst.info.tcp?.port, syncing }, 'provider started');
      await this.note(dir, `${spec.kind} link ${spec.link} serving ${sizeBytes} bytes (pid ${p.pid}${inst.info.tcp ? `, TCP ${inst.info.tcp.host}:${inst.info.tcp.port}${inst.info.tcp.tls ? ' with TLS' : ''}` : ''}${syncing ? `, copying from replica ${spec.syncFrom!.replicaId}` : ''})`);
      return inst.info;
    } catch (error) {
      const undo = await reverter.fail();
      for (const e of undo) log.warn({ err: e }, 'undo after a failed provider start failed');
      log.warn({ err: error }, 'provider start failed; everything it created was removed');
      if (error instanceof ValidationError || error instanceof FailedPreconditionError) throw error;
      throw new InternalError(`cannot start provider ${spec.link}/${spec.id}: ${(error as Error).message}`);
    }
  }

  /**
   * Applies a changed spec to a running replica: its upstream quorum gets exactly the new replicas
   * (unless it is standalone), and a TCP export is added when it is newly asked for.
   */
  async update(spec: ProviderSpecRecord, tcpPort: number): Promise<ProviderInfo> {
    const inst = this.instances.get(spec.id);
    if (!inst) throw new FailedPreconditionError(`provider ${spec.id} does not run`);
    if (spec.kind !== 'base' && !inst.info.standalone && spec.upstream.length > 0) {
      await this.ensureTlsClient(inst.provider.qmp, spec.upstream);
      const change = await syncQuorum(inst.provider.qmp, 'up', spec.upstream);
      if (change.added.length || change.removed.length) {
        this.options.log.info({ provider: spec.id, ...change }, 'upstream replicas changed');
        await this.note(inst.dir, `replicas below: added ${change.added.join(', ') || 'none'}, removed ${change.removed.length}`);
      }
      inst.upstream = spec.upstream;
    }
    if (spec.exposeTcp && !inst.gateway) {
      inst.gateway = await this.startGateway(inst.dir, tcpPort);
      this.watchGateway(inst);
      inst.info.tcp = this.tcpInfo(tcpPort);
      await this.note(inst.dir, `serving on TCP ${this.options.address}:${tcpPort}${this.options.tlsDir ? ' with TLS' : ''}`);
    }
    return inst.info;
  }

  /** Stops the replica's daemons (if they run) and removes its directory. Idempotent. */
  async destroy(id: string): Promise<void> {
    const dir = this.dirOf(id);
    const inst = this.instances.get(id);
    if (inst) {
      inst.stopping = true;
      await inst.gateway?.kill();
      await inst.provider.kill();
      this.instances.delete(id);
    } else {
      // Not ours in memory (an agent restart found it dead, or it never started): no daemon may survive it.
      for (const role of ['gateway', 'provider']) await (await adoptQsd(dir, role))?.kill();
    }
    await rm(dir, { recursive: true, force: true });
  }

  /** Lets go of the daemons (monitor connections) WITHOUT stopping them. */
  async close(): Promise<void> {
    for (const inst of this.instances.values()) {
      inst.stopping = true;
      await inst.provider.qmp.close();
      await inst.gateway?.qmp.close();
    }
    this.instances.clear();
  }

  /** Builds the block graph of `spec` in a fresh daemon; returns true when a resync must run. */
  private async build(qmp: QmpClient, spec: ProviderSpecRecord, key: Buffer | undefined, dir: string, log: Logger): Promise<boolean> {
    const data = join(dir, PROVIDER_FILES.data);
    const stateful = STATEFUL_KINDS.includes(spec.kind);
    if (stateful && spec.syncFrom) {
      // A copy of another replica: `store` over that replica, streamed in after the export is up.
      await this.ensureTlsClient(qmp, [spec.syncFrom]);
      await qmp.blockdevAdd(nbdChild('src', spec.syncFrom));
      const size = await exportSize(qmp, 'src');
      await this.createQcow2(data, size);
      await qmp.blockdevAdd({ driver: 'qcow2', 'node-name': 'store', file: { driver: 'file', filename: data }, backing: 'src' });
      if (spec.kind === 'cache') await qmp.blockdevAdd({ driver: 'copy-on-read', 'node-name': 'cor', file: 'store' });
      return true;
    }
    if (spec.kind === 'base') {
      if (spec.image) {
        const image = await this.options.resolveImage(spec.image);
        const info = JSON.parse(await run(this.qemuImg, ['info', '-f', image.format, '--output=json', image.path])) as { 'virtual-size': number };
        await run(this.qemuImg, ['create', '-q', '-f', 'qcow2', '-F', image.format, '-b', image.path, data, String(Math.max(spec.sizeBytes, info['virtual-size']))]);
        await qmp.blockdevAdd({ driver: 'qcow2', 'node-name': 'store', file: { driver: 'file', filename: data }, backing: { driver: image.format, file: { driver: 'file', filename: image.path, 'read-only': true }, 'read-only': true } });
      } else {
        if (!(spec.sizeBytes > 0)) throw ValidationError.field('sizeBytes', 'a blank base needs a size');
        await this.createQcow2(data, spec.sizeBytes);
        await qmp.blockdevAdd({ driver: 'qcow2', 'node-name': 'store', file: { driver: 'file', filename: data } });
      }
      return false;
    }
    await this.ensureTlsClient(qmp, spec.upstream);
    await qmp.blockdevAdd(quorumOf('up', spec.upstream));
    switch (spec.kind) {
      case 'overlay':
      case 'cache': {
        await this.createQcow2(data, await exportSize(qmp, 'up'));
        await qmp.blockdevAdd({ driver: 'qcow2', 'node-name': 'store', file: { driver: 'file', filename: data }, backing: 'up' });
        if (spec.kind === 'cache') await qmp.blockdevAdd({ driver: 'copy-on-read', 'node-name': 'cor', file: 'store' });
        return false;
      }
      case 'encrypt': {
        // LUKS wants a UTF-8 passphrase: the key's base64 text (256 bits of entropy) is it.
        await qmp.objectAdd({ 'qom-type': 'secret', id: SECRET, data: key!.toString('base64'), format: 'raw' });
        try {
          await qmp.blockdevAdd({ driver: 'luks', 'node-name': 'crypt', file: 'up', 'key-secret': SECRET });
        } catch (error) {
          if (!spec.format || !/not in LUKS format/i.test((error as Error).message)) throw error;
          log.info('formatting the device below with a LUKS header');
          await formatLuks(qmp, dir);
          await qmp.blockdevAdd({ driver: 'luks', 'node-name': 'crypt', file: 'up', 'key-secret': SECRET });
        }
        return false;
      }
      case 'throttle': {
        await qmp.objectAdd({ 'qom-type': 'throttle-group', id: THROTTLE_GROUP, limits: throttleLimits(spec.throttle) });
        await qmp.blockdevAdd({ driver: 'throttle', 'node-name': 'throttle', 'throttle-group': THROTTLE_GROUP, file: 'up' });
        return false;
      }
      default:
        throw ValidationError.field('kind', `unknown link kind ${JSON.stringify(spec.kind)}`);
    }
  }

  private async createQcow2(file: string, sizeBytes: number): Promise<void> {
    await rm(file, { force: true });
    await run(this.qemuImg, ['create', '-q', '-f', 'qcow2', file, String(sizeBytes)]);
  }

  /** Adds the TLS client credentials to a daemon that needs them for some endpoint (once). */
  private async ensureTlsClient(qmp: QmpClient, endpoints: readonly Endpoint[]): Promise<void> {
    if (!needsTls(endpoints)) return;
    if (!this.options.tlsDir) throw new FailedPreconditionError('a replica on another node serves with TLS, and this node has no TLS credentials (--tls-dir)');
    try {
      await qmp.objectAdd({ 'qom-type': 'tls-creds-x509', id: NBD_TLS_CLIENT, dir: this.options.tlsDir, endpoint: 'client' });
    } catch (error) {
      if (!/already|duplicate|exists/i.test((error as Error).message)) throw error;
    }
  }

  /** The TCP re-export of a replica's unix socket, on the node's address (TLS with the node's credentials). */
  private async startGateway(dir: string, port: number): Promise<QsdProcess> {
    const tls = this.options.tlsDir;
    const upstream = { driver: 'nbd', 'node-name': 'up', server: { type: 'unix', path: join(dir, PROVIDER_FILES.nbd) }, export: LINK_EXPORT, 'reconnect-delay': 0 };
    return spawnQsd(this.qsd, dir, 'gateway', [
      ...(tls ? ['--object', `tls-creds-x509,id=${TLS_SERVER},dir=${tls},endpoint=server,verify-peer=on`] : []),
      '--blockdev', JSON.stringify(upstream),
      '--nbd-server', `addr.type=inet,addr.host=${this.options.address},addr.port=${port}${tls ? `,tls-creds=${TLS_SERVER}` : ''}`,
      '--export', `type=nbd,id=${EXPORT_ID},node-name=up,name=${LINK_EXPORT},writable=on`,
    ]);
  }

  private tcpInfo(port: number): ProviderInfo['tcp'] {
    return { host: this.options.address, port, tls: Boolean(this.options.tlsDir), tlsHostname: this.options.nodeName };
  }

  /** Starts following a replica: its events, its end, its gateway's end. */
  private track(inst: Instance): void {
    this.instances.set(inst.id, inst);
    inst.provider.qmp.on('event', (e) => void this.onEvent(inst, e));
    void inst.provider.ended.then((reason) => this.ended(inst, reason));
    this.watchGateway(inst);
  }

  private watchGateway(inst: Instance): void {
    const g = inst.gateway;
    if (!g) return;
    void g.ended.then(async (reason) => {
      if (inst.stopping || inst.gateway !== g) return;
      await inst.provider.kill();
      this.ended(inst, `its TCP gateway ${reason.replace(/^qemu-storage-daemon /, '')}`);
    });
  }

  private ended(inst: Instance, reason: string): void {
    if (this.instances.get(inst.id) !== inst) return;
    this.instances.delete(inst.id);
    void inst.gateway?.kill();
    if (inst.stopping) return;
    void this.note(inst.dir, `ended: ${reason}`);
    this.options.log.warn({ provider: inst.id, reason }, 'provider ended');
    this.listener.onEnded(inst.id, reason);
  }

  private async onEvent(inst: Instance, e: QmpEvent): Promise<void> {
    const log = this.options.log.child({ provider: inst.id });
    try {
      if (e.event === 'QUORUM_REPORT_BAD') {
        const node = String(e.data['node-name'] ?? '');
        const lost = inst.upstream.find((u) => childNodeName('up', u.replicaId) === node);
        if (!lost) return;
        const reason = `${String(e.data.type ?? 'I/O')} error: ${String(e.data.error ?? 'unknown')}`;
        if (await dropFailedChild(inst.provider.qmp, 'up', node)) {
          inst.upstream = inst.upstream.filter((u) => u !== lost);
          log.warn({ replica: lost.replicaId, reason }, 'dropped a replica of the link below after an I/O error');
          await this.note(inst.dir, `dropped replica ${lost.replicaId} of the link below: ${reason}`);
          this.listener.onUpstreamLost(inst.id, lost.replicaId, reason);
        }
        return;
      }
      if (e.event === 'BLOCK_JOB_COMPLETED' && e.data.device === SYNC_JOB) {
        const error = e.data.error ? String(e.data.error) : undefined;
        inst.info.syncing = false;
        inst.info.syncPercent = error ? inst.info.syncPercent : 100;
        if (!error) await inst.provider.qmp.blockdevDel('src').catch(() => undefined);
        log.info({ error }, error ? 'resync failed' : 'resync complete');
        await this.note(inst.dir, error ? `copy failed: ${error}` : 'copy complete: the replica holds all the data');
        this.listener.onSynced(inst.id, error);
      }
    } catch (error) {
      log.warn({ err: error, event: e.event }, 'provider event handling failed');
    }
  }

  /** The end of a replica's log: the agent's lines about it and what its daemons printed. */
  async logTail(id: string, bytes: number): Promise<{ data: string; truncated: boolean }> {
    return readTail(join(this.dirOf(id), PROVIDER_FILES.log), bytes);
  }

  /** Appends one line about a replica to its log (the daemons write their output there too). */
  private async note(dir: string, line: string): Promise<void> {
    await appendFile(join(dir, PROVIDER_FILES.log), `${new Date().toISOString()} hyperplane: ${line}\n`, { mode: 0o600 }).catch(() => undefined);
  }

  /** Progress of a running resync, refreshed from the daemon. */
  async syncProgress(id: string): Promise<number | undefined> {
    const inst = this.instances.get(id);
    if (!inst?.info.syncing) return undefined;
    const job = (await inst.provider.qmp.queryBlockJobs().catch(() => [])).find((j) => j.device === SYNC_JOB);
    if (job && job.len > 0) inst.info.syncPercent = Math.floor((100 * job.offset) / job.len);
    return inst.info.syncPercent;
  }
}

/** The exported node of a link kind. */
export function exportNode(kind: LinkKind): string {
  switch (kind) {
    case 'encrypt':
      return 'crypt';
    case 'throttle':
      return 'throttle';
    case 'cache':
      return 'cor';
    default:
      return 'store';
  }
}

/** The throttle-group `limits` of a throttle link (only the limits that are set). */
export function throttleLimits(t: ThrottleLimits): Record<string, number> {
  const out: Record<string, number> = {};
  const set = (k: string, v: number) => {
    if (v > 0) out[k] = v;
  };
  set('iops-total', t.iopsTotal);
  set('iops-read', t.iopsRead);
  set('iops-write', t.iopsWrite);
  set('bps-total', t.bpsTotal);
  set('bps-read', t.bpsRead);
  set('bps-write', t.bpsWrite);
  return out;
}

async function exportSize(qmp: QmpClient, node: string): Promise<number> {
  const found = (await qmp.queryNamedBlockNodes()).find((n) => n['node-name'] === node);
  if (!found) throw new InternalError(`no block node ${node}`);
  return Number(found.image['virtual-size']);
}

/**
 * Writes a LUKS header on `up` with the key secret. A quorum cannot be resized, which QEMU's LUKS
 * formatter insists on, so the header is made on a scratch file in the replica's directory (the
 * header holds the master key only wrapped by the passphrase, as on every LUKS volume) and copied
 * onto the start of `up` with a backup job through a window of the same size: every replica
 * below gets the same header. The key is random (32 bytes), so PBKDF stretching adds nothing and
 * iter-time is kept short. QEMU 7.2 sometimes cannot time its PBKDF benchmark on this kind of VM
 * ("Unable to get accurate CPU usage"): such an attempt is retried.
 */
async function formatLuks(qmp: QmpClient, dir: string): Promise<void> {
  const scratch = join(dir, 'luks-header.tmp');
  try {
    let last = '';
    for (let attempt = 0; ; attempt++) {
      await writeFile(scratch, '', { mode: 0o600 });
      await qmp.blockdevAdd({ driver: 'file', 'node-name': 'hdr-file', filename: scratch });
      last = await runJob(qmp, FORMAT_JOB, () => qmp.blockdevCreate(FORMAT_JOB, { driver: 'luks', file: 'hdr-file', size: 0, 'key-secret': SECRET, 'iter-time': 10 }));
      if (!last) break;
      await qmp.blockdevDel('hdr-file');
      if (!/accurate CPU usage/i.test(last) || attempt >= 5) throw new InternalError(`cannot write the LUKS header: ${last}`);
    }
    await qmp.blockdevAdd({ driver: 'raw', 'node-name': 'hdr-src', file: 'hdr-file' });
    const size = await exportSize(qmp, 'hdr-src');
    await qmp.blockdevAdd({ driver: 'raw', 'node-name': 'hdr-dst', file: 'up', offset: 0, size });
    const error = await runJob(qmp, FORMAT_JOB, () => qmp.blockdevBackup(FORMAT_JOB, 'hdr-src', 'hdr-dst'));
    if (error) throw new InternalError(`cannot copy the LUKS header onto the device below: ${error}`);
  } finally {
    for (const node of ['hdr-dst', 'hdr-src', 'hdr-file']) await qmp.blockdevDel(node).catch(() => undefined);
    await rm(scratch, { force: true });
  }
}

/** Starts a job and waits until it concluded; returns its error ('' when it succeeded) and dismisses it. */
async function runJob(qmp: QmpClient, id: string, start: () => Promise<void>): Promise<string> {
  await start();
  let job;
  for (;;) {
    job = (await qmp.queryJobs()).find((j) => j.id === id);
    if (!job || job.status === 'concluded' || job.status === 'null') break;
    await new Promise((r) => setTimeout(r, 20));
  }
  await qmp.jobDismiss(id).catch(() => undefined);
  return job?.error ?? '';
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}
