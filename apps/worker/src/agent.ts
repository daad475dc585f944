/**
 * Wiring of the worker: one NodeAgent per node (driver, reconciler, console sessions, stream),
 * and the Worker that runs one node, or `--count` hollow nodes sharing one gRPC client and one
 * timer.
 */
import type { agentV1 } from '@hyperplane/proto';
import type { Logger } from 'pino';
import { AgentClient, createAgentServiceClient } from './agent-client';
import type { WorkerConfig } from './cli';
import { ConsoleSessions } from './console-sessions';
import type { PartitionDriver } from './drivers/driver';
import { QemuDriver } from './drivers/qemu/qemu.driver';
import { SimulatedDriver } from './drivers/simulated/simulated.driver';
import { ImageTransfers } from './image-transfers';
import { collectInventory, imageInfosOf } from './inventory';
import { lockDataDir } from './node-files';
import { PartitionStore } from './partition-store';
import { ProviderDriver } from './providers/provider-driver';
import { ProviderReconciler } from './providers/provider-reconciler';
import { ProviderStore } from './providers/provider-store';
import { Reconciler } from './reconciler';
import { Ticker } from './ticker';
import type { BackoffPolicy } from './backoff';

/** What one node agent is made of. */
export interface NodeAgentOptions {
  nodeName: string;
  address: string;
  dataDir: string;
  joinToken: string;
  labels: Record<string, string>;
  driver: PartitionDriver;
  client: agentV1.AgentServiceClient;
  ticker: Ticker;
  /** Logger already bound to the node (`child({ node })`). */
  log: Logger;
  backoff?: BackoffPolicy;
  registerTimeoutMs?: number;
  defaultGraceMs?: number;
  /** Service-chain providers of this node (QEMU driver only). */
  providerDriver?: ProviderDriver;
}

/**
 * One node: re-attaches to its guests, then registers and keeps its stream. Stopping it closes
 * the stream and lets go of the guests WITHOUT stopping them.
 */
export class NodeAgent {
  readonly reconciler: Reconciler;
  readonly client: AgentClient;
  readonly consoles: ConsoleSessions;
  /** Service-chain providers; undefined on nodes that cannot run them (simulated driver). */
  readonly providers: ProviderReconciler | undefined;
  readonly transfers: ImageTransfers;
  private release: (() => Promise<void>) | undefined;
  private unwatch: (() => void) | undefined;
  /** The image list last sent (Register or ImageInventory), as JSON, to send only changes. */
  private reportedImages = '';
  private reporting: Promise<void> = Promise.resolve();

  constructor(private readonly options: NodeAgentOptions) {
    const { driver, log } = options;
    let client: AgentClient | undefined;
    const send = (message: agentV1.AgentMessage) => client?.send(message) ?? false;
    this.reconciler = new Reconciler({
      driver,
      store: new PartitionStore(options.dataDir),
      report: (status) => void send({ status }),
      event: (event) => void send({ event }),
      migrationProgress: (migrationProgress) => void send({ migrationProgress }),
      replicaLost: (replicaLost) => void send({ replicaLost }),
      address: options.address,
      log,
      defaultGraceMs: options.defaultGraceMs,
    });
    this.providers = options.providerDriver
      ? new ProviderReconciler({
          driver: options.providerDriver,
          store: new ProviderStore(options.dataDir),
          report: (providerStatus) => void send({ providerStatus }),
          replicaLost: (replicaLost) => void send({ replicaLost }),
          address: options.address,
          log,
        })
      : undefined;
    this.consoles = new ConsoleSessions(driver, (consoleOutput) => void send({ consoleOutput }), log);
    this.transfers = new ImageTransfers({ store: driver.imageStore, client: options.client, log, onStoreChanged: () => this.reportImages() });
    client = new AgentClient({
      nodeName: options.nodeName,
      address: options.address,
      joinToken: options.joinToken,
      dataDir: options.dataDir,
      client: options.client,
      reconciler: this.reconciler,
      providers: this.providers,
      consoles: () => this.consoles,
      inventory: async () => {
        const inventory = await collectInventory(driver, options.dataDir, options.labels);
        this.reportedImages = JSON.stringify(inventory.images);
        return inventory;
      },
      transfers: this.transfers,
      log,
      backoff: options.backoff,
      registerTimeoutMs: options.registerTimeoutMs,
    });
    this.client = client;
  }

  /**
   * Locks the data dir, removes fetches a crash left half done, re-attaches to surviving guests,
   * then connects and watches the image store.
   */
  async start(): Promise<void> {
    this.release = await lockDataDir(this.options.dataDir);
    try {
      const store = this.options.driver.imageStore;
      const swept = store ? await store.sweepPartialFetches() : 0;
      if (swept) this.options.log.warn({ files: swept }, 'removed image fetches an earlier agent left unfinished');
      await this.reconciler.init();
      await this.providers?.init();
    } catch (error) {
      await this.release();
      throw error;
    }
    await this.client.start();
    this.options.ticker.add(this.client);
    this.unwatch = this.options.driver.imageStore?.watch(() => this.reportImages());
  }

  /**
   * Rescans the image store and, when the list differs from what the control plane last heard,
   * sends it (ImageInventory). Scans run one at a time.
   */
  reportImages(): Promise<void> {
    this.reporting = this.reporting.then(async () => {
      if (this.client.phase !== 'ready') return; // the next Register carries the list anyway
      try {
        const images = imageInfosOf(await this.options.driver.listImages());
        const json = JSON.stringify(images);
        if (json === this.reportedImages) return;
        if (this.client.send({ images: { images } })) {
          this.reportedImages = json;
          this.options.log.info({ images: images.length, rejected: images.filter((i) => i.rejectedReason).length }, 'image store changed: reported');
        }
      } catch (error) {
        this.options.log.warn({ err: error }, 'cannot scan the image store');
      }
    });
    return this.reporting;
  }

  /** Closes the stream and lets go of the guests; they keep running. */
  async stop(): Promise<void> {
    this.unwatch?.();
    this.unwatch = undefined;
    this.options.ticker.remove(this.client);
    await this.client.close();
    this.providers?.close();
    await this.options.providerDriver?.close();
    await this.options.driver.close();
    await this.release?.();
    this.release = undefined;
  }
}

/** A running worker process: its nodes, and how to stop them. */
export interface Worker {
  agents: NodeAgent[];
  /** Closes every stream and lets go of the guests (they keep running). */
  stop(): Promise<void>;
}

/** Starts the node(s) of `config`. The QEMU driver's image store is seeded from the guest build. */
export async function startWorker(config: WorkerConfig, root: Logger, overrides: { tickMs?: number; backoff?: BackoffPolicy } = {}): Promise<Worker> {
  const processLog = root.child({ node: config.nodeName });
  if (config.driver === 'simulated') {
    processLog.warn({ nodes: config.nodes.length, startMs: config.simStartMs, failRate: config.simFailRate }, 'SIMULATED driver: hollow nodes for scale tests and benchmarks only; no guest really runs');
  }
  const client = createAgentServiceClient(config.controlPlane);
  const ticker = new Ticker(overrides.tickMs ?? 250, (error) => processLog.error({ err: error }, 'tick failed'));
  const agents: NodeAgent[] = [];
  try {
    for (const node of config.nodes) {
      const log = config.nodes.length === 1 ? processLog : root.child({ node: node.name });
      let driver: PartitionDriver;
      let providerDriver: ProviderDriver | undefined;
      if (config.driver === 'simulated') {
        driver = new SimulatedDriver({ startMs: config.simStartMs, failRate: config.simFailRate });
      } else {
        const qemu = new QemuDriver({ dataDir: node.dataDir, accel: config.accel, log, ...(config.tlsDir ? { tlsDir: config.tlsDir } : {}) });
        const seeded = await qemu.images.seed(config.guestDir);
        if (seeded === 'no-source') log.warn({ guestDir: config.guestDir, store: qemu.images.dir }, 'no sample image to seed the store with (run npm run guest:build)');
        else if (seeded !== 'present') log.info({ how: seeded, store: qemu.images.dir }, 'seeded the image store with sample.qcow2');
        const facts = await qemu.hostFacts();
        log.info({ accelerator: facts.accelerator, qemuVersion: facts.qemuVersion, dataDir: node.dataDir }, 'QEMU driver ready');
        driver = qemu;
        providerDriver = new ProviderDriver({ dataDir: node.dataDir, address: config.address, nodeName: node.name, ...(config.tlsDir ? { tlsDir: config.tlsDir } : {}), resolveImage: (n) => qemu.images.resolve(n), log });
      }
      const agent = new NodeAgent({
        nodeName: node.name,
        address: config.address,
        dataDir: node.dataDir,
        joinToken: config.joinToken,
        labels: config.labels,
        driver,
        client,
        ticker,
        log,
        backoff: overrides.backoff,
        providerDriver,
      });
      await agent.start();
      agents.push(agent);
    }
  } catch (error) {
    await Promise.all(agents.map((a) => a.stop()));
    ticker.stop();
    client.close();
    throw error;
  }
  processLog.info({ nodes: agents.length, controlPlane: config.controlPlane }, 'worker started');
  return {
    agents,
    async stop() {
      await Promise.all(agents.map((a) => a.stop()));
      ticker.stop();
      client.close();
      processLog.info('worker stopped; guests keep running');
    },
  };
}
