/** The node inventory sent with Register: host figures, driver facts and the image store. */
import { readFileSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import { availableParallelism, totalmem } from 'node:os';
import { join } from 'node:path';
import type { agentV1 } from '@hyperplane/proto';
import type { ImageEntry, PartitionDriver } from './drivers/driver';

/** This package's version (agent_version in the inventory). */
export const AGENT_VERSION: string = (() => {
  try {
    return (JSON.parse(readFileSync(join(__dirname, '..', 'package.json'), 'utf8')) as { version?: string }).version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
})();

/** Bytes free for unprivileged use on the file system of `dir` (0 when it cannot be read). */
export async function freeDiskBytes(dir: string): Promise<number> {
  try {
    const st = await statfs(dir);
    return Number(st.bavail) * Number(st.bsize);
  } catch {
    return 0;
  }
}

/** Builds the inventory; the driver's facts override the host's CPUs and memory (hollow nodes). */
export async function collectInventory(driver: PartitionDriver, dataDir: string, labels: Record<string, string>): Promise<agentV1.Inventory> {
  const [facts, images, diskBytes] = await Promise.all([driver.hostFacts(), driver.listImages(), freeDiskBytes(dataDir)]);
  return {
    cpus: facts.cpus ?? availableParallelism(),
    memoryMib: facts.memoryMiB ?? Math.floor(totalmem() / 2 ** 20),
    diskBytes,
    accelerator: facts.accelerator,
    qemuVersion: facts.qemuVersion,
    cpuFlags: facts.cpuFlags,
    machineTypes: facts.machineTypes,
    labels,
    images: imageInfosOf(images),
    driver: driver.kind,
    agentVersion: AGENT_VERSION,
    imageStoreDir: driver.imageStore?.dir ?? '',
    tls: facts.tls ?? false,
  };
}

/** Largest metadata document reported per image; bigger ones are left out of the report (the file keeps them). */
export const MAX_REPORTED_METADATA_BYTES = 16 * 1024;

/** Metadata reported for all images together at most, so a report stays far below the 4 MiB gRPC message limit. */
export const MAX_REPORTED_METADATA_TOTAL_BYTES = 2 * 1024 * 1024;

/** The store's images as reported (agent.proto ImageInfo), metadata within the per-image and total budgets. */
export function imageInfosOf(entries: ImageEntry[]): agentV1.ImageInfo[] {
  let budget = MAX_REPORTED_METADATA_TOTAL_BYTES;
  return entries.map((e) => {
    const info = imageInfoOf(e);
    const bytes = Buffer.byteLength(info.metadataJson ?? '');
    if (bytes > MAX_REPORTED_METADATA_BYTES || bytes > budget) info.metadataJson = '';
    else budget -= bytes;
    return info;
  });
}

/** An image of the store as the agent protocol reports it (agent.proto ImageInfo). */
export function imageInfoOf(i: ImageEntry): agentV1.ImageInfo {
  return {
    name: i.name,
    format: i.format,
    sizeBytes: i.sizeBytes,
    virtualSizeBytes: i.virtualSizeBytes,
    path: i.path,
    metadataJson: i.metadataJson ?? '',
    rejectedReason: i.rejected?.reason ?? '',
    rejectedMessage: i.rejected?.message ?? '',
    libraryImageId: i.libraryImageId ?? '',
  };
}
