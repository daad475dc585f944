/**
 * Persistence of per-partition records: `<data-dir>/partitions/<id>/state.json`, written
 * atomically (temporary file, then rename), in a directory of mode 0700 shared with the driver's
 * runtime files.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { UUID_RE } from '@hyperplane/domain';
import type { PartitionRecord } from './partition-record';

const STATE_FILE = 'state.json';

/** Reads and writes partition records under one node's data dir. */
export class PartitionStore {
  /** Where the per-partition directories live. */
  readonly root: string;

  constructor(dataDir: string) {
    this.root = join(dataDir, 'partitions');
  }

  /**
   * Every record on disk, and the ids of partition directories without a readable record (a
   * guest's files without the agent's record: reported so the control plane can decide).
   */
  async loadAll(): Promise<{ records: PartitionRecord[]; orphans: string[] }> {
    let names: string[];
    try {
      names = await readdir(this.root);
    } catch {
      return { records: [], orphans: [] };
    }
    const records: PartitionRecord[] = [];
    const orphans: string[] = [];
    for (const id of names.filter((n) => UUID_RE.test(n)).sort()) {
      try {
        const record = JSON.parse(await readFile(join(this.root, id, STATE_FILE), 'utf8')) as PartitionRecord;
        if (record.id !== id) throw new Error('id mismatch');
        records.push(record);
      } catch {
        orphans.push(id);
      }
    }
    return { records, orphans };
  }

  /** Writes one record (creating its directory, mode 0700). */
  async save(record: PartitionRecord): Promise<void> {
    const dir = join(this.root, record.id);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const tmp = join(dir, `.${STATE_FILE}.${randomBytes(4).toString('hex')}.tmp`);
    await writeFile(tmp, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 });
    await rename(tmp, join(dir, STATE_FILE));
  }

  /** Removes a partition's directory with everything left in it. Idempotent. */
  async forget(id: string): Promise<void> {
    if (!UUID_RE.test(id)) return;
    await rm(join(this.root, id), { recursive: true, force: true });
  }
}
