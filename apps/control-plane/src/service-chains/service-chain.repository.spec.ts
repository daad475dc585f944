import type { DataSource } from 'typeorm';
import { AttachmentRow, ServiceChainRepository } from './service-chain.repository';

/** A Db that answers the attachment query from `stored` (ordered as PostgreSQL would) and records each statement. */
function fakeDb(stored: Array<Pick<AttachmentRow, 'id' | 'partition_id' | 'device_index'>>) {
  const statements: unknown[][] = [];
  const db = {
    query: async (text: string, params: unknown[]) => {
      if (!text.startsWith('SELECT * FROM partition_attachments WHERE partition_id = ANY')) throw new Error(`unexpected statement: ${text}`);
      statements.push(params);
      const ids = new Set(params[0] as string[]);
      return stored
        .filter((a) => ids.has(a.partition_id))
        .sort((a, b) => (a.partition_id < b.partition_id ? -1 : a.partition_id > b.partition_id ? 1 : a.device_index - b.device_index));
    },
  };
  return { repo: new ServiceChainRepository(db as unknown as DataSource), statements };
}

describe('ServiceChainRepository.attachmentsOfPartitions', () => {
  const stored = [
    { id: 'a2', partition_id: 'p2', device_index: 1 },
    { id: 'a1', partition_id: 'p1', device_index: 2 },
    { id: 'a0', partition_id: 'p1', device_index: 1 },
    { id: 'a3', partition_id: 'p3', device_index: 1 },
  ];

  it('answers reads made at the same moment with one statement, each with its own partitions in device order', async () => {
    const { repo, statements } = fakeDb(stored);
    const [one, two, none] = await Promise.all([repo.attachmentsOfPartitions(['p1']), repo.attachmentsOfPartitions(['p3', 'p1']), repo.attachmentsOfPartitions(['p9'])]);
    expect(statements).toHaveLength(1);
    expect((statements[0]![0] as string[]).sort()).toEqual(['p1', 'p3', 'p9']);
    expect(one.map((a) => a.id)).toEqual(['a0', 'a1']);
    expect(two.map((a) => a.id)).toEqual(['a0', 'a1', 'a3']);
    expect(none).toEqual([]);
  });

  it('reads again for a later call (nothing is cached)', async () => {
    const { repo, statements } = fakeDb(stored);
    expect((await repo.attachmentsOfPartitions(['p2'])).map((a) => a.id)).toEqual(['a2']);
    expect((await repo.attachmentsOfPartitions(['p2'])).map((a) => a.id)).toEqual(['a2']);
    expect(statements).toHaveLength(2);
  });
});
