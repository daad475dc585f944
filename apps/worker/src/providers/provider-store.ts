/**
 * Persistence of provider records: `<data-dir>/providers/<id>/state.json`, in the replica's
 * directory (mode 0700) shared with its daemons' files (see RecordStore). A record never holds a key.
 */
import { join } from 'node:path';
import { RecordStore } from '../record-store';
import type { ProviderRecord } from './provider-record';

/** Reads and writes provider records under one node's data dir. */
export class ProviderStore extends RecordStore<ProviderRecord> {
  constructor(dataDir: string) {
    super(join(dataDir, 'providers'), (record, id) => record.spec?.id === id);
  }
}
