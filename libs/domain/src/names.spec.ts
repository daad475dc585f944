import { dnsLabelProblem } from './names';
import { uuidv7, UUID_RE } from './ids';
import { hasRole, requireRole } from './roles';

describe('names, ids and roles', () => {
  it.each(['a', 'web-1', 'x'.repeat(63), '0abc'])('accepts %s', (n) => expect(dnsLabelProblem(n)).toBeNull());
  it.each([
    ['', 'must not be empty'],
    ['x'.repeat(64), 'at most 63'],
    ['Web', 'DNS label'],
    ['-a', 'DNS label'],
    ['a-', 'DNS label'],
    ['a_b', 'DNS label'],
  ])('rejects %j', (n, msg) => expect(dnsLabelProblem(n)).toContain(msg));

  it('makes time-ordered v7 uuids', () => {
    const a = uuidv7(1000);
    const b = uuidv7(2000);
    expect(a).toMatch(UUID_RE);
    expect(a[14]).toBe('7');
    expect(a < b).toBe(true);
  });

  it('ranks roles', () => {
    expect(hasRole('admin', 'operator')).toBe(true);
    expect(hasRole('viewer', 'operator')).toBe(false);
    expect(hasRole('cluster-admin', 'admin')).toBe(true);
    expect(() => requireRole({ tokenId: 't', role: 'viewer', projectId: 'p' }, 'operator', 'start partitions')).toThrow(
      'role viewer may not start partitions: it needs operator',
    );
  });
});
