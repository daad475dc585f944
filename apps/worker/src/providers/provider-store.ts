/**
 * Persistence of provider records: `<data-dir>/providers/<id>/state.json`, written atomically, in
 * the replica's directory (mode 0700) shared with its daemons' files. A record never holds a key.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { UUID_RE } from '@hyperplane/domain';
import type { ProviderRecord } from './provider-record';

const STATE_FILE = 'state.json';

/** Reads and writes provider records under one node's data dir. */
export class ProviderStore {
  /** Where the per-replica directories live. */
  readonly root: string;

  constructor(dataDir: string) {
    this.root = join(dataDir, 'providers');
  }

  /** Every readable record, and the ids of replica directories without one. */
  async loadAll(): Promise<{ records: ProviderRecord[]; orphans: string[] }> {
    const names = await readdir(this.root).catch(() => [] as string[]);
    const records: ProviderRecord[] = [];
    const orphans: string[] = [];
    for (const id of names.filter((n) => UUID_RE.test(n)).sort()) {
      try {
        const record = JSON.parse(await readFile(join(this.root, id, STATE_FILE), 'utf8')) as ProviderRecord;
        if (record.id !== id || record.spec?.id !== id) throw new Error('id mismatch');
        records.push(record);
      } catch {
        orphans.push(id);
      }
    }
    return { records, orphans };
  }

  /** Writes one record (creating its directory, mode 0700). */
  async save(record: ProviderRecord): Promise<void> {
    const dir = join(this.root, record.id);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const tmp = join(dir, `.${STATE_FILE}.${randomBytes(4).toString('hex')}.tmp`);
    await writeFile(tmp, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 });
    await rename(tmp, join(dir, STATE_FILE));
  }

  /** Removes a replica's directory. Idempotent. */
  async forget(id: string): Promise<void> {
    if (!UUID_RE.test(id)) return;
    await rm(join(this.root, id), { recursive: true, force: true });
  }
}

/** A TCP port free on `host` now (another process may still take it before the daemon binds; the start then fails cleanly). */
export async function freePort(host: string): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 40_000);
    const free = await new Promise<boolean>((resolve) => {
      const server = createServer();
      server.once('error', () => resolve(false));
      server.listen(port, host, () => server.close(() => resolve(true)));
    });
    if (free) return port;
  }
  throw new Error(`no free TCP port on ${host}`);
}
