/**
 * Helpers for QMP jobs (snapshot-save/load/delete, mirror) and for reading QEMU's answers about
 * snapshots and migrations into the driver's types. Pure apart from the QMP calls they are given.
 */
import { InternalError, ValidationError } from '@hyperplane/domain';
import type { JobInfo, MigrationInfo, QmpClient } from '@hyperplane/qmp';
import type { MigrationPhase, MigrationProgress, SnapshotEntry } from '../driver';

/** Snapshot tags: what qcow2 stores as a snapshot name, limited to a safe alphabet (UUIDs fit). */
const TAG_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** Throws ValidationError unless `tag` is a usable snapshot tag. Numeric-only tags are refused: qemu-img reads them as snapshot ids. */
export function checkTag(tag: string): void {
  if (!TAG_RE.test(tag) || /^\d+$/.test(tag)) {
    throw ValidationError.field('tag', `snapshot tag ${JSON.stringify(tag)} must be 1-128 characters of A-Z a-z 0-9 . _ : - and not only digits`);
  }
}

/** One snapshot as QEMU (`query-block` image info) and `qemu-img info --output=json` describe it. */
interface RawSnapshot {
  name?: string;
  'vm-state-size'?: number;
  'date-sec'?: number;
  'date-nsec'?: number;
  'vm-clock-sec'?: number;
  'vm-clock-nsec'?: number;
}

/** Snapshots from an image-info object (`snapshots` array), oldest first. */
export function snapshotsFromImageInfo(image: unknown): SnapshotEntry[] {
  const list = (image as { snapshots?: RawSnapshot[] } | undefined)?.snapshots ?? [];
  return list
    .map((s) => ({
      tag: String(s.name ?? ''),
      vmStateBytes: Number(s['vm-state-size'] ?? 0),
      createdAt: new Date(Number(s['date-sec'] ?? 0) * 1000 + Math.floor(Number(s['date-nsec'] ?? 0) / 1e6)).toISOString(),
      vmClockMs: Number(s['vm-clock-sec'] ?? 0) * 1000 + Math.floor(Number(s['vm-clock-nsec'] ?? 0) / 1e6),
    }))
    .sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

/**
 * Waits until job `id` concluded (polling `query-jobs`, so no event can be missed, and woken at
 * once by JOB_STATUS_CHANGE), dismisses it and throws its error, if any. A job that vanished
 * counts as done (auto-dismissed).
 */
export async function waitJob(qmp: QmpClient, id: string, timeoutMs: number, pollMs = 50): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let job: JobInfo | undefined;
  const changes = watchEvent(qmp, 'JOB_STATUS_CHANGE');
  try {
    for (;;) {
      job = (await qmp.queryJobs()).find((j) => j.id === id);
      if (!job || job.status === 'concluded' || job.status === 'null') break;
      if (Date.now() > deadline) throw new InternalError(`QEMU job ${id} (${job.type}) did not finish within ${timeoutMs} ms (status ${job.status})`);
      await changes.next(pollMs);
    }
  } finally {
    changes.close();
  }
  if (job) await qmp.jobDismiss(id).catch(() => undefined);
  if (job?.error) throw new InternalError(job.error);
}

/** Starts a job with `start`, then `waitJob`s it. */
export async function runJob(qmp: QmpClient, id: string, start: () => Promise<void>, timeoutMs: number): Promise<void> {
  await start();
  await waitJob(qmp, id, timeoutMs);
}

/** The progress phase of a QEMU migration status. */
export function phaseOf(status: string | undefined): MigrationPhase {
  switch (status) {
    case 'postcopy-active':
    case 'postcopy-paused':
    case 'postcopy-recover':
      return 'postcopy';
    case 'device':
    case 'pre-switchover':
      return 'switchover';
    case 'completed':
      return 'completed';
    case 'failed':
      return 'failed';
    case 'cancelling':
    case 'cancelled':
      return 'cancelled';
    default:
      return 'memory';
  }
}

/** A progress report from `query-migrate`. */
export function progressOf(info: MigrationInfo): MigrationProgress {
  const ram = info.ram;
  const pageSize = Number(ram?.['page-size'] ?? 4096) || 4096;
  return {
    phase: phaseOf(info.status),
    bytesRemaining: Number(ram?.remaining ?? 0),
    bytesTransferred: Number(ram?.transferred ?? 0),
    bytesTotal: Number(ram?.total ?? 0),
    dirtyRateBytesPerSec: Number(ram?.['dirty-pages-rate'] ?? 0) * pageSize,
    expectedDowntimeMs: Number(info['expected-downtime'] ?? 0),
    cpuThrottlePercent: Number(info['cpu-throttle-percentage'] ?? 0),
    status: String(info.status ?? 'none'),
  };
}

/**
 * Watches QMP event `name` from now on, for a loop that polls QEMU and sleeps until something
 * changes: `next(ms)` resolves at once when an event came since the previous `next` resolved
 * (such as one that arrived with the answer the loop just read), else at the next event or after
 * `ms`. Subscribing before the first poll means no event falls between a poll and the wait.
 */
export function watchEvent(qmp: QmpClient, name: string): { next(ms: number): Promise<void>; close(): void } {
  let seen = false;
  let wake: (() => void) | undefined;
  const off = qmp.onEvent(name, () => {
    seen = true;
    wake?.();
  });
  return {
    next(ms) {
      if (seen) {
        seen = false;
        return Promise.resolve();
      }
      return new Promise<void>((resolve) => {
        const timer = setTimeout(done, ms);
        function done() {
          clearTimeout(timer);
          wake = undefined;
          seen = false;
          resolve();
        }
        wake = done;
      });
    },
    close: off,
  };
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
