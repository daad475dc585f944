/**
 * Per-id records on disk: `<root>/<id>/state.json`, written atomically (temporary file, then
 * rename) in a directory of mode 0700 that the record shares with the files of what it describes.
 * Partitions and service-chain providers each keep theirs in one.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { UUID_RE } from '@hyperplane/domain';

const STATE_FILE = 'state.json';

/** Reads and writes the records of one kind under one directory. */
export class RecordStore<R extends { id: string }> {
  /**
   * @param root where the per-id directories live
   * @param valid extra check of a record read back for directory `id` (the id itself is always checked)
   */
  constructor(
    readonly root: string,
    private readonly valid: (record: R, id: string) => boolean = () => true,
  ) {}

  /** Every readable record, and the ids of directories without one (files without the agent's record). */
  async loadAll(): Promise<{ records: R[]; orphans: string[] }> {
    const names = await readdir(this.root).catch(() => [] as string[]);
    const records: R[] = [];
    const orphans: string[] = [];
    for (const id of names.filter((n) => UUID_RE.test(n)).sort()) {
      try {
        const record = JSON.parse(await readFile(join(this.root, id, STATE_FILE), 'utf8')) as R;
        if (record.id !== id || !this.valid(record, id)) throw new Error('id mismatch');
        records.push(record);
      } catch {
        orphans.push(id);
      }
    }
    return { records, orphans };
  }

  /**
   * Writes one record (creating its directory, mode 0700). The three file calls are synchronous:
   * a record is a few hundred bytes, not synced, and written on the critical path of starts and
   * migrations, where three trips through libuv's thread pool cost a busy node 1-10 ms.
   */
  async save(record: R): Promise<void> {
    const dir = join(this.root, record.id);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const tmp = join(dir, `.${STATE_FILE}.${randomBytes(4).toString('hex')}.tmp`);
    writeFileSync(tmp, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 });
    renameSync(tmp, join(dir, STATE_FILE));
  }

  /** Removes an id's record only: the files it shares its directory with stay (their owner removes them). Idempotent. */
  async forgetRecord(id: string): Promise<void> {
    if (!UUID_RE.test(id)) return;
    rmSync(join(this.root, id, STATE_FILE), { force: true }); // one small file, on a migration's critical path (see save)
  }

  /** Removes an id's directory with everything left in it. Idempotent. */
  async forget(id: string): Promise<void> {
    if (!UUID_RE.test(id)) return;
    await rm(join(this.root, id), { recursive: true, force: true });
  }
}
