import type { HistoryEntry, ImageMetadata } from '@hyperplane/disk-formats';
import { IMAGE_HISTORY_LIMIT, withHistoryEntry } from './image-history';

const entry = (i: number, operationId?: string): HistoryEntry => ({
  at: new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString(),
  operation: 'partition-created',
  by: 'control-plane',
  partition: `p-${i}`,
  node: 'n1',
  ...(operationId ? { details: { operationId } } : {}),
});

describe('withHistoryEntry', () => {
  it(`keeps the newest ${IMAGE_HISTORY_LIMIT} entries, in order`, () => {
    let m: ImageMetadata = { schemaVersion: 1, description: 'kept', history: [] };
    for (let i = 0; i < IMAGE_HISTORY_LIMIT + 57; i++) m = withHistoryEntry(m, entry(i))!;
    expect(m.history).toHaveLength(IMAGE_HISTORY_LIMIT);
    expect(m.history![0]!.partition).toBe('p-57');
    expect(m.history!.at(-1)!.partition).toBe(`p-${IMAGE_HISTORY_LIMIT + 56}`);
    expect(m.description).toBe('kept');
  });

  it('honours a smaller limit (a file too full for the whole history)', () => {
    let m: ImageMetadata = { schemaVersion: 1 };
    for (let i = 0; i < 10; i++) m = withHistoryEntry(m, entry(i))!;
    expect(withHistoryEntry(m, entry(10), 3)!.history!.map((h) => h.partition)).toEqual(['p-8', 'p-9', 'p-10']);
  });

  it('records an operation once: a re-run with the same operation id adds nothing', () => {
    const m = withHistoryEntry({ schemaVersion: 1 }, entry(1, 'op-1'))!;
    expect(withHistoryEntry(m, entry(2, 'op-1'))).toBeNull();
    expect(withHistoryEntry(m, { ...entry(2, 'op-1'), operation: 'partition-deleted' })!.history).toHaveLength(2);
    expect(withHistoryEntry(m, entry(2, 'op-2'))!.history).toHaveLength(2);
  });

  it('does not change its input', () => {
    const m: ImageMetadata = { schemaVersion: 1, history: [entry(0)] };
    withHistoryEntry(m, entry(1));
    expect(m.history).toHaveLength(1);
  });

  it('refuses an invalid entry naming the field', () => {
    expect(() => withHistoryEntry({ schemaVersion: 1 }, { ...entry(0), node: '' })).toThrow(/history\[0\]\.node must not be empty/);
  });
});
