import { randomFillSync } from 'node:crypto';

/** Random bytes drawn from the OS in blocks: one system call per 512 ids rather than per id. */
const POOL = Buffer.alloc(16 * 512);
let poolAt = POOL.length;

/**
 * A UUID version 7 (RFC 9562): 48-bit Unix milliseconds then random bits, so ids sort by creation
 * time and keyset pages come out oldest first.
 */
export function uuidv7(now = Date.now()): string {
  if (poolAt + 16 > POOL.length) {
    randomFillSync(POOL);
    poolAt = 0;
  }
  const bytes = Buffer.from(POOL.subarray(poolAt, (poolAt += 16)));
  bytes.writeUIntBE(now, 0, 6);
  bytes[6] = (bytes[6]! & 0x0f) | 0x70;
  bytes[8] = (bytes[8]! & 0x3f) | 0x80;
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Canonical UUID syntax (any version). */
export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
