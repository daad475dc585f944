/** What end-to-end tests with real guests need: the sample guest, QEMU and other tools, and cleanup of QEMU processes. */
import { execSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './control-plane';

/** The sample guest build (npm run guest:build). */
export const GUEST = process.env.HYPERPLANE_GUEST_DIR ?? join(ROOT, '.hyperplane/guest');

/** True when `cmd` is on PATH. */
export function haveCommand(cmd: string): boolean {
  try {
    execSync(`command -v ${cmd}`, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * `describe` when QEMU, the sample guest and the `tools` are here, else `describe.skip` with a
 * warning naming what is missing (CI installs all of them: .ci/run).
 */
export function describeWithGuest(what: string, tools: string[] = []): jest.Describe {
  const missing = ['qemu-system-x86_64', ...tools].filter((t) => !haveCommand(t));
  if (!existsSync(join(GUEST, 'sample.qcow2'))) missing.push(`${GUEST}/sample.qcow2 (npm run guest:build)`);
  if (missing.length === 0) return describe;
  console.warn(`skipping ${what}: missing ${missing.join(', ')}`);
  return describe.skip;
}

/** Pids of the QEMU processes whose command line mentions `path` (a test's data dir). */
export function qemusUnder(path: string): number[] {
  return execSync('pgrep -af qemu-system || true', { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.includes(path))
    .map((l) => Number(l.trim().split(/\s+/)[0]));
}

/** SIGKILLs every QEMU process under `path` (guests outlive their workers by design). */
export function killQemusUnder(path: string): void {
  for (const pid of qemusUnder(path)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}
