import { deflateRawSync, inflateRawSync } from 'node:zlib';
import { crc32c } from './crc32c';
import { ImageRejectedError } from './errors';
import { MAX_METADATA_JSON_BYTES } from './metadata-schema';

/**
 * The bytes we store inside an image (qcow2 header extension body, VHDX user item), the same for
 * both formats:
 *
 *   0  u8   envelope version (1)
 *   1  u8   encoding: 0 = UTF-8 JSON, 1 = raw DEFLATE of UTF-8 JSON
 *   2  u8   flags: bit 0 = inheritable by differencing disks / overlays
 *   3  u8   reserved, 0
 *   4  u32  payload length (bytes after this 16-byte header)
 *   8  u32  JSON length in bytes once decoded (bounds inflation: no decompression bombs)
 *   12 u32  CRC-32C of the payload (detects torn or corrupted bytes; VHDX items have no CRC)
 *   16 ...  payload
 *
 * Little-endian. Plain JSON is preferred (readable with a hex dump); DEFLATE is used only when
 * plain JSON does not fit the space the format offers.
 */
export const ENVELOPE_HEADER_BYTES = 16;
const ENVELOPE_VERSION = 1;

/** How the JSON is stored inside the envelope. */
export type EnvelopeEncoding = 'json' | 'deflate';

/** An envelope taken apart. */
export interface DecodedEnvelope {
  json: string;
  encoding: EnvelopeEncoding;
  inheritable: boolean;
}

/** Builds an envelope around `json` (already validated and within MAX_METADATA_JSON_BYTES). */
export function encodeEnvelope(json: string, inheritable: boolean, encoding: EnvelopeEncoding): Buffer {
  const jsonBytes = Buffer.from(json, 'utf8');
  const payload = encoding === 'json' ? jsonBytes : deflateRawSync(jsonBytes, { level: 9 });
  const out = Buffer.alloc(ENVELOPE_HEADER_BYTES + payload.length);
  out[0] = ENVELOPE_VERSION;
  out[1] = encoding === 'json' ? 0 : 1;
  out[2] = inheritable ? 1 : 0;
  out[3] = 0;
  out.writeUInt32LE(payload.length, 4);
  out.writeUInt32LE(jsonBytes.length, 8);
  out.writeUInt32LE(crc32c(payload), 12);
  payload.copy(out, ENVELOPE_HEADER_BYTES);
  return out;
}

/**
 * Chooses plain JSON if it fits (`fits(byteLength)`), else DEFLATE if that fits; returns null
 * when neither does, with the smaller size so the caller can report it.
 */
export function encodeEnvelopeToFit(
  json: string,
  inheritable: boolean,
  fits: (envelopeBytes: number) => boolean,
): { envelope: Buffer; encoding: EnvelopeEncoding } | { envelope: null; smallestBytes: number } {
  const plain = encodeEnvelope(json, inheritable, 'json');
  if (fits(plain.length)) return { envelope: plain, encoding: 'json' };
  const packed = encodeEnvelope(json, inheritable, 'deflate');
  if (packed.length < plain.length && fits(packed.length)) return { envelope: packed, encoding: 'deflate' };
  return { envelope: null, smallestBytes: Math.min(plain.length, packed.length) };
}

/**
 * Takes an envelope apart, checking every field. `where` names the container in messages
 * ("qcow2 header extension at 512"). Throws ImageRejectedError('bad-metadata' | 'bad-checksum').
 */
export function decodeEnvelope(bytes: Buffer, where: string): DecodedEnvelope {
  const bad = (msg: string): never => {
    throw new ImageRejectedError('bad-metadata', `${where}: ${msg}`);
  };
  if (bytes.length < ENVELOPE_HEADER_BYTES) bad(`metadata envelope is ${bytes.length} bytes, shorter than its 16-byte header`);
  if (bytes[0] !== ENVELOPE_VERSION) bad(`metadata envelope version ${bytes[0]} is not supported (expected 1)`);
  const enc = bytes[1];
  if (enc !== 0 && enc !== 1) bad(`unknown metadata encoding ${enc}`);
  if ((bytes[2] & ~1) !== 0 || bytes[3] !== 0) bad('reserved bits of the metadata envelope are set');
  const payloadLength = bytes.readUInt32LE(4);
  const jsonLength = bytes.readUInt32LE(8);
  if (payloadLength !== bytes.length - ENVELOPE_HEADER_BYTES) {
    bad(`metadata payload length ${payloadLength} does not match its container (${bytes.length - ENVELOPE_HEADER_BYTES} bytes)`);
  }
  if (jsonLength > MAX_METADATA_JSON_BYTES) bad(`metadata claims ${jsonLength} bytes of JSON, above the ${MAX_METADATA_JSON_BYTES}-byte cap`);
  const payload = bytes.subarray(ENVELOPE_HEADER_BYTES);
  if (crc32c(payload) !== bytes.readUInt32LE(12)) {
    throw new ImageRejectedError('bad-checksum', `${where}: metadata CRC-32C mismatch (corrupted or torn write)`);
  }
  let jsonBytes: Buffer;
  if (enc === 0) {
    jsonBytes = payload;
  } else {
    try {
      // maxOutputLength stops a decompression bomb at the announced size (+1 to detect a lie).
      jsonBytes = inflateRawSync(payload, { maxOutputLength: jsonLength + 1 });
    } catch {
      return bad('metadata DEFLATE stream is corrupt or longer than announced');
    }
  }
  if (jsonBytes.length !== jsonLength) bad(`metadata JSON is ${jsonBytes.length} bytes, envelope says ${jsonLength}`);
  let json: string;
  try {
    json = new TextDecoder('utf-8', { fatal: true }).decode(jsonBytes);
  } catch {
    return bad('metadata is not valid UTF-8');
  }
  return { json, encoding: enc === 0 ? 'json' : 'deflate', inheritable: (bytes[2] & 1) === 1 };
}
