/**
 * CRC-32C (Castagnoli), the checksum MS-VHDX uses for headers, region tables and log entries,
 * and that we use over our own metadata payload. Table-driven (slicing-by-8), no dependencies.
 */

const POLY_REFLECTED = 0x82f63b78;

/** Eight 256-entry tables: T[0] is the classic byte table, T[k] advances k more zero bytes. */
const TABLES: Uint32Array[] = (() => {
  const tables = Array.from({ length: 8 }, () => new Uint32Array(256));
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY_REFLECTED : c >>> 1;
    tables[0][n] = c >>> 0;
  }
  for (let n = 0; n < 256; n++) {
    let c = tables[0][n];
    for (let t = 1; t < 8; t++) {
      c = (tables[0][c & 0xff] ^ (c >>> 8)) >>> 0;
      tables[t][n] = c;
    }
  }
  return tables;
})();

/**
 * Continues a CRC-32C over `data`. `crc` is a previous result (0 to start); the return value is
 * the finished checksum, so `crc32c(b, crc32c(a)) === crc32c(concat(a, b))`.
 */
export function crc32c(data: Uint8Array, crc = 0): number {
  const [t0, t1, t2, t3, t4, t5, t6, t7] = TABLES;
  let c = ~crc >>> 0;
  let i = 0;
  const end8 = data.length - (data.length % 8);
  for (; i < end8; i += 8) {
    const lo = (c ^ (data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24))) >>> 0;
    c =
      t7[lo & 0xff] ^
      t6[(lo >>> 8) & 0xff] ^
      t5[(lo >>> 16) & 0xff] ^
      t4[lo >>> 24] ^
      t3[data[i + 4]] ^
      t2[data[i + 5]] ^
      t1[data[i + 6]] ^
      t0[data[i + 7]];
  }
  for (; i < data.length; i++) c = t0[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

/**
 * CRC-32C of `data` computed as if the 4 bytes at `fieldOffset` were zero: the rule MS-VHDX uses
 * for a structure that stores its own checksum. `data` is not modified.
 */
export function crc32cWithZeroedField(data: Uint8Array, fieldOffset: number): number {
  let crc = crc32c(data.subarray(0, fieldOffset));
  crc = crc32c(new Uint8Array(4), crc);
  return crc32c(data.subarray(fieldOffset + 4), crc);
}
