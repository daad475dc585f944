/** Spawns worker agents (real processes) for end-to-end tests. */
import { ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from './control-plane';

/** A worker agent process. */
export interface WorkerProcess {
  proc: ChildProcess;
  name: string;
  output(): string;
  /** SIGTERM, then SIGKILL after a grace period; resolves when it has exited. */
  stop(): Promise<void>;
}

/** Starts `node apps/worker/dist/main.js` with the given options. */
export function spawnWorker(opts: { name: string; address: string; controlPlane: string; dataDir: string; driver: 'qemu' | 'simulated'; extra?: string[]; env?: Record<string, string> }): WorkerProcess {
  const args = [join(ROOT, 'apps/worker/dist/main.js'), '--node', opts.name, '--address', opts.address, '--control-plane', opts.controlPlane, '--data-dir', opts.dataDir, '--driver', opts.driver, ...(opts.extra ?? [])];
  const proc = spawn(process.execPath, args, { env: { ...process.env, HYPERPLANE_LOG_LEVEL: 'info', ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d) => (out = (out + d).slice(-30000)));
  proc.stderr!.on('data', (d) => (out = (out + d).slice(-30000)));
  return {
    proc,
    name: opts.name,
    output: () => out,
    stop: () =>
      new Promise<void>((resolve) => {
        if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
        const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
        proc.once('exit', () => {
          clearTimeout(t);
          resolve();
        });
        proc.kill('SIGTERM');
      }),
  };
}
