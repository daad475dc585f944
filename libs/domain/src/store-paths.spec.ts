import { ValidationError } from './errors';
import { storeFilePath } from './store-paths';

describe('storeFilePath', () => {
  it.each<[string, string]>([
    ['web.qcow2', '/s/images/web.qcow2'],
    ['/s/images/web.qcow2', '/s/images/web.qcow2'],
    ['./web.qcow2', '/s/images/web.qcow2'],
    ['staging/x.qcow2', '/s/images/staging/x.qcow2'],
  ])('accepts %s', (p, abs) => expect(storeFilePath('/s/images', p)).toBe(abs));

  it.each<[unknown, RegExp]>([
    ['', /is required/],
    [undefined, /is required/],
    ['../etc/passwd', /must not contain '\.\.'/],
    ['sub/../../x', /must not contain '\.\.'/],
    ['/etc/passwd', /outside the node's image store/],
    ['/s/images-other/x.qcow2', /outside the node's image store/],
    ['/s/images', /outside the node's image store/],
    ['a\0b', /at most 4096/],
    ['x'.repeat(5000), /at most 4096/],
  ])('refuses %# naming the path field', (p, message) => {
    let err: unknown;
    try {
      storeFilePath('/s/images', p);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ValidationError);
    expect((err as ValidationError).fieldErrors[0]!.field).toBe('path');
    expect((err as Error).message).toMatch(message);
  });
});

describe('storeFilePath without a known store dir', () => {
  it('accepts relative paths and refuses absolute ones, saying why', () => {
    expect(storeFilePath('', 'web.qcow2')).toBe('web.qcow2');
    expect(() => storeFilePath('', '/srv/images/web.qcow2')).toThrow(/has not said where its image store is/);
    expect(() => storeFilePath('', '../x')).toThrow(/must not contain/);
  });
});
