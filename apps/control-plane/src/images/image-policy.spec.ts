import { FailedPreconditionError, ResourceExhaustedError } from '@hyperplane/domain';
import { imagePolicyRefusal, imageRequirementsOf } from './image-policy';

const use = { projectId: 'p-1', projectName: 'team-a', image: 'web', adding: 1, inUse: 0, now: new Date('2026-06-01T00:00:00Z') };

describe('imagePolicyRefusal', () => {
  it.each<[string, object, Partial<typeof use>, (new (...a: never[]) => Error) | null, RegExp | null]>([
    ['no policy', { schemaVersion: 1 }, {}, null, null],
    ['expired', { expiresAt: '2026-01-01T00:00:00Z' }, {}, FailedPreconditionError, /expired at 2026-01-01T00:00:00Z \(rule expiresAt\)/],
    ['not yet expired', { expiresAt: '2027-01-01T00:00:00Z' }, {}, null, null],
    ['project not allowed', { usagePolicy: { allowedProjects: ['team-b'] } }, {}, FailedPreconditionError, /may not be used by project team-a \(rule usagePolicy.allowedProjects/],
    ['project allowed by name', { usagePolicy: { allowedProjects: ['team-a'] } }, {}, null, null],
    ['project allowed by id', { usagePolicy: { allowedProjects: ['p-1'] } }, {}, null, null],
    ['at the concurrency limit', { usagePolicy: { maxConcurrentPartitions: 2 } }, { inUse: 2 }, ResourceExhaustedError, /at most 2 concurrent partitions; 2 exist and this request adds 1/],
    ['a batch over the limit', { usagePolicy: { maxConcurrentPartitions: 2 } }, { inUse: 0, adding: 3 }, ResourceExhaustedError, /rule usagePolicy.maxConcurrentPartitions/],
    ['under the limit', { usagePolicy: { maxConcurrentPartitions: 2 } }, { inUse: 1 }, null, null],
    ['0 is unlimited', { usagePolicy: { maxConcurrentPartitions: 0 } }, { inUse: 99 }, null, null],
  ])('%s', (_name, metadata, over, cls, message) => {
    const r = imagePolicyRefusal(metadata, { ...use, ...over });
    if (cls === null) return expect(r).toBeNull();
    expect(r).toBeInstanceOf(cls);
    expect(r!.message).toMatch(message!);
  });
});

describe('imageRequirementsOf', () => {
  it('passes the hardware section to the scheduler, and nothing when there is none', () => {
    expect(imageRequirementsOf({})).toBeUndefined();
    expect(imageRequirementsOf({ hardware: { arch: 'x86_64', minVcpus: 2, minMemoryMiB: 2048, firmware: 'uefi' } })).toEqual({ arch: 'x86_64', minVcpus: 2, minMemoryMiB: 2048, firmware: 'uefi', cpuFeatures: undefined, machineTypes: undefined });
  });
});
