import fc from 'fast-check';
import type { HistoryEntry, ImageMetadata } from '../metadata-schema';

/** fast-check generators for valid metadata documents (test-only; excluded from the build). */

const text = (maxLength: number) => fc.oneof(fc.string({ maxLength }), fc.string({ maxLength: Math.floor(maxLength / 2), unit: 'binary' }));
const nonEmpty = (maxLength: number) => text(maxLength).filter((s) => s.length > 0);
const list = (maxItems: number, maxLength: number) => fc.array(nonEmpty(maxLength), { maxLength: maxItems });
const key = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._/-]{0,24}$/);
const timestamp = fc
  .date({ min: new Date('1970-01-01T00:00:00Z'), max: new Date('9999-12-31T23:59:59Z'), noInvalidDate: true })
  .map((d) => d.toISOString());
const detailValue = fc.oneof(
  text(60),
  fc.integer(),
  fc.double({ noNaN: true, noDefaultInfinity: true }).filter((x) => !Object.is(x, -0)),
  fc.boolean(),
  fc.constant(null),
);

/** A valid history entry. */
export const historyEntryArb: fc.Arbitrary<HistoryEntry> = fc.record(
  {
    at: timestamp,
    operation: nonEmpty(40),
    by: nonEmpty(60),
    partition: nonEmpty(40),
    node: nonEmpty(40),
    details: fc.dictionary(key, detailValue, { maxKeys: 4 }),
  },
  { requiredKeys: ['at', 'operation', 'by'] },
);

/** A valid metadata document with any subset of the optional fields. `scale` bounds sizes. */
export function metadataArb(scale: 'small' | 'medium' = 'small'): fc.Arbitrary<ImageMetadata> {
  const n = scale === 'small' ? 3 : 12;
  return fc.record(
    {
      schemaVersion: fc.constant(1 as const),
      description: text(scale === 'small' ? 120 : 2000),
      content: fc.record({ os: text(40), summary: text(200) }, { requiredKeys: [] }),
      hardware: fc.record(
        {
          arch: fc.constantFrom('x86_64', 'aarch64', 'riscv64', 'ppc64le', 's390x'),
          minVcpus: fc.integer({ min: 1, max: 4096 }),
          minMemoryMiB: fc.integer({ min: 1, max: 64 * 1024 * 1024 }),
          cpuFeatures: list(n, 20),
          machineTypes: list(n, 20),
          firmware: fc.constantFrom('bios' as const, 'uefi' as const),
        },
        { requiredKeys: ['arch', 'minVcpus', 'minMemoryMiB'] },
      ),
      hostCompatibility: fc.record({ os: list(n, 30), hypervisor: list(n, 30) }, { requiredKeys: [] }),
      expiresAt: fc.oneof(timestamp, fc.constant(null)),
      usagePolicy: fc.record(
        {
          allowedProjects: list(n, 40),
          maxConcurrentPartitions: fc.integer({ min: 0, max: 1_000_000 }),
          licence: text(100),
          drm: fc.record({ status: fc.constantFrom('none' as const, 'protected' as const, 'unknown' as const), scheme: text(30) }, { requiredKeys: ['status'] }),
        },
        { requiredKeys: [] },
      ),
      patchState: fc.record({ level: text(30), lastPatchedAt: timestamp, applied: list(n, 30), pending: list(n, 30) }, { requiredKeys: [] }),
      networkTopology: fc.record(
        {
          interfaces: fc.array(
            fc.record(
              {
                name: nonEmpty(15),
                network: text(30),
                mac: fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 6, maxLength: 6 }).map((b) => b.map((x) => x.toString(16).padStart(2, '0')).join(':')),
                model: text(20),
                addresses: list(3, 30),
              },
              { requiredKeys: ['name'] },
            ),
            { maxLength: n },
          ),
        },
        { requiredKeys: [] },
      ),
      tags: list(n * 2, 30),
      labels: fc.dictionary(key, text(60), { maxKeys: n * 2 }),
      configFiles: fc.array(
        fc.oneof(
          fc.record({ path: fc.stringMatching(/^\/[a-z0-9/._-]{0,40}$/), content: text(scale === 'small' ? 200 : 4000) }),
          fc.record({
            path: fc.stringMatching(/^\/[a-z0-9/._-]{0,40}$/),
            content: fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b).toString('base64')),
            encoding: fc.constant('base64' as const),
          }),
        ),
        { maxLength: n },
      ),
      savedStateRef: fc.oneof(text(60), fc.constant(null)),
      history: fc.array(historyEntryArb, { maxLength: scale === 'small' ? 4 : 40 }),
    },
    { requiredKeys: ['schemaVersion'] },
  );
}
