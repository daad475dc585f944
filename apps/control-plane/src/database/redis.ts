/** Redis connections: BullMQ needs its own blocking connections; pub/sub needs dedicated ones too. */
import IORedis, { Redis } from 'ioredis';

/** A new Redis connection for `url`; BullMQ requires maxRetriesPerRequest null. */
export function createRedis(url: string, name: string): Redis {
  return new IORedis(url, { maxRetriesPerRequest: null, enableReadyCheck: true, connectionName: name, lazyConnect: false });
}
