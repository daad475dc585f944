/** The QEMU command line of one partition, as a pure function of its spec and runtime dir. */
import { join } from 'node:path';

/** Files of a partition's runtime directory (`<data-dir>/partitions/<id>/`). */
export const RUNTIME_FILES = {
  disk: 'disk.qcow2',
  qmp: 'qmp.sock',
  console: 'console.sock',
  consoleLog: 'console.log',
  qemuLog: 'qemu.log',
  pid: 'qemu.pid',
  /** Present while the partition's QEMU waits for or receives an incoming migration (destination). */
  incoming: 'incoming.json',
  /** The service-chain disks the running QEMU has (see chain-disks.ts); only while it runs with some. */
  disks: 'disks.json',
} as const;

/** Node name of the guest's disk (its qcow2 format node): snapshots, mirror and NBD export name it. */
export const DISK_NODE = 'disk0';

/** Files that only mean something while QEMU runs; removed once it is gone. */
export const EPHEMERAL_FILES = [RUNTIME_FILES.qmp, RUNTIME_FILES.console, RUNTIME_FILES.pid, RUNTIME_FILES.disks] as const;

/** Longest unix socket path the kernel accepts (sun_path is 108 bytes with its NUL). */
export const MAX_SOCKET_PATH = 107;

/** What the command line depends on. */
export interface QemuArgsInput {
  id: string;
  name: string;
  dir: string;
  vcpus: number;
  memoryMiB: number;
  accel: 'kvm' | 'tcg';
  /** Start waiting for an incoming migration (`-incoming defer`) instead of booting. */
  incoming?: boolean;
}

/** Escapes a value for QEMU's `key=value,...` option syntax (a comma is written twice). */
export function qemuOptValue(value: string): string {
  return value.replaceAll(',', ',,');
}

/**
 * The arguments (without the binary) that start the guest paused (`-S`): the caller connects to
 * QMP, checks the state and resumes with `cont`. No defaults, no user config, formats pinned,
 * QMP and the serial port on unix sockets in `dir`, the serial output also appended to
 * console.log. The disk's format node is named {@link DISK_NODE}. With `incoming`, QEMU waits for
 * `migrate-incoming` and stays paused after the stream ended (still `-S`), until `cont`.
 */
export function buildQemuArgs(input: QemuArgsInput): string[] {
  const file = (name: string) => qemuOptValue(join(input.dir, name));
  const args = [
    '-name', qemuOptValue(input.name),
    '-uuid', input.id,
    '-no-user-config',
    '-nodefaults',
    '-M', 'pc',
    '-accel', input.accel,
    ...(input.accel === 'kvm' ? ['-cpu', 'host'] : []),
    '-m', String(input.memoryMiB),
    '-smp', String(input.vcpus),
    '-display', 'none',
    '-vga', 'none',
    '-chardev', `socket,id=qmp,path=${file(RUNTIME_FILES.qmp)},server=on,wait=off`,
    '-mon', 'chardev=qmp,mode=control',
    '-chardev', `socket,id=ser0,path=${file(RUNTIME_FILES.console)},server=on,wait=off,logfile=${file(RUNTIME_FILES.consoleLog)},logappend=on`,
    '-serial', 'chardev:ser0',
    '-drive', `file=${file(RUNTIME_FILES.disk)},format=qcow2,if=virtio,node-name=${DISK_NODE}`,
    '-object', 'rng-random,id=rng0,filename=/dev/urandom',
    '-device', 'virtio-rng-pci,rng=rng0',
    '-pidfile', join(input.dir, RUNTIME_FILES.pid),
    ...(input.incoming ? ['-incoming', 'defer'] : []),
    '-S',
  ];
  return args;
}
