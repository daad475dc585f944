/**
 * Small wrappers around QEMU's command-line tools and the host facts the QEMU driver needs. Every
 * child process gets a timeout, and every format is pinned: nothing here lets QEMU probe a file.
 */
import { execFile } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { delimiter, join } from 'node:path';

/** Default timeout for a QEMU tool invocation. */
export const TOOL_TIMEOUT_MS = 15_000;

/** Runs a program and resolves with its stdout; rejects with its stderr in the message. */
export function run(file: string, args: string[], timeoutMs = TOOL_TIMEOUT_MS): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 4 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) {
        const detail = String(stderr).trim().split('\n').slice(-3).join(' ') || error.message;
        reject(new Error(`${file} ${args[0] ?? ''}: ${detail}`, { cause: error }));
        return;
      }
      resolve(String(stdout));
    });
  });
}

/** The absolute path of an executable found on PATH, or undefined. */
export function findOnPath(name: string, path = process.env.PATH ?? ''): string | undefined {
  if (name.includes('/')) return name;
  for (const dir of path.split(delimiter)) {
    if (!dir) continue;
    try {
      accessSync(join(dir, name), constants.X_OK);
      return join(dir, name);
    } catch {
      continue;
    }
  }
  return undefined;
}

/** What `qemu-img info` says about a qcow2 file. */
export interface Qcow2Info {
  virtualSizeBytes: number;
  actualSizeBytes: number;
  backingFile?: string;
}

/** `qemu-img info -f qcow2 --output=json FILE`; the format is pinned, so a non-qcow2 file fails. */
export async function qcow2Info(qemuImg: string, file: string, timeoutMs = TOOL_TIMEOUT_MS): Promise<Qcow2Info> {
  const out = await run(qemuImg, ['info', '-f', 'qcow2', '--output=json', file], timeoutMs);
  const info = JSON.parse(out) as Record<string, unknown>;
  const virtual = Number(info['virtual-size']);
  if (!Number.isFinite(virtual) || virtual <= 0) throw new Error(`qemu-img info ${file}: no virtual size`);
  return {
    virtualSizeBytes: virtual,
    actualSizeBytes: Number(info['actual-size'] ?? 0),
    backingFile: typeof info['backing-filename'] === 'string' ? info['backing-filename'] : undefined,
  };
}

/** Creates a qcow2 overlay `file` over `backing` (absolute path, its format pinned), `sizeBytes` large. */
export async function createOverlay(qemuImg: string, file: string, backing: string, sizeBytes: number, backingFormat: 'qcow2' | 'vhdx' | 'raw' = 'qcow2', timeoutMs = TOOL_TIMEOUT_MS): Promise<void> {
  await run(qemuImg, ['create', '-q', '-f', 'qcow2', '-F', backingFormat, '-b', backing, file, String(sizeBytes)], timeoutMs);
}

/** The version from `qemu-system-x86_64 --version` ("7.2.22"), or the whole first line. */
export async function qemuVersion(qemu: string): Promise<string> {
  const first = (await run(qemu, ['--version'])).split('\n')[0] ?? '';
  return /version\s+(\S+)/.exec(first)?.[1] ?? first.trim();
}

/** Machine type names from `qemu-system-x86_64 -machine help` (aliases included, `none` left out). */
export async function qemuMachineTypes(qemu: string): Promise<string[]> {
  const out = await run(qemu, ['-machine', 'help']);
  const names: string[] = [];
  for (const line of out.split('\n')) {
    const m = /^(\S+)\s+\S/.exec(line);
    if (m && m[1] !== 'Supported' && m[1] !== 'none') names.push(m[1]!);
  }
  return names;
}

/** The CPU flags of the first processor in /proc/cpuinfo (empty when there is none). */
export async function cpuFlags(cpuinfoPath = '/proc/cpuinfo'): Promise<string[]> {
  const text = await readFile(cpuinfoPath, 'utf8').catch(() => '');
  const line = /^flags\s*:(.*)$/m.exec(text)?.[1] ?? '';
  return line.trim().split(/\s+/).filter(Boolean);
}

/** An accelerator choice: `auto` picks by the rule in {@link chooseAccelerator}. */
export type AccelChoice = 'auto' | 'kvm' | 'tcg';

/**
 * The accelerator to run guests with. KVM only when /dev/kvm opens read-write AND the CPU has
 * `vmx` or `svm` (a nested VM without them has a /dev/kvm on which guests hang): otherwise TCG.
 * An explicit `kvm` or `tcg` wins.
 */
export async function chooseAccelerator(choice: AccelChoice, flags: string[], kvmPath = '/dev/kvm'): Promise<'kvm' | 'tcg'> {
  if (choice !== 'auto') return choice;
  if (!flags.includes('vmx') && !flags.includes('svm')) return 'tcg';
  try {
    const handle = await open(kvmPath, 'r+');
    await handle.close();
    return 'kvm';
  } catch {
    return 'tcg';
  }
}

/**
 * Aborts this host's TCP connections to `host:port` (`ss -K`, needs CAP_NET_ADMIN and a kernel
 * with socket destroy). Used when a migration destination stops answering: QEMU would otherwise
 * wait for its NBD requests for as long as TCP keeps the connection. Resolves false when `ss` is
 * missing or refused.
 */
export async function killTcpConnections(host: string, port: number): Promise<boolean> {
  const ss = findOnPath('ss');
  if (!ss) return false;
  try {
    await run(ss, ['-K', 'dst', host, 'dport', '=', `:${port}`], 5_000);
    return true;
  } catch {
    return false;
  }
}
