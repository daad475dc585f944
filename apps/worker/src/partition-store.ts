/**
 * Persistence of per-partition records: `<data-dir>/partitions/<id>/state.json`, in a directory of
 * mode 0700 shared with the driver's runtime files (see RecordStore).
 */
import { join } from 'node:path';
import type { PartitionRecord } from './partition-record';
import { RecordStore } from './record-store';

/**
 * Reads and writes partition records under one node's data dir. `loadAll` also names the
 * partition directories without a readable record (a guest's files without the agent's record:
 * reported so the control plane can decide).
 */
export class PartitionStore extends RecordStore<PartitionRecord> {
  constructor(dataDir: string) {
    super(join(dataDir, 'partitions'));
  }
}
