import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { mkdir, open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Inject, Injectable } from '@nestjs/common';
import { InternalError } from '@hyperplane/domain';
import { Config, CONFIG } from '../config';

/** Format of a sealed key: version byte, 12-byte nonce, 16-byte tag, ciphertext. */
const VERSION = 1;

/**
 * Seals and unseals the encryption keys of service chains (AES-256-GCM) with the control plane's
 * secrets key, so the database never holds one in clear. The secrets key comes from
 * HYPERPLANE_SECRETS_KEY, or else from `secrets.key` in the data dir, made on first use (mode
 * 0600). Keys are unsealed only to hand them to a provider over the agent stream.
 */
@Injectable()
export class ChainKeys {
  private master: Promise<Buffer> | undefined;

  constructor(@Inject(CONFIG) private readonly config: Config) {}

  /** A fresh random 32-byte key. */
  static generate(): Buffer {
    return randomBytes(32);
  }

  /** Seals a key for storage; `aad` (the chain and link) binds it to its row. */
  async seal(key: Buffer, aad: string): Promise<Buffer> {
    const nonce = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', await this.masterKey(), nonce);
    cipher.setAAD(Buffer.from(aad));
    const body = Buffer.concat([cipher.update(key), cipher.final()]);
    return Buffer.concat([Buffer.from([VERSION]), nonce, cipher.getAuthTag(), body]);
  }

  /** Unseals a key sealed by {@link seal} with the same `aad`; InternalError when it does not open. */
  async unseal(sealed: Buffer, aad: string): Promise<Buffer> {
    if (sealed.length < 29 || sealed[0] !== VERSION) throw new InternalError('a sealed chain key is malformed');
    const decipher = createDecipheriv('aes-256-gcm', await this.masterKey(), sealed.subarray(1, 13));
    decipher.setAAD(Buffer.from(aad));
    decipher.setAuthTag(sealed.subarray(13, 29));
    try {
      return Buffer.concat([decipher.update(sealed.subarray(29)), decipher.final()]);
    } catch {
      throw new InternalError('a chain key does not open with this control plane\'s secrets key (HYPERPLANE_SECRETS_KEY differs between replicas?)');
    }
  }

  private masterKey(): Promise<Buffer> {
    this.master ??= (async () => {
      if (this.config.secretsKey) return this.config.secretsKey;
      const path = join(this.config.dataDir, 'secrets.key');
      const existing = await readFile(path).catch(() => undefined);
      if (existing?.length === 32) return existing;
      await mkdir(this.config.dataDir, { recursive: true, mode: 0o700 });
      const key = randomBytes(32);
      try {
        const handle = await open(path, 'wx', 0o600);
        await handle.writeFile(key);
        await handle.close();
        return key;
      } catch {
        const raced = await readFile(path);
        if (raced.length !== 32) throw new InternalError(`${path} is not a 32-byte key`);
        return raced;
      }
    })();
    return this.master;
  }
}
