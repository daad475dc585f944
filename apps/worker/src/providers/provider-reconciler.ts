/**
 * Reconciles the service-chain providers of one node with what the control plane wants, by
 * generation, like the partition reconciler does for guests:
 * - one queue per replica: start, update and removal of one replica never interleave;
 * - a spec acts only when its generation is newer than the newest one accepted (an older one is
 *   answered with the current status); `absent` (or missing from a full desired set) stops the
 *   replica's daemons and removes its directory;
 * - a replica whose daemon ends, or whose resync fails, is reported `failed` and is never started
 *   again: it may have missed writes, and a replacement is the control plane's decision (under a
 *   new id, so no consumer mistakes the new one for the old one);
 * - the encrypt key of a spec lives in memory until the start used it, and is never written.
 */
import type { agentV1 } from '@hyperplane/proto';
import type { Logger } from 'pino';
import type { ProviderDriver, ProviderInfo } from './provider-driver';
import { providerSpecFromWire, type ProviderRecord, type ProviderSpecRecord, type ProviderState } from './provider-record';
import type { ProviderStore } from './provider-store';
import { freePort } from '../ports';
import { enqueueOn } from '../serial-queue';

/** How often a syncing replica reports its progress. */
const SYNC_REPORT_MS = 1_000;

/** What the provider reconciler needs. */
export interface ProviderReconcilerDeps {
  driver: Pick<ProviderDriver, 'setListener' | 'recover' | 'start' | 'update' | 'destroy' | 'isRunning' | 'info' | 'syncProgress' | 'onDisk' | 'logTail'>;
  store: Pick<ProviderStore, 'loadAll' | 'save' | 'forget'>;
  /** Called on every status change, and for every spec (even one that causes nothing). */
  report: (status: agentV1.ProviderStatus) => void;
  /** Called when a provider dropped a replica of the link below after an I/O error. */
  replicaLost: (lost: agentV1.ReplicaLost) => void;
  /** The node's address: TCP exports listen there. */
  address: string;
  log: Logger;
}

interface Entry {
  id: string;
  spec: ProviderSpecRecord | undefined;
  applied: number;
  accepted: number;
  pending: ProviderSpecRecord | undefined;
  pendingKey: Buffer | undefined;
  state: ProviderState;
  reason: string;
  tcpPort: number;
  standalone: boolean;
  tail: Promise<void>;
  gone: boolean;
  syncTimer: NodeJS.Timeout | undefined;
}

/** Reconciles one node's providers. Call `init` once, before anything else. */
export class ProviderReconciler {
  private readonly entries = new Map<string, Entry>();
  private readonly inflight = new Set<Promise<void>>();

  constructor(private readonly deps: ProviderReconcilerDeps) {
    deps.driver.setListener({
      onEnded: (id, reason) => this.onEnded(id, reason),
      onSynced: (id, error) => this.onSynced(id, error),
      onUpstreamLost: (id, replicaId, reason) => deps.replicaLost({ replicaId, consumer: `provider:${id}`, reason }),
    });
  }

  /** Loads the records on disk and re-attaches to daemons that outlived the previous agent. */
  async init(): Promise<void> {
    const { records, orphans } = await this.deps.store.loadAll();
    const alive = records.filter((r) => r.spec.desired === 'running' && (r.state === 'running' || r.state === 'syncing' || r.state === 'starting'));
    const adopted = await this.deps.driver.recover(alive.map((r) => ({ spec: r.spec, tcpPort: r.tcpPort, standalone: r.standalone })));
    for (const r of records) {
      const e = this.newEntry(r.id);
      e.spec = r.spec;
      e.applied = r.appliedGeneration;
      e.accepted = r.appliedGeneration;
      e.tcpPort = r.tcpPort;
      e.standalone = r.standalone;
      const info = adopted.get(r.id);
      if (info) {
        e.state = info.syncing ? 'syncing' : 'running';
        e.reason = '';
      } else if (alive.includes(r)) {
        e.state = 'failed';
        e.reason = 'the provider ended while the agent was not running';
      } else {
        e.state = r.state;
        e.reason = r.reason;
      }
      this.entries.set(e.id, e);
      if (e.state !== r.state || e.reason !== r.reason) await this.persist(e);
      if (e.state === 'syncing') this.watchSync(e);
    }
    for (const id of orphans) {
      // A directory without a record: nothing may run from it; the control plane will say absent.
      this.deps.log.warn({ provider: id }, 'provider directory without a record: removing it');
      await this.deps.driver.destroy(id).catch(() => undefined);
    }
    this.deps.log.info({ providers: this.entries.size, running: adopted.size }, 'provider reconciler ready');
  }

  /** Status of every provider the agent has (for Register.providers). */
  statuses(): agentV1.ProviderStatus[] {
    return [...this.entries.values()].map((e) => this.statusOf(e));
  }

  /** Applies one provider's spec (ControlMessage.provider_upsert). */
  upsert(wire: agentV1.ProviderSpec__Output): void {
    const parsed = providerSpecFromWire(wire);
    if (!parsed) {
      this.deps.log.warn('provider spec without an id ignored');
      return;
    }
    const { spec, key } = parsed;
    let e = this.entries.get(spec.id);
    if (parsed.problem) {
      this.deps.log.warn({ provider: spec.id, problem: parsed.problem }, 'provider spec refused');
      if (!e) this.deps.report({ id: spec.id, state: 'failed', reason: parsed.problem, generation: spec.generation, chainId: spec.chainId, link: spec.link });
      else this.report(e);
      return;
    }
    if (!e) {
      if (spec.desired === 'absent') {
        this.deps.report({ id: spec.id, state: 'absent', reason: '', generation: spec.generation, chainId: spec.chainId, link: spec.link });
        return;
      }
      e = this.newEntry(spec.id);
      this.entries.set(spec.id, e);
    }
    if (spec.generation <= e.accepted) {
      this.report(e);
      return;
    }
    e.accepted = spec.generation;
    e.pending = spec;
    if (key) e.pendingKey = key;
    void this.enqueue(e, () => this.applyPending(e));
  }

  /** Applies the full set (ControlMessage.providers_desired): listed specs as upserts, the rest removed. */
  desired(specs: agentV1.ProviderSpec__Output[]): void {
    const listed = new Set<string>();
    for (const s of specs) {
      if (s.id) listed.add(s.id);
      this.upsert(s);
    }
    for (const e of [...this.entries.values()]) {
      if (listed.has(e.id) || e.pending?.desired === 'absent' || !e.spec) continue;
      this.deps.log.info({ provider: e.id }, 'provider not in the desired set: removing it');
      e.pending = { ...e.spec, desired: 'absent', generation: Math.max(e.applied, e.accepted) };
      void this.enqueue(e, () => this.applyPending(e));
    }
  }

  /** A provider command (provider_log); resolves with its result, never rejects. */
  async command(cmd: agentV1.Command__Output): Promise<agentV1.CommandResult> {
    const commandId = cmd.id ?? '';
    const id = cmd.providerLog?.providerId ?? '';
    if (!this.entries.has(id)) return { commandId, ok: false, errorCode: 'NOT_FOUND', errorMessage: `provider ${id} is not on this node`, payload: '' };
    const asked = Number(cmd.providerLog?.bytes ?? 0);
    const tail = await this.deps.driver.logTail(id, Math.min(asked > 0 ? asked : 64 * 1024, 1024 * 1024));
    return { commandId, ok: true, errorCode: '', errorMessage: '', payload: JSON.stringify(tail) };
  }

  /** Resolves once no provider has queued work (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.inflight.size > 0) await Promise.all([...this.inflight]);
  }

  /** Stops the progress timers (the daemons keep running). */
  close(): void {
    for (const e of this.entries.values()) clearInterval(e.syncTimer);
  }

  private newEntry(id: string): Entry {
    return { id, spec: undefined, applied: 0, accepted: -1, pending: undefined, pendingKey: undefined, state: 'absent', reason: '', tcpPort: 0, standalone: false, tail: Promise.resolve(), gone: false, syncTimer: undefined };
  }

  private enqueue(e: Entry, task: () => Promise<void>): Promise<void> {
    return enqueueOn(e, task, this.inflight, (error) => this.deps.log.error({ provider: e.id, err: error }, 'provider action failed'));
  }

  private async applyPending(e: Entry): Promise<void> {
    const spec = e.pending;
    if (!spec) return;
    const key = e.pendingKey;
    e.pending = undefined;
    e.pendingKey = undefined;
    e.applied = spec.generation;
    if (spec.desired === 'absent') {
      clearInterval(e.syncTimer);
      try {
        await this.deps.driver.destroy(e.id);
        await this.deps.store.forget(e.id);
      } catch (error) {
        this.set(e, 'failed', `remove failed: ${(error as Error).message}`);
        await this.settle(e);
        return;
      }
      e.gone = true;
      if (this.entries.get(e.id) === e) this.entries.delete(e.id);
      this.deps.log.info({ provider: e.id }, 'provider removed');
      this.deps.report({ id: e.id, state: 'absent', reason: '', generation: spec.generation, chainId: spec.chainId, link: spec.link });
      return;
    }
    const first = e.spec === undefined;
    e.spec = spec;
    if (e.state === 'failed' || (!first && !this.deps.driver.isRunning(e.id))) {
      // Over: never started again (a replacement has another id).
      if (e.state !== 'failed') this.set(e, 'failed', e.reason || 'the provider is not running');
      await this.settle(e);
      return;
    }
    if (spec.exposeTcp && !e.tcpPort) e.tcpPort = await freePort(this.deps.address);
    if (this.deps.driver.isRunning(e.id)) {
      try {
        this.apply(e, await this.deps.driver.update(spec, e.tcpPort));
      } catch (error) {
        this.deps.log.warn({ provider: e.id, err: error }, 'provider update failed');
        e.reason = `update failed: ${(error as Error).message}`;
      }
      await this.settle(e);
      return;
    }
    this.set(e, 'starting', '');
    await this.settle(e);
    try {
      this.apply(e, await this.deps.driver.start(spec, key, e.tcpPort));
    } catch (error) {
      this.set(e, 'failed', (error as Error).message);
    }
    await this.settle(e);
  }

  /** Takes what the driver says about a running replica. */
  private apply(e: Entry, info: ProviderInfo): void {
    e.standalone = info.standalone;
    this.set(e, info.syncing ? 'syncing' : 'running', '');
    if (info.syncing) this.watchSync(e);
  }

  private watchSync(e: Entry): void {
    clearInterval(e.syncTimer);
    e.syncTimer = setInterval(() => {
      void this.deps.driver.syncProgress(e.id).then((p) => {
        if (p === undefined || e.state !== 'syncing') return;
        this.report(e);
      });
    }, SYNC_REPORT_MS);
    e.syncTimer.unref();
  }

  private onEnded(id: string, reason: string): void {
    const e = this.entries.get(id);
    if (!e) return;
    void this.enqueue(e, async () => {
      if (this.deps.driver.isRunning(id)) return;
      clearInterval(e.syncTimer);
      this.set(e, 'failed', reason);
      await this.settle(e);
    });
  }

  private onSynced(id: string, error: string | undefined): void {
    const e = this.entries.get(id);
    if (!e) return;
    void this.enqueue(e, async () => {
      clearInterval(e.syncTimer);
      if (error) {
        // A half copy must never serve: stop it; the control plane makes another.
        await this.deps.driver.destroy(id).catch(() => undefined);
        this.set(e, 'failed', `resync failed: ${error}`);
      } else if (this.deps.driver.isRunning(id)) {
        e.standalone = true;
        this.set(e, 'running', '');
      }
      await this.settle(e);
    });
  }

  private set(e: Entry, state: ProviderState, reason: string): void {
    if (e.state !== state || e.reason !== reason) this.deps.log.info({ provider: e.id, from: e.state, state, reason: reason || undefined }, 'provider state');
    e.state = state;
    e.reason = reason;
  }

  private async settle(e: Entry): Promise<void> {
    await this.persist(e);
    this.report(e);
  }

  private async persist(e: Entry): Promise<void> {
    if (!e.spec || e.gone) return;
    const record: ProviderRecord = { id: e.id, spec: e.spec, appliedGeneration: e.applied, state: e.state, reason: e.reason, tcpPort: e.tcpPort, standalone: e.standalone, updatedAt: new Date().toISOString() };
    try {
      await this.deps.store.save(record);
    } catch (error) {
      this.deps.log.error({ provider: e.id, err: error }, 'cannot write the provider record');
    }
  }

  private report(e: Entry): void {
    this.deps.report(this.statusOf(e));
  }

  private statusOf(e: Entry): agentV1.ProviderStatus {
    const info = this.deps.driver.info(e.id);
    return {
      id: e.id,
      state: e.state,
      reason: e.reason,
      generation: e.applied,
      pid: info?.pid ?? 0,
      unixPath: info?.unixPath ?? '',
      tcpHost: info?.tcp?.host ?? '',
      tcpPort: info?.tcp?.port ?? 0,
      tls: info?.tcp?.tls ?? false,
      tlsHostname: info?.tcp?.tlsHostname ?? '',
      sizeBytes: info?.sizeBytes ?? 0,
      syncPercent: info?.syncPercent ?? 0,
      chainId: e.spec?.chainId ?? '',
      link: e.spec?.link ?? '',
    };
  }
}
