import fc from 'fast-check';
import { crc32c, crc32cWithZeroedField } from './crc32c';

/** Bit-by-bit reference: slow, obviously right. */
function reference(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const byte of data) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

describe('crc32c', () => {
  it.each([
    ['123456789', Buffer.from('123456789'), 0xe3069283],
    ['32 zero bytes (RFC 3720)', Buffer.alloc(32), 0x8a9136aa],
    ['32 0xff bytes (RFC 3720)', Buffer.alloc(32, 0xff), 0x62a8ab43],
    ['empty', Buffer.alloc(0), 0],
  ])('matches the published vector for %s', (_name, data, expected) => {
    expect(crc32c(data)).toBe(expected);
  });

  it('agrees with a bitwise reference on any input', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (data) => crc32c(data) === reference(data)), { numRuns: 300 });
  });

  it('can be continued across chunks', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), fc.uint8Array({ maxLength: 200 }), (a, b) => crc32c(b, crc32c(a)) === crc32c(Buffer.concat([a, b]))),
    );
  });

  it('computes a self-checksummed structure as if its field were zero', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 8, maxLength: 100 }), fc.nat(), (data, at) => {
        const off = at % (data.length - 3);
        const zeroed = Buffer.from(data);
        zeroed.fill(0, off, off + 4);
        return crc32cWithZeroedField(data, off) === crc32c(zeroed);
      }),
    );
  });
});
