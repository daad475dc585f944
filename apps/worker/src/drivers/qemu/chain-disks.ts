/**
 * Service-chain disks of a partition's QEMU: one virtio-blk device per attachment, backed by a
 * quorum over NBD clients to the replicas of the attached link (nbd-graph.ts). The device sits in
 * PCI slot 0x10 + index, after the boot disk, so SeaBIOS keeps booting from the boot disk (it
 * boots the first hard disk it finds). Given on the command line at start, hot-plugged
 * (`blockdev-add` + `device_add`) into a running guest, unplugged with `device_del` (the guest
 * lets go first) + `blockdev-del`. Which disks a QEMU has is kept in `disks.json` in the
 * partition's directory, so an agent that restarts knows which replica each quorum child is.
 */
import { readFileSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FailedPreconditionError, ValidationError } from '@hyperplane/domain';
import type { QmpClient } from '@hyperplane/qmp';
import { childNodeName, dropFailedChild, NBD_TLS_CLIENT, needsTls, quorumOf, syncQuorum, type Endpoint } from '../../providers/nbd-graph';
import type { ChainDiskSpec } from '../driver';
import { qemuOptValue, RUNTIME_FILES } from './qemu-args';

/** The most chain disks one partition can have (PCI slots 0x10-0x1f). */
export const MAX_CHAIN_DISKS = 16;

/** File in the partition's directory listing its chain disks (removed with the other runtime files when QEMU ends). */
export const DISKS_FILE = RUNTIME_FILES.disks;

/** Node name (and device id) of chain disk `index`. */
export function diskNode(index: number): string {
  return `chain${index}`;
}

/** Checks a disk list: indexes 0-15, each once, attachment ids unique, every disk with a replica. */
export function checkDisks(disks: readonly ChainDiskSpec[]): void {
  const seen = new Set<number>();
  const ids = new Set<string>();
  for (const d of disks) {
    if (!Number.isInteger(d.index) || d.index < 0 || d.index >= MAX_CHAIN_DISKS) throw ValidationError.field('disks', `disk index ${d.index} is not 0-${MAX_CHAIN_DISKS - 1}`);
    if (seen.has(d.index)) throw ValidationError.field('disks', `disk index ${d.index} is used twice`);
    if (ids.has(d.attachmentId)) throw ValidationError.field('disks', `attachment ${d.attachmentId} is listed twice`);
    if (d.replicas.length === 0) throw ValidationError.field('disks', `attachment ${d.attachmentId} has no replica to reach`);
    seen.add(d.index);
    ids.add(d.attachmentId);
  }
}

/** `-device` properties of a chain disk (the serial lets the guest tell disks apart: /dev/disk/by-id). */
function deviceProps(d: ChainDiskSpec): Record<string, string | boolean> {
  return { driver: 'virtio-blk-pci', drive: diskNode(d.index), id: diskNode(d.index), addr: `0x${(0x10 + d.index).toString(16)}`, serial: d.attachmentId.replaceAll('-', '').slice(-20) };
}

/** Command-line arguments for the chain disks of a starting guest (empty without disks). */
export function chainDiskArgs(disks: readonly ChainDiskSpec[], tlsDir: string | undefined): string[] {
  if (disks.length === 0) return [];
  checkDisks(disks);
  const args: string[] = [];
  if (disks.some((d) => needsTls(d.replicas))) {
    if (!tlsDir) throw new FailedPreconditionError('a chain disk is served with TLS by another node, and this node has no TLS credentials (--tls-dir)');
    args.push('-object', `tls-creds-x509,id=${NBD_TLS_CLIENT},dir=${qemuOptValue(tlsDir)},endpoint=client`);
  }
  for (const d of disks) {
    args.push('-blockdev', JSON.stringify(quorumOf(diskNode(d.index), d.replicas, d.readOnly)));
    const { driver, ...props } = deviceProps(d);
    args.push('-device', [driver, ...Object.entries(props).map(([k, v]) => `${k}=${typeof v === 'string' ? qemuOptValue(v) : v ? 'on' : 'off'}`)].join(','));
  }
  return args;
}

/** Reads the chain disks a partition's QEMU has (none when the file is missing). */
export async function readDisks(dir: string): Promise<ChainDiskSpec[]> {
  try {
    // Synchronous: a small file (usually none) read on a migration's critical path.
    return JSON.parse(readFileSync(join(dir, DISKS_FILE), 'utf8')) as ChainDiskSpec[];
  } catch {
    return [];
  }
}

/** Writes the chain disks a partition's QEMU has (atomically). */
export async function writeDisks(dir: string, disks: readonly ChainDiskSpec[]): Promise<void> {
  const tmp = join(dir, `.${DISKS_FILE}.tmp`);
  await writeFile(tmp, JSON.stringify(disks), { mode: 0o600 });
  await rename(tmp, join(dir, DISKS_FILE));
}

/**
 * Makes a running guest have `disk`: hot-plugs it when it is new, otherwise makes its quorum's
 * children exactly `disk.replicas`. Returns the disk list to record.
 */
export async function attachDisk(qmp: QmpClient, current: readonly ChainDiskSpec[], disk: ChainDiskSpec, tlsDir: string | undefined): Promise<ChainDiskSpec[]> {
  const existing = current.find((d) => d.attachmentId === disk.attachmentId);
  const others = current.filter((d) => d.attachmentId !== disk.attachmentId);
  checkDisks([...others, disk]);
  if (needsTls(disk.replicas)) await ensureTlsClient(qmp, tlsDir);
  if (existing) {
    if (existing.index !== disk.index) throw new FailedPreconditionError(`attachment ${disk.attachmentId} is disk ${existing.index} of this guest, not ${disk.index}`);
    await syncQuorum(qmp, diskNode(disk.index), disk.replicas);
    return [...others, { ...existing, replicas: disk.replicas }];
  }
  const node = diskNode(disk.index);
  await qmp.blockdevDel(node).catch(() => undefined); // left by an interrupted attempt
  await qmp.blockdevAdd(quorumOf(node, disk.replicas, disk.readOnly));
  try {
    await qmp.deviceAdd(deviceProps(disk) as { driver: string });
  } catch (error) {
    await qmp.blockdevDel(node).catch(() => undefined);
    throw error;
  }
  return [...others, disk];
}

/** Unplugs a disk from a running guest: `device_del`, waits for the guest to let go, `blockdev-del`. */
export async function detachDisk(qmp: QmpClient, current: readonly ChainDiskSpec[], attachmentId: string, timeoutMs = 30_000): Promise<ChainDiskSpec[]> {
  const disk = current.find((d) => d.attachmentId === attachmentId);
  if (!disk) return [...current];
  const node = diskNode(disk.index);
  const deleted = qmp.waitForEvent('DEVICE_DELETED', (e) => (e.data as { device?: string }).device === node, timeoutMs);
  try {
    await qmp.deviceDel(node);
    await deleted;
  } catch (error) {
    deleted.catch(() => undefined);
    if (!/not found|no such|DeviceNotFound/i.test((error as Error).message)) throw new FailedPreconditionError(`the guest did not release disk ${node}: ${(error as Error).message}`);
  }
  await qmp.blockdevDel(node).catch(() => undefined);
  return current.filter((d) => d.attachmentId !== attachmentId);
}

/**
 * After `QUORUM_REPORT_BAD` on a child of a chain disk: drops that child (never the last one).
 * Returns the replica that was dropped and the disks to record, or undefined.
 */
export async function dropBadReplica(qmp: QmpClient, current: readonly ChainDiskSpec[], childNode: string): Promise<{ replica: Endpoint; disks: ChainDiskSpec[] } | undefined> {
  for (const d of current) {
    const replica = d.replicas.find((r) => childNodeName(diskNode(d.index), r.replicaId) === childNode);
    if (!replica) continue;
    if (!(await dropFailedChild(qmp, diskNode(d.index), childNode))) return undefined;
    return { replica, disks: current.map((x) => (x === d ? { ...d, replicas: d.replicas.filter((r) => r !== replica) } : x)) };
  }
  return undefined;
}

async function ensureTlsClient(qmp: QmpClient, tlsDir: string | undefined): Promise<void> {
  if (!tlsDir) throw new FailedPreconditionError('a chain disk is served with TLS by another node, and this node has no TLS credentials (--tls-dir)');
  try {
    await qmp.objectAdd({ 'qom-type': 'tls-creds-x509', id: NBD_TLS_CLIENT, dir: tlsDir, endpoint: 'client' });
  } catch (error) {
    if (!/already|duplicate|exists/i.test((error as Error).message)) throw error;
  }
}
