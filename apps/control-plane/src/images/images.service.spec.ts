import { ValidationError } from '@hyperplane/domain';
import { ImageRepository, searchWhere } from './image.repository';
import { parseFilter } from './images.service';

describe('parseFilter', () => {
  it.each<[string, object]>([
    ['hardware.minMemoryMiB>=2048', { path: ['hardware', 'minMemoryMiB'], op: '>=', value: '2048' }],
    ['content.os=debian-12', { path: ['content', 'os'], op: '=', value: 'debian-12' }],
    ['content.os != alpine', { path: ['content', 'os'], op: '!=', value: 'alpine' }],
    ['labels.team=a=b', { path: ['labels', 'team'], op: '=', value: 'a=b' }],
    ['hardware.minVcpus<4', { path: ['hardware', 'minVcpus'], op: '<', value: '4' }],
    ['usagePolicy.maxConcurrentPartitions>0', { path: ['usagePolicy', 'maxConcurrentPartitions'], op: '>', value: '0' }],
  ])('%s', (raw, expected) => expect(parseFilter(raw)).toEqual(expected));

  it.each(['no operator', 'a..b=1', '=1', "x';drop table images;--=1", 'hardware.minVcpus>=four', 'hardware.minVcpus<'])('rejects %j naming the filter field', (raw) => {
    let err: unknown;
    try {
      parseFilter(raw);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ValidationError);
    expect((err as ValidationError).fieldErrors[0]!.field).toBe('filter');
  });
});

describe('searchWhere', () => {
  const project = '01a20a32-77e7-72c5-9b70-76cf46c3238e';
  const now = new Date('2026-01-01T00:00:00Z');

  it('puts tags and labels in one containment test (one GIN probe) and binds every value', () => {
    const w = searchWhere(project, { pageSize: 10, afterId: null }, { tags: ['web'], labels: { env: 'prod' }, now });
    expect(String(w)).toBe(`WHERE project_id = $1 AND state = $2 AND metadata @> $3::jsonb AND (expires_at IS NULL OR expires_at > $4)`);
    expect(w.params).toEqual([project, 'ready', JSON.stringify({ tags: ['web'], labels: { env: 'prod' } }), now]);
  });

  it('compares = as JSON (the string, and the number it spells) and keeps indexed numeric paths in the index expression', () => {
    const { text, params } = ImageRepository.searchSql(project, { pageSize: 10, afterId: null }, {
      includeExpired: true,
      filters: [{ path: ['hardware', 'minVcpus'], op: '=', value: '4' }, { path: ['hardware', 'minMemoryMiB'], op: '>=', value: '2048' }, { path: ['patchState', 'level'], op: '<', value: '3' }],
    });
    expect(text).toContain(`(metadata @> $4::jsonb OR metadata @> $3::jsonb)`);
    expect(params.slice(2, 4)).toEqual([JSON.stringify({ hardware: { minVcpus: 4 } }), JSON.stringify({ hardware: { minVcpus: '4' } })]);
    expect(text).toContain(`(metadata #>> '{hardware,minMemoryMiB}')::numeric >= $5::numeric`);
    expect(text).toContain(`(CASE WHEN jsonb_typeof(metadata #> '{patchState,level}') = 'number' THEN (metadata #>> '{patchState,level}')::numeric END) < $6::numeric`);
    expect(text).not.toContain('expires_at');
    expect(text).toMatch(/ORDER BY id LIMIT \$7$/);
    expect(params[6]).toBe(11);
  });
});
