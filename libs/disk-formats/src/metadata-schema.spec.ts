import fc from 'fast-check';
import { ImageRejectedError, MetadataInvalidError } from './errors';
import {
  type ImageMetadata,
  MAX_METADATA_JSON_BYTES,
  appendHistory,
  isExpired,
  parseStoredMetadata,
  serializeMetadata,
  validateMetadata,
} from './metadata-schema';
import { historyEntryArb, metadataArb } from './testing/arbitraries';

const full: ImageMetadata = {
  schemaVersion: 1,
  description: 'Debian 12 web server',
  content: { os: 'debian-12', summary: 'nginx + app' },
  hardware: { arch: 'x86_64', minVcpus: 1, minMemoryMiB: 128, cpuFeatures: [], machineTypes: ['pc'], firmware: 'bios' },
  hostCompatibility: { os: [], hypervisor: ['qemu>=7.2'] },
  expiresAt: '2027-01-01T00:00:00Z',
  usagePolicy: { allowedProjects: [], maxConcurrentPartitions: 0, licence: 'GPL-2.0', drm: { status: 'none' } },
  patchState: { level: '2026-11', lastPatchedAt: '2026-11-20T10:00:00Z', applied: ['DSA-5000'], pending: [] },
  networkTopology: { interfaces: [{ name: 'eth0', network: 'web', mac: '52:54:00:12:34:56' }] },
  tags: ['web'],
  labels: { env: 'prod' },
  configFiles: [{ path: '/etc/hostname', content: 'web-1\n' }],
  savedStateRef: null,
  history: [{ at: '2026-11-23T12:00:00Z', operation: 'created', by: 'admin' }, { at: '2026-11-24T08:00:00Z', operation: 'partition-created', by: 'control-plane', partition: '0193a1b2-0000-7000-8000-000000000001', node: 'n1', details: { operationId: 'x' } }],
};

function errorsOf(value: unknown): string[] {
  const r = validateMetadata(value);
  return r.ok ? [] : r.errors.map((e) => e.message);
}

describe('validateMetadata', () => {
  it('accepts the API.md example with every field', () => {
    expect(errorsOf(full)).toEqual([]);
  });

  it('accepts a document with only schemaVersion', () => {
    expect(errorsOf({ schemaVersion: 1 })).toEqual([]);
  });

  it.each<[string, unknown, string]>([
    ['memory zero', { schemaVersion: 1, hardware: { arch: 'x86_64', minVcpus: 1, minMemoryMiB: 0 } }, 'hardware.minMemoryMiB must be a positive integer'],
    ['memory fractional', { schemaVersion: 1, hardware: { arch: 'x86_64', minVcpus: 1, minMemoryMiB: 1.5 } }, 'hardware.minMemoryMiB must be a positive integer'],
    ['vcpus missing', { schemaVersion: 1, hardware: { arch: 'x86_64', minMemoryMiB: 1 } }, 'hardware.minVcpus is required'],
    ['arch with spaces', { schemaVersion: 1, hardware: { arch: 'x 86', minVcpus: 1, minMemoryMiB: 1 } }, 'hardware.arch must be a QEMU target name'],
    ['firmware unknown', { schemaVersion: 1, hardware: { arch: 'x86_64', minVcpus: 1, minMemoryMiB: 1, firmware: 'coreboot' } }, 'hardware.firmware must be one of "bios", "uefi"'],
    ['wrong version', { schemaVersion: 2 }, 'schemaVersion must be 1'],
    ['no version', { description: 'x' }, 'schemaVersion is required'],
    ['unknown field', { schemaVersion: 1, colour: 'red' }, 'colour is not a known field'],
    ['unknown nested field', { schemaVersion: 1, usagePolicy: { maxPartitions: 1 } }, 'usagePolicy.maxPartitions is not a known field'],
    ['expiry not a date', { schemaVersion: 1, expiresAt: 'tomorrow' }, 'expiresAt must be an RFC 3339 timestamp'],
    ['expiry Feb 30', { schemaVersion: 1, expiresAt: '2027-02-30T00:00:00Z' }, 'expiresAt must be an RFC 3339 timestamp'],
    ['negative partitions', { schemaVersion: 1, usagePolicy: { maxConcurrentPartitions: -1 } }, 'usagePolicy.maxConcurrentPartitions must be an integer >= 0'],
    ['drm status', { schemaVersion: 1, usagePolicy: { drm: { status: 'maybe' } } }, 'usagePolicy.drm.status must be one of'],
    ['tag empty', { schemaVersion: 1, tags: ['ok', ''] }, 'tags[1] must not be empty'],
    ['tags not array', { schemaVersion: 1, tags: 'web' }, 'tags must be an array of strings'],
    ['label value number', { schemaVersion: 1, labels: { env: 3 } }, 'labels.env must be a string'],
    ['label key', { schemaVersion: 1, labels: { 'bad key': 'x' } }, 'labels["bad key"] has an invalid key'],
    ['label __proto__', JSON.parse('{"schemaVersion":1,"labels":{"__proto__":"x"}}'), 'labels.__proto__ has an invalid key'],
    ['config relative path', { schemaVersion: 1, configFiles: [{ path: 'etc/x', content: '' }] }, 'configFiles[0].path must be an absolute guest path'],
    ['config base64', { schemaVersion: 1, configFiles: [{ path: '/x', content: '!!', encoding: 'base64' }] }, 'configFiles[0].content must be valid base64'],
    ['mac', { schemaVersion: 1, networkTopology: { interfaces: [{ name: 'eth0', mac: 'nope' }] } }, 'networkTopology.interfaces[0].mac must be a MAC address'],
    ['history by missing', { schemaVersion: 1, history: [{ at: '2026-01-01T00:00:00Z', operation: 'x' }] }, 'history[0].by is required'],
    ['history node empty', { schemaVersion: 1, history: [{ at: '2026-01-01T00:00:00Z', operation: 'x', by: 'y', node: '' }] }, 'history[0].node must not be empty'],
    ['history partition number', { schemaVersion: 1, history: [{ at: '2026-01-01T00:00:00Z', operation: 'x', by: 'y', partition: 7 }] }, 'history[0].partition must be a string'],
    ['history detail object', { schemaVersion: 1, history: [{ at: '2026-01-01T00:00:00Z', operation: 'x', by: 'y', details: { a: {} } }] }, 'history[0].details.a must be a string, number, boolean or null'],
    ['not an object', [1, 2], 'metadata must be a JSON object'],
  ])('names the field: %s', (_name, value, message) => {
    expect(errorsOf(value).join('\n')).toContain(message);
  });

  it('reports every violation, not only the first', () => {
    expect(errorsOf({ schemaVersion: 1, tags: [1], labels: { env: 2 }, hardware: { arch: 'x86_64', minVcpus: 0, minMemoryMiB: 0 } })).toHaveLength(4);
  });

  it('caps the serialized size at 1 MiB', () => {
    const big = { schemaVersion: 1, configFiles: Array.from({ length: 3 }, (_, i) => ({ path: `/f${i}`, content: 'x'.repeat(400_000) })) };
    expect(errorsOf(big).join()).toContain(`above the cap of ${MAX_METADATA_JSON_BYTES}`);
    expect(() => serializeMetadata(big as ImageMetadata)).toThrow(MetadataInvalidError);
  });

  it('accepts any generated document, and its JSON reads back equal', () => {
    fc.assert(
      fc.property(metadataArb('medium'), (m) => {
        expect(errorsOf(m)).toEqual([]);
        expect(parseStoredMetadata(serializeMetadata(m), 'test')).toEqual(m);
      }),
      { numRuns: 300 },
    );
  });
});

describe('parseStoredMetadata (untrusted bytes from an image)', () => {
  it('rejects broken JSON as bad-metadata', () => {
    expect(() => parseStoredMetadata('{"schemaVersion":', 'item')).toThrow(expect.objectContaining({ reason: 'bad-metadata' }));
  });

  it('refuses a newer schema instead of guessing', () => {
    expect(() => parseStoredMetadata('{"schemaVersion":7}', 'item')).toThrow(
      expect.objectContaining({ reason: 'unsupported-version', message: 'item: metadata schemaVersion 7 is newer than this reader (1)' }),
    );
  });

  it('rejects schema violations with the field named', () => {
    let err: unknown;
    try {
      parseStoredMetadata('{"schemaVersion":1,"hardware":{"arch":"x86_64","minVcpus":1,"minMemoryMiB":-4}}', 'item');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ImageRejectedError);
    expect((err as Error).message).toContain('hardware.minMemoryMiB must be a positive integer');
  });
});

describe('appendHistory', () => {
  it('appends without touching its input', () => {
    fc.assert(
      fc.property(metadataArb(), historyEntryArb, (m, entry) => {
        const before = JSON.stringify(m);
        const next = appendHistory(m, entry);
        expect(JSON.stringify(m)).toBe(before);
        expect(next.history?.at(-1)).toEqual(entry);
        expect(next.history).toHaveLength((m.history?.length ?? 0) + 1);
        expect(errorsOf(next)).toEqual([]);
      }),
    );
  });

  it('drops the oldest entries beyond maxEntries', () => {
    let m: ImageMetadata = { schemaVersion: 1 };
    for (let i = 0; i < 5; i++) m = appendHistory(m, { at: '2026-01-01T00:00:00Z', operation: `op${i}`, by: 'cp' }, { maxEntries: 3 });
    expect(m.history?.map((h) => h.operation)).toEqual(['op2', 'op3', 'op4']);
  });

  it('rejects an invalid entry with its future index in the field name', () => {
    expect(() => appendHistory(full, { at: 'now', operation: 'x', by: 'y' })).toThrow('history[2].at must be an RFC 3339 timestamp');
  });
});

describe('isExpired', () => {
  it('compares expiresAt with now; null and absent never expire', () => {
    const now = new Date('2027-01-01T00:00:00Z');
    expect(isExpired({ schemaVersion: 1, expiresAt: '2026-12-31T23:59:59Z' }, now)).toBe(true);
    expect(isExpired({ schemaVersion: 1, expiresAt: '2027-01-01T00:00:00Z' }, now)).toBe(true);
    expect(isExpired({ schemaVersion: 1, expiresAt: '2027-01-01T00:00:01Z' }, now)).toBe(false);
    expect(isExpired({ schemaVersion: 1, expiresAt: null }, now)).toBe(false);
    expect(isExpired({ schemaVersion: 1 }, now)).toBe(false);
  });
});
