import { ValidationError } from '@hyperplane/domain';
import { impliedReplicaState } from './chain-agents';
import { attachMode, chainHealth, freeDeviceIndex, validateLinks, type LinkDefinition } from './chain-rules';
import { chainView } from './chain-view';

const key32 = Buffer.alloc(32, 7).toString('base64');

function problems(links: LinkDefinition[], below: Array<{ name: string; kind: string }> = []): Array<{ field: string; message: string }> {
  try {
    validateLinks(links, below);
  } catch (e) {
    expect(e).toBeInstanceOf(ValidationError);
    return (e as ValidationError).fieldErrors;
  }
  return [];
}

describe('validateLinks', () => {
  it('accepts a base, an encrypt link with a 32-byte key and a throttle, defaults replicas to 1 and decodes the key', () => {
    const out = validateLinks([
      { name: 'base', kind: 'base', sizeBytes: 64 * 1024 * 1024, replicas: 2 },
      { name: 'enc', kind: 'encrypt', key: key32, consumes: 'base' },
      { name: 'qos', kind: 'throttle', throttle: { iopsTotal: 100 } },
    ], []);
    expect(out.map((l) => [l.name, l.kind, l.replicas])).toEqual([['base', 'base', 2], ['enc', 'encrypt', 1], ['qos', 'throttle', 1]]);
    expect(out[1]!.key).toEqual(Buffer.alloc(32, 7));
  });

  it.each<[string, LinkDefinition[], Array<{ name: string; kind: string }>, { field: string; message: RegExp }]>([
    ['a link that consumes itself', [{ name: 'base', kind: 'base', sizeBytes: 1 << 20 }, { name: 'ov', kind: 'overlay', consumes: 'ov' }], [], { field: 'links[1].consumes', message: /link ov consumes itself/ }],
    ['a link that consumes a link not below it', [{ name: 'base', kind: 'base', sizeBytes: 1 << 20 }, { name: 'a', kind: 'overlay' }, { name: 'b', kind: 'throttle', consumes: 'base', throttle: { iopsTotal: 1 } }], [], { field: 'links[2].consumes', message: /must consume a, the link right below it/ }],
    ['a link that consumes an unknown link', [{ name: 'base', kind: 'base', sizeBytes: 1 << 20 }, { name: 'a', kind: 'overlay', consumes: 'zz' }], [], { field: 'links[1].consumes', message: /consumes zz, which is not a link/ }],
    ['a key of the wrong size', [{ name: 'base', kind: 'base', sizeBytes: 1 << 20 }, { name: 'enc', kind: 'encrypt', key: Buffer.alloc(16).toString('base64') }], [], { field: 'links[1].key', message: /must be 32 bytes \(256 bits\), base64-encoded; got 16 bytes/ }],
    ['a key that is not base64', [{ name: 'base', kind: 'base', sizeBytes: 1 << 20 }, { name: 'enc', kind: 'encrypt', key: 'not base64!' }], [], { field: 'links[1].key', message: /must be base64/ }],
    ['a first link that is not a base', [{ name: 'ov', kind: 'overlay' }], [], { field: 'links[0].kind', message: /first link of a chain must be a base/ }],
    ['a second base', [{ name: 'b2', kind: 'base', sizeBytes: 1 << 20 }], [{ name: 'base', kind: 'base' }], { field: 'links[0].kind', message: /only the first link/ }],
    ['an unknown kind', [{ name: 'base', kind: 'mirror' }], [], { field: 'links[0].kind', message: /must be one of base, overlay, encrypt, throttle, cache/ }],
    ['a base with neither image nor size', [{ name: 'base', kind: 'base' }], [], { field: 'links[0]', message: /needs an image or a sizeBytes/ }],
    ['a size that is not a multiple of 512', [{ name: 'base', kind: 'base', sizeBytes: 1_000_001 }], [], { field: 'links[0].sizeBytes', message: /multiple of 512/ }],
    ['a throttle without limits', [{ name: 'qos', kind: 'throttle', throttle: {} }], [{ name: 'base', kind: 'base' }], { field: 'links[0].throttle', message: /at least one limit/ }],
    ['an overlay above an encrypt link', [{ name: 'ov', kind: 'overlay' }], [{ name: 'base', kind: 'base' }, { name: 'enc', kind: 'encrypt' }], { field: 'links[0].kind', message: /would keep what the guest writes in clear/ }],
    ['a duplicate name', [{ name: 'base', kind: 'overlay' }], [{ name: 'base', kind: 'base' }], { field: 'links[0].name', message: /already in the chain/ }],
    ['more nodes than replicas', [{ name: 'base', kind: 'base', sizeBytes: 1 << 20, replicas: 1, nodes: ['a', 'b'] }], [], { field: 'links[0].nodes', message: /2 nodes for 1 replicas/ }],
    ['a replica count out of range', [{ name: 'base', kind: 'base', sizeBytes: 1 << 20, replicas: 9 }], [], { field: 'links[0].replicas', message: /must be 1-8/ }],
  ])('refuses %s, naming the field', (_what, links, below, expected) => {
    const found = problems(links, below);
    expect(found).toEqual(expect.arrayContaining([expect.objectContaining({ field: expected.field, message: expect.stringMatching(expected.message) })]));
  });

  it('names every problem of a request at once', () => {
    const found = problems([{ name: 'x', kind: 'overlay', consumes: 'x', key: key32 }]);
    expect(found.map((f) => f.field).sort()).toEqual(['links[0].consumes', 'links[0].key', 'links[0].kind']);
  });
});

describe('chainHealth', () => {
  const links = [{ name: 'base', replicas: 2, state: 'ready' }, { name: 'enc', replicas: 1, state: 'ready' }];
  it('is ready when every link has all its replicas healthy', () => {
    expect(chainHealth(links, [{ linkName: 'base', state: 'healthy' }, { linkName: 'base', state: 'healthy' }, { linkName: 'enc', state: 'healthy' }]).state).toBe('ready');
  });
  it('is degraded with a link short of replicas, and says which', () => {
    const h = chainHealth(links, [{ linkName: 'base', state: 'healthy' }, { linkName: 'base', state: 'syncing' }, { linkName: 'enc', state: 'healthy' }]);
    expect(h).toMatchObject({ state: 'degraded', reason: 'link base: 1 of 2 replicas healthy' });
  });
  it('is failed when a link has no healthy replica', () => {
    expect(chainHealth(links, [{ linkName: 'base', state: 'healthy' }, { linkName: 'enc', state: 'failed' }])).toMatchObject({ state: 'failed', reason: 'no healthy replica of link enc' });
  });
});

describe('attachMode and freeDeviceIndex', () => {
  const links = [{ name: 'base', position: 0 }, { name: 'ov', position: 1 }];
  it('lets a client write only at the head; an earlier link is read-only, and asking to write it is refused', () => {
    expect(attachMode(links, 'ov', undefined)).toEqual({ readOnly: false });
    expect(attachMode(links, 'ov', true)).toEqual({ readOnly: true });
    expect(attachMode(links, 'base', undefined)).toEqual({ readOnly: true });
    expect(attachMode(links, 'base', false)).toEqual({ refused: 'link base is consumed by link ov: a client attaches to it read-only' });
  });
  it('hands out the lowest free device index, none past 15', () => {
    expect(freeDeviceIndex([0, 1, 3])).toBe(2);
    expect(freeDeviceIndex(Array.from({ length: 16 }, (_, i) => i))).toBeUndefined();
  });
});

describe('replica states from node reports, and how the chain shows them', () => {
  it.each([
    ['pending', 'starting', 'starting'],
    ['starting', 'syncing', 'syncing'],
    ['syncing', 'running', 'healthy'],
    ['healthy', 'failed', 'failed'],
    ['failed', 'running', null],
    ['removing', 'running', null],
    ['healthy', 'absent', null],
  ] as const)('a %s replica reported %s becomes %s', (current, reported, expected) => {
    expect(impliedReplicaState(current, reported)).toBe(expected);
  });

  it('shows a healthy replica its consumers do not use yet as joining, and the link degraded until they do', () => {
    const at = new Date('2026-12-01T00:00:00Z');
    const chain = { id: 'c', project_id: 'p', name: 'x', description: '', state: 'ready' as const, state_reason: '', version: 3, created_at: at, updated_at: at };
    const link = { chain_id: 'c', name: 'base', position: 0, kind: 'base' as const, replicas: 2, image: '', size_bytes: 0, throttle: {}, key_sealed: null, placement: {}, state: 'ready' as const, created_at: at };
    const replica = (id: string, joined: boolean) => ({ id, chain_id: 'c', link_name: 'base', node_id: 'n', state: 'healthy' as const, state_reason: '', desired: 'running' as const, generation: 1, observed_state: 'running', observed_generation: 1, sync_from: null, format: false, expose_tcp: false, unix_path: '/s', tcp_host: '', tcp_port: 0, tls: false, tls_hostname: '', size_bytes: 1 << 20, sync_percent: 100, joined, created_at: at, updated_at: at });
    const v = chainView(chain, [link], [replica('r1', true), replica('r2', false)]);
    expect(v).toMatchObject({ state: 'degraded', head: 'base', sizeBytes: 1 << 20, etag: '"3"' });
    expect(v.links[0]!.replicaStatus.map((r) => r.state)).toEqual(['healthy', 'joining']);
    expect(chainView(chain, [link], [replica('r1', true), replica('r2', true)]).state).toBe('ready');
  });
});
