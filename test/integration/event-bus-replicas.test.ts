/**
 * The events channel against the real Redis: a replica alone sends nothing to Redis; it starts
 * sending when another replica greets (at once) or when anything else subscribes (within its
 * check every second); replicas hear each other's events; one left alone stops again.
 */
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import pino from 'pino';
import type { Config } from '../../apps/control-plane/src/config';
import { EventBus, HpEvent } from '../../apps/control-plane/src/events/event-bus';
import { waitUntil } from '../helpers/control-plane';

const url = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const prefix = `hp-bus-${randomUUID().slice(0, 8)}`;
const channel = `${prefix}:events`;
const clients: Redis[] = [];
const buses: EventBus[] = [];

async function replica(): Promise<EventBus> {
  const [pub, sub] = [new Redis(url), new Redis(url)];
  clients.push(pub, sub);
  const bus = new EventBus(pub, sub, { redisPrefix: prefix } as Config, pino({ level: 'silent' }));
  await bus.onModuleInit();
  buses.push(bus);
  return bus;
}

const change = (type: string) => ({ type, resourceType: 'partition' as const, resourceId: randomUUID(), projectId: null, data: { at: Date.now() } });
const peersOf = (bus: EventBus) => (bus as unknown as { peers: boolean }).peers;

afterAll(async () => {
  for (const b of buses) await b.onModuleDestroy();
  for (const c of clients) c.disconnect();
});

it('alone sends nothing; a greeting makes both send at once; a plain subscriber is found by the check; alone again, it stops', async () => {
  const a = await replica();
  expect(peersOf(a)).toBe(false);
  const publish = jest.spyOn(clients[0]!, 'publish');
  for (let i = 0; i < 20; i++) await a.publish(change('alone'));
  expect(publish).not.toHaveBeenCalled(); // not one PUBLISH for 20 events
  publish.mockRestore();

  const b = await replica(); // greets: a hears it and sends from then on
  await waitUntil(() => peersOf(a), 500, 'a to hear b greet');
  expect(peersOf(b)).toBe(true);
  const heardByB: string[] = [];
  const heardByA: string[] = [];
  b.subscribe((e: HpEvent) => heardByB.push(e.type));
  a.subscribe((e: HpEvent) => heardByA.push(e.type));
  await a.publish(change('from-a'));
  await b.publish(change('from-b'));
  await waitUntil(() => heardByB.includes('from-a') && heardByA.includes('from-b'), 5_000, 'each to hear the other');

  // b goes: a's next message reaches only a's own subscription, so a stops sending.
  await b.onModuleDestroy();
  buses.splice(buses.indexOf(b), 1);
  await clients[3]!.unsubscribe(channel);
  await a.publish(change('last'));
  await waitUntil(() => !peersOf(a), 5_000, 'a to find itself alone');

  // Something that subscribes without greeting (another client of the channel) is found by the check.
  const plain = new Redis(url);
  clients.push(plain);
  const got: string[] = [];
  plain.on('message', (_c, m: string) => got.push(...(JSON.parse(m) as { events: HpEvent[] }).events.map((e) => e.type)));
  await plain.subscribe(channel);
  await waitUntil(() => peersOf(a), 5_000, 'a to find the plain subscriber');
  await a.publish(change('seen'));
  await waitUntil(() => got.includes('seen'), 5_000, 'the plain subscriber to get the event');
});
