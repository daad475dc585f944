import { Inject, Injectable, OnApplicationBootstrap } from '@nestjs/common';
import { CancelledError, FailedPreconditionError, UUID_RE } from '@hyperplane/domain';
import { DataSource } from 'typeorm';
import { Logger } from 'pino';
import { DATA_SOURCE, LOGGER } from '../common/tokens';
import { inTransaction } from '../database/database';
import { OperationContext } from '../operations/operation-runner';
import { TransfersService } from '../transfers/transfers.service';
import { ImageRepository } from './image.repository';
import { ImageStore } from './image-store';
import { ImageWriter } from './image-writer';
import { NodeImageRepository } from './node-image.repository';

/** What a partition (or a migration target) needs of its image on a node. */
export interface ImageOnNode {
  /** The library image its disk is based on; null/undefined for a file of the node's own store (nothing to fetch). */
  imageId: string | null | undefined;
  nodeId: string;
}

/** Download snapshot links (`dl-<uuidv7>`) older than this belong to no live download. */
const STALE_DOWNLOAD_MS = 6 * 3600_000;

const mib = (b: number) => (b / 2 ** 20).toFixed(1);

/**
 * Library images on nodes: before a partition based on a library image starts on a node that does
 * not have the image, the node fetches it from the control plane (TransfersService, FetchFile)
 * into `images/library/<id>.<format>` and verifies size and digest there. The file served is a
 * snapshot link taken under the image's row lock, so a history append during the fetch cannot tear
 * it (writers copy on write). Concurrent needs of one image on one node share one fetch here; the
 * agent also joins concurrent fetches of one image (several replicas).
 */
@Injectable()
export class ImageDistribution implements OnApplicationBootstrap {
  private readonly inflight = new Map<string, Promise<void>>();

  constructor(
    private readonly images: ImageRepository,
    private readonly store: ImageStore,
    private readonly writer: ImageWriter,
    private readonly nodeImages: NodeImageRepository,
    private readonly transfers: TransfersService,
    @Inject(DATA_SOURCE) private readonly ds: DataSource,
    @Inject(LOGGER) private readonly log: Logger,
  ) {}

  /** Removes snapshot links whose transfer or download is over (a crash left them). */
  async onApplicationBootstrap(): Promise<void> {
    try {
      const keys = await this.store.snapshotKeys();
      const live = await this.transfers.live(keys.filter((k) => UUID_RE.test(k)));
      for (const k of keys) {
        const download = /^dl-([0-9a-f]{8})-([0-9a-f]{4})/.exec(k);
        const stale = download ? Date.now() - parseInt(download[1]! + download[2]!, 16) > STALE_DOWNLOAD_MS : !live.has(k);
        if (stale) await this.store.release(k);
      }
    } catch (err) {
      this.log.warn({ err }, 'could not sweep image snapshot links');
    }
  }

  /**
   * Makes sure the node has the library image `need.imageId` (nothing to do for a store image or
   * when the node reported the copy). Reports progress on `ctx` as phase
   * `fetching-image N% (X of Y MiB)`. Throws when the fetch fails; the node keeps no partial file.
   */
  async ensureOnNode(need: ImageOnNode, ctx: OperationContext): Promise<void> {
    const { imageId, nodeId } = need;
    if (!imageId) return;
    if (await this.nodeImages.hasLibraryCopy(nodeId, imageId)) return;
    const key = `${nodeId}/${imageId}`;
    for (;;) {
      let p = this.inflight.get(key);
      const joined = p !== undefined;
      if (!p) {
        p = this.fetch(imageId, nodeId, ctx).finally(() => this.inflight.delete(key));
        this.inflight.set(key, p);
      }
      try {
        await p;
        return;
      } catch (e) {
        // The operation whose fetch we joined was cancelled: that is not our answer, fetch again.
        if (joined && e instanceof CancelledError && !ctx.signal.aborted) continue;
        throw e;
      }
    }
  }

  private async fetch(imageId: string, nodeId: string, ctx: OperationContext): Promise<void> {
    const started = Date.now();
    let pinned: { format: string; digest: string; sizeBytes: number; name: string } | undefined;
    let snapshotKey: string | undefined;
    try {
      await this.transfers.run({
        direction: 'to-node',
        nodeId,
        path: async (transferId) => {
          // The content served is pinned under the row lock that serialises writers of the file.
          const snap = await inTransaction(this.ds, async (db) => {
            const img = await this.images.lockById(db, imageId);
            if (!img) throw new FailedPreconditionError(`library image ${imageId} is not ready`);
            const d = await this.writer.currentDigest(db, img);
            pinned = { format: img.format, digest: d.digest, sizeBytes: d.sizeBytes, name: img.name };
            snapshotKey = transferId;
            return this.store.snapshot(img.storage_path, transferId);
          });
          await ctx.progress(`fetching-image 0% (0.0 of ${mib(pinned!.sizeBytes)} MiB)`, 2);
          return snap;
        },
        command: (t) => ({ imageFetch: { transferId: t.id, token: t.token, imageId, format: pinned!.format, sizeBytes: pinned!.sizeBytes, digest: pinned!.digest } }),
        signal: ctx.signal,
        onProgress: (bytes) => {
          const total = pinned?.sizeBytes ?? 0;
          const pct = total ? Math.floor((100 * bytes) / total) : 0;
          return ctx.progress(`fetching-image ${pct}% (${mib(bytes)} of ${mib(total)} MiB)`, 2 + Math.floor(pct / 14));
        },
      });
      this.log.info({ imageId, image: pinned?.name, nodeId, bytes: pinned?.sizeBytes, ms: Date.now() - started }, 'library image distributed to a node');
    } finally {
      if (snapshotKey) await this.store.release(snapshotKey);
    }
  }
}
