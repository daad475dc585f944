import { FakeQmpPeer, QmpClient } from '@hyperplane/qmp';
import { chainDiskArgs } from '../drivers/qemu/chain-disks';
import { childNodeName, endpointFromWire, nbdChild, quorumOf, syncQuorum } from './nbd-graph';

const R1 = '01900000-0000-7000-8000-000000000001';
const R2 = '01900000-0000-7000-8000-000000000002';
const R3 = '01900000-0000-7000-8000-000000000003';

describe('NBD endpoints and the quorum over them', () => {
  it('reaches a replica on this node by its socket and one elsewhere by TCP, with TLS and the certificate name when asked', () => {
    expect(endpointFromWire({ replicaId: R1, unixPath: '/d/nbd.sock', host: '127.0.0.2', port: 1 })).toEqual({ replicaId: R1, unixPath: '/d/nbd.sock', exportName: 'link' });
    expect(endpointFromWire({ replicaId: R2, host: '127.0.0.2', port: 20001, tls: true, tlsHostname: 'n2' })).toEqual({ replicaId: R2, host: '127.0.0.2', port: 20001, tls: true, tlsHostname: 'n2', exportName: 'link' });
    expect(endpointFromWire({ replicaId: R3 })).toBeUndefined();
    expect(nbdChild('c', { replicaId: R2, host: '127.0.0.2', port: 20001, tls: true, tlsHostname: 'n2', exportName: 'link' })).toEqual({
      driver: 'nbd', 'node-name': 'c', server: { type: 'inet', host: '127.0.0.2', port: '20001' }, export: 'link', 'reconnect-delay': 0, 'tls-creds': 'hp-nbd-tls-client', 'tls-hostname': 'n2',
    });
  });

  it('builds a quorum with vote-threshold 1 and fifo reads, one NBD child per replica, in the order given', () => {
    const q = quorumOf('up', [{ replicaId: R1, unixPath: '/a', exportName: 'link' }, { replicaId: R2, unixPath: '/b', exportName: 'link' }]);
    expect(q).toMatchObject({ driver: 'quorum', 'node-name': 'up', 'vote-threshold': 1, 'read-pattern': 'fifo' });
    expect((q.children as Array<{ 'node-name': string }>).map((c) => c['node-name'])).toEqual([childNodeName('up', R1), childNodeName('up', R2)]);
    expect(childNodeName('chain15', R1).length).toBeLessThanOrEqual(31);
  });

  it('puts chain disks after the boot disk (PCI slot 0x10 + index) and adds TLS credentials only when a replica needs them', () => {
    const args = chainDiskArgs([{ attachmentId: '01900000-0000-7000-8000-0000000000aa', index: 1, readOnly: true, replicas: [{ replicaId: R1, host: 'h', port: 2, tls: true, tlsHostname: 'n', exportName: 'link' }] }], '/tls');
    expect(args[0]).toBe('-object');
    expect(args[1]).toBe('tls-creds-x509,id=hp-nbd-tls-client,dir=/tls,endpoint=client');
    expect(JSON.parse(args[3]!)).toMatchObject({ driver: 'quorum', 'node-name': 'chain1', 'read-only': true });
    // The serial is the attachment id's last 20 hex digits (the API shows the same).
    expect(args[5]).toBe('virtio-blk-pci,drive=chain1,id=chain1,addr=0x11,serial=700080000000000000aa');
    expect(() => chainDiskArgs([{ attachmentId: 'x', index: 1, readOnly: false, replicas: [{ replicaId: R1, host: 'h', port: 2, tls: true, exportName: 'link' }] }], undefined)).toThrow(/no TLS credentials/);
    expect(() => chainDiskArgs([{ attachmentId: 'x', index: 16, readOnly: false, replicas: [{ replicaId: R1, unixPath: '/a', exportName: 'link' }] }], undefined)).toThrow(/disk index 16/);
  });
});

describe('syncQuorum against a live quorum (fake QMP peer)', () => {
  it('adds the new replica after the others, then removes the one no longer wanted, never the last child', async () => {
    const graph = {
      nodes: [{ id: 1, type: 'block-driver', name: 'up' }, { id: 2, type: 'block-driver', name: childNodeName('up', R1) }, { id: 3, type: 'block-driver', name: childNodeName('up', R2) }],
      edges: [{ parent: 1, child: 2, name: 'children.0', perm: [], 'shared-perm': [] }, { parent: 1, child: 3, name: 'children.1', perm: [], 'shared-perm': [] }],
    };
    const { peer, clientStream } = FakeQmpPeer.pair();
    peer.handle('x-debug-query-block-graph', { return: graph });
    for (const c of ['blockdev-add', 'blockdev-del', 'x-blockdev-change']) peer.handle(c, { return: {} });
    const client = await QmpClient.fromStream(clientStream);
    const change = await syncQuorum(client, 'up', [{ replicaId: R2, unixPath: '/b', exportName: 'link' }, { replicaId: R3, unixPath: '/c', exportName: 'link' }]);
    expect(change).toEqual({ added: [R3], removed: [childNodeName('up', R1)] });
    const changes = peer.received.filter((c) => c.execute === 'x-blockdev-change').map((c) => c.arguments);
    expect(changes).toEqual([{ parent: 'up', node: childNodeName('up', R3) }, { parent: 'up', child: 'children.0' }]);
    expect(peer.received.find((c) => c.execute === 'blockdev-add')?.arguments).toMatchObject({ driver: 'nbd', 'node-name': childNodeName('up', R3), server: { type: 'unix', path: '/c' } });
    await client.close();
  });

  it('keeps the last child when no replica is wanted', async () => {
    const graph = { nodes: [{ id: 1, type: 'block-driver', name: 'up' }, { id: 2, type: 'block-driver', name: childNodeName('up', R1) }], edges: [{ parent: 1, child: 2, name: 'children.0', perm: [], 'shared-perm': [] }] };
    const { peer, clientStream } = FakeQmpPeer.pair();
    peer.handle('x-debug-query-block-graph', { return: graph });
    const client = await QmpClient.fromStream(clientStream);
    expect(await syncQuorum(client, 'up', [])).toEqual({ added: [], removed: [] });
    expect(peer.received.map((c) => c.execute)).toEqual(['qmp_capabilities', 'x-debug-query-block-graph']);
    await client.close();
  });
});
