import fc from 'fast-check';
import { deflateRawSync } from 'node:zlib';
import { crc32c } from './crc32c';
import { ENVELOPE_HEADER_BYTES, decodeEnvelope, encodeEnvelope, encodeEnvelopeToFit } from './envelope';
import { serializeMetadata } from './metadata-schema';
import { metadataArb } from './testing/arbitraries';

describe('metadata envelope', () => {
  it('round-trips any document, plain or deflated, with its inheritance flag', () => {
    fc.assert(
      fc.property(metadataArb(), fc.boolean(), fc.constantFrom('json' as const, 'deflate' as const), (m, inheritable, encoding) => {
        const json = serializeMetadata(m);
        const env = decodeEnvelope(encodeEnvelope(json, inheritable, encoding), 'test');
        expect(env).toEqual({ json, inheritable, encoding });
      }),
    );
  });

  it('prefers plain JSON and deflates only when plain does not fit', () => {
    const json = JSON.stringify({ schemaVersion: 1, description: 'a'.repeat(5000) });
    expect(encodeEnvelopeToFit(json, true, () => true)).toMatchObject({ encoding: 'json' });
    expect(encodeEnvelopeToFit(json, true, (n) => n < 1000)).toMatchObject({ encoding: 'deflate' });
    expect(encodeEnvelopeToFit(json, true, (n) => n < 10)).toMatchObject({ envelope: null });
  });

  it('detects a flipped byte anywhere in the payload (CRC-32C)', () => {
    const env = encodeEnvelope('{"schemaVersion":1}', false, 'json');
    env[ENVELOPE_HEADER_BYTES + 3] ^= 0x20;
    expect(() => decodeEnvelope(env, 'item')).toThrow(expect.objectContaining({ reason: 'bad-checksum', message: 'item: metadata CRC-32C mismatch (corrupted or torn write)' }));
  });

  it('stops a decompression bomb at the announced size', () => {
    const bomb = deflateRawSync(Buffer.alloc(50 * 1024 * 1024, 0x20));
    const env = Buffer.alloc(ENVELOPE_HEADER_BYTES + bomb.length);
    env[0] = 1;
    env[1] = 1;
    env.writeUInt32LE(bomb.length, 4);
    env.writeUInt32LE(100, 8); // claims 100 bytes of JSON
    env.writeUInt32LE(crc32c(bomb), 12);
    bomb.copy(env, ENVELOPE_HEADER_BYTES);
    expect(() => decodeEnvelope(env, 'item')).toThrow(expect.objectContaining({ reason: 'bad-metadata' }));
  });

  it.each<[string, (b: Buffer) => void, string]>([
    ['unknown version', (b) => (b[0] = 9), 'version 9 is not supported'],
    ['unknown encoding', (b) => (b[1] = 7), 'unknown metadata encoding 7'],
    ['reserved bits', (b) => (b[3] = 1), 'reserved bits'],
    ['length lie', (b) => b.writeUInt32LE(999, 4), 'does not match its container'],
    ['oversized claim', (b) => b.writeUInt32LE(2 * 1024 * 1024, 8), 'above the 1048576-byte cap'],
  ])('rejects a header with %s', (_name, mutate, message) => {
    const env = encodeEnvelope('{"schemaVersion":1}', true, 'json');
    mutate(env);
    expect(() => decodeEnvelope(env, 'item')).toThrow(message);
  });

  it('rejects invalid UTF-8', () => {
    const payload = Buffer.from([0x7b, 0xff, 0x7d]);
    const env = Buffer.alloc(ENVELOPE_HEADER_BYTES + 3);
    env[0] = 1;
    env.writeUInt32LE(3, 4);
    env.writeUInt32LE(3, 8);
    env.writeUInt32LE(crc32c(payload), 12);
    payload.copy(env, ENVELOPE_HEADER_BYTES);
    expect(() => decodeEnvelope(env, 'item')).toThrow('not valid UTF-8');
  });
});
