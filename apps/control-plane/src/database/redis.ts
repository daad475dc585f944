/** Redis connections: BullMQ needs its own blocking connections; pub/sub needs dedicated ones too. */
import IORedis, { Redis } from 'ioredis';

/**
 * A new Redis connection for `url`. Commands issued in the same tick go out in one write
 * (auto-pipelining): a burst of events costs one syscall, not one each.
 */
export function createRedis(url: string, name: string): Redis {
  return new IORedis(url, { maxRetriesPerRequest: null, enableReadyCheck: true, connectionName: name, lazyConnect: false, enableAutoPipelining: true });
}
