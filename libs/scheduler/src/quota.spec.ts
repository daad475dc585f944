import { checkQuota } from './quota';
import { request } from './testing/fixtures';
import type { ProjectQuota, ProjectUsage } from './types';

describe('project quota', () => {
  const used: ProjectUsage = { partitions: 12, vcpus: 30, memoryMiB: 7168 };
  const rows: Array<[string, ProjectQuota | undefined, ProjectUsage | undefined, string[]]> = [
    ['no quota', undefined, used, []],
    ['no limits', {}, used, []],
    ['exactly the room left', { maxPartitions: 13, maxVcpus: 34, maxMemoryMiB: 9216 }, used, []],
    ['partitions full', { maxPartitions: 12 }, used, ['project quota: 12 of 12 partitions used']],
    ['vcpus would go over', { maxVcpus: 32 }, used, ['project quota: 30 of 32 vcpus used, 4 more requested']],
    ['memory would go over', { maxMemoryMiB: 8192 }, used, ['project quota: 7168 of 8192 MiB of memory used, 2048 MiB more requested']],
    ['0 allows none', { maxPartitions: 0 }, undefined, ['project quota: 0 of 0 partitions used']],
    ['every exceeded limit is named', { maxPartitions: 12, maxVcpus: 32, maxMemoryMiB: 8192 }, used, [
      'project quota: 12 of 12 partitions used',
      'project quota: 30 of 32 vcpus used, 4 more requested',
      'project quota: 7168 of 8192 MiB of memory used, 2048 MiB more requested',
    ]],
  ];
  it.each(rows)('%s', (_case, quota, usage, messages) => {
    const out = checkQuota(request({ vcpus: 4, memoryMiB: 2048 }), quota, usage);
    expect(out).toEqual(messages.map((message) => ({ reason: 'quota', message })));
  });
});
