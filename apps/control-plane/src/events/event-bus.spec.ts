import { EventEmitter } from 'node:events';
import pino from 'pino';
import type { Redis } from 'ioredis';
import type { Config } from '../config';
import { EventBus, HpEvent } from './event-bus';

/** An EventBus on a fake Redis: `receivers` is what PUBLISH answers, `subscribers` what PUBSUB NUMSUB does. */
async function busOn(receivers: number, subscribers = receivers) {
  const sent: Array<{ channel: string; message: string }> = [];
  const state = { receivers, subscribers, duringPublish: undefined as (() => void) | undefined, resubscribed: Promise.resolve() };
  const redis = {
    publish: async (channel: string, message: string) => {
      sent.push({ channel, message });
      state.duringPublish?.();
      return state.receivers;
    },
    pubsub: async (_sub: string, channel: string) => [channel, state.subscribers],
  } as unknown as Redis;
  /** SUBSCRIBE answers once `state.resubscribed` resolves (a reconnect's subscription not back yet). */
  const sub = Object.assign(new EventEmitter(), { subscribe: async () => { await state.resubscribed; return 1; } }) as unknown as Redis;
  const bus = new EventBus(redis, sub, { redisPrefix: 'hp-test' } as Config, pino({ level: 'silent' }));
  await bus.onModuleInit();
  /** Events sent to Redis (the greeting has none). */
  const published = () => sent.flatMap((s) => (JSON.parse(s.message) as { events: HpEvent[] }).events.map((e) => e.type));
  return { bus, sub, state, sent, published };
}

const change = (type: string) => ({ type, resourceType: 'partition' as const, resourceId: 'p1', projectId: null, data: null });

describe('EventBus', () => {
  it('greets once subscribed; alone, it sends nothing to Redis yet still delivers here, with the record', async () => {
    const { bus, sent, published } = await busOn(1);
    expect(sent).toHaveLength(1); // the greeting
    expect(JSON.parse(sent[0]!.message).events).toEqual([]);
    const heard: Array<[string, unknown]> = [];
    bus.subscribeTo('p1', (e, record) => heard.push([e.type, record]));
    await bus.publish(change('partition.updated'), { id: 'p1', state: 'running' });
    expect(heard).toEqual([['partition.updated', { id: 'p1', state: 'running' }]]);
    expect(published()).toEqual([]);
    await bus.onModuleDestroy();
  });

  it('publishes once another replica greets, and only the event (never the record) travels', async () => {
    const { bus, sub, published, sent } = await busOn(1);
    sub.emit('message', 'hp-test:events', JSON.stringify({ origin: 'other-replica', events: [] }));
    await bus.publish(change('partition.updated'), { secret: 'row' });
    expect(published()).toEqual(['partition.updated']);
    expect(sent[1]!.message).not.toContain('secret');
    await bus.onModuleDestroy();
  });

  it('stops publishing when Redis says its own subscription alone got the message, and starts again when a check finds another', async () => {
    jest.useFakeTimers({ doNotFake: ['nextTick', 'setImmediate', 'queueMicrotask'] });
    try {
      const { bus, state, published } = await busOn(2);
      await bus.publish(change('a'));
      state.receivers = 1; // the other replica went away
      await bus.publish(change('b'));
      await bus.publish(change('c'));
      expect(published()).toEqual(['a', 'b']);
      state.receivers = 2;
      state.subscribers = 2; // another subscribed, its greeting not heard here
      await jest.advanceTimersByTimeAsync(1000);
      await bus.publish(change('d'));
      expect(published()).toEqual(['a', 'b', 'd']);
      await bus.onModuleDestroy();
    } finally {
      jest.useRealTimers();
    }
  });

  it('delivers the events of another replica here, and skips its own coming back', async () => {
    const { bus, sub } = await busOn(2);
    const heard: string[] = [];
    bus.subscribe((e) => heard.push(e.type));
    const e = { id: '1', at: '', ...change('from.other') };
    sub.emit('message', 'hp-test:events', JSON.stringify({ origin: 'other-replica', events: [e] }));
    await bus.publish(change('mine'));
    const own = (bus as unknown as { ownPrefix: string }).ownPrefix;
    sub.emit('message', 'hp-test:events', `${own}"events":[${JSON.stringify({ ...e, type: 'mine' })}]}`);
    expect(heard).toEqual(['from.other', 'mine']);
    await bus.onModuleDestroy();
  });

  it('keeps publishing when another replica spoke while Redis counted the receivers, or when its own subscription is down', async () => {
    const { bus, sub, state, published } = await busOn(2);
    state.receivers = 1;
    state.duringPublish = () => sub.emit('message', 'hp-test:events', JSON.stringify({ origin: 'other-replica', events: [] }));
    await bus.publish(change('a')); // the other's greeting came in on the other connection meanwhile
    state.duringPublish = undefined;
    sub.emit('close'); // our subscriber lost its connection
    await bus.publish(change('b')); // the one receiver was the other replica
    await bus.publish(change('c'));
    expect(published()).toEqual(['a', 'b', 'c']);
    let back!: () => void;
    state.resubscribed = new Promise<void>((r) => (back = r));
    sub.emit('ready'); // reconnected, its subscription not back in Redis yet
    await bus.publish(change('d'));
    expect(published()).toEqual(['a', 'b', 'c', 'd']);
    back();
    await new Promise((r) => setImmediate(r)); // subscribed again, and greeted (one receiver: itself)
    await bus.publish(change('e'));
    expect(published()).toEqual(['a', 'b', 'c', 'd']);
    await bus.onModuleDestroy();
  });

  it('always sends a cancel request; greets again and publishes once its subscriber is back', async () => {
    const { bus, sub, sent, published } = await busOn(1);
    await bus.publish({ type: 'operation.cancel-requested', resourceType: 'operation', resourceId: 'o1', projectId: null, data: null });
    await bus.publish(change('skipped'));
    expect(published()).toEqual(['operation.cancel-requested']);
    const before = sent.length;
    sub.emit('ready');
    await new Promise((r) => setImmediate(r));
    expect(sent.length).toBe(before + 1); // the greeting
    expect(JSON.parse(sent[before]!.message).events).toEqual([]);
    await bus.onModuleDestroy();
  });
});
