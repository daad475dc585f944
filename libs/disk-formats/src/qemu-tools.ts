import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Thin wrappers around qemu-img and qemu-io for tests, the fuzz seeds and the read benchmark:
 * QEMU is the independent reader that checks our writes. Not used by the library itself.
 */

/** Output of one qemu tool run. */
export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a qemu tool; never throws on a non-zero exit (the caller asserts on `code`). */
export function runTool(tool: 'qemu-img' | 'qemu-io', args: string[]): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    execFile(tool, args, { maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return reject(err);
      resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
    });
  });
}

/** Runs a qemu tool and throws with its stderr unless it exits 0. */
export async function mustRun(tool: 'qemu-img' | 'qemu-io', args: string[]): Promise<string> {
  const r = await runTool(tool, args);
  if (r.code !== 0) throw new Error(`${tool} ${args.join(' ')} exited ${r.code}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

/** Creates an image with qemu-img (sparse). `options` go to -o, e.g. "cluster_size=4096". */
export async function createImage(path: string, format: 'qcow2' | 'vhdx' | 'raw', size: string, options?: string): Promise<void> {
  await mustRun('qemu-img', ['create', '-q', '-f', format, ...(options ? ['-o', options] : []), path, size]);
}

/** Writes a byte pattern into the guest-visible disk through QEMU's own driver. */
export async function writeGuestPattern(path: string, format: string, pattern: number, offset: string, length: string): Promise<void> {
  await mustRun('qemu-io', ['-f', format, '-c', `write -P 0x${pattern.toString(16)} ${offset} ${length}`, path]);
}

/** `qemu-img info --output=json` with the format pinned. */
export async function imageInfo(path: string, format: string): Promise<Record<string, unknown>> {
  return JSON.parse(await mustRun('qemu-img', ['info', '--output=json', '-f', format, path])) as Record<string, unknown>;
}

/** `qemu-img check` with the format pinned; exit code 0 means no errors. */
export function checkImage(path: string, format: string, repair = false): Promise<ToolResult> {
  return runTool('qemu-img', ['check', ...(repair ? ['-r', 'all'] : []), '-f', format, path]);
}

/** True when both images show the guest exactly the same bytes (`qemu-img compare`). */
export async function sameGuestData(a: string, b: string, format: string): Promise<boolean> {
  const r = await runTool('qemu-img', ['compare', '-f', format, '-F', format, a, b]);
  return r.code === 0;
}

/** A temporary directory and its removal. */
export async function makeTempDir(prefix: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), `${prefix}-`));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** True when QEMU reads `pattern` in every byte of the guest range (`qemu-io read -P`). */
export async function guestHasPattern(path: string, format: string, pattern: number, offset: string, length: string): Promise<boolean> {
  const r = await runTool('qemu-io', ['-r', '-f', format, '-c', `read -P 0x${pattern.toString(16)} ${offset} ${length}`, path]);
  return r.code === 0 && !/verification failed/i.test(r.stdout + r.stderr);
}
