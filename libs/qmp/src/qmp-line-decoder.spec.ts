import { QmpProtocolError } from './qmp-errors';
import { QmpLineDecoder } from './qmp-line-decoder';

describe('QmpLineDecoder', () => {
  const text = '{"return": "héllo €"}\r\n{"event": "STOP"}\r\n\r\n{"id": 3}\n';
  const expected = ['{"return": "héllo €"}', '{"event": "STOP"}', '{"id": 3}'];

  it('yields the same lines whether the bytes come all at once or one by one', () => {
    const bytes = Buffer.from(text, 'utf8');
    const whole = new QmpLineDecoder(1024).push(bytes);
    const oneByOne = new QmpLineDecoder(1024);
    const lines: string[] = [];
    for (const byte of bytes) lines.push(...oneByOne.push(Buffer.from([byte])));
    expect(whole).toEqual(expected);
    expect(lines).toEqual(expected);
    expect(oneByOne.pendingLength).toBe(0);
  });

  it('keeps an unfinished message until its newline arrives', () => {
    const decoder = new QmpLineDecoder(1024);
    expect(decoder.push('{"return":')).toEqual([]);
    expect(decoder.pendingLength).toBe(10);
    expect(decoder.push(' {}}\n{"ev')).toEqual(['{"return": {}}']);
    expect(decoder.push('ent": "X"}\n')).toEqual(['{"event": "X"}']);
  });

  it('rejects a message longer than the limit, finished or not', () => {
    expect(() => new QmpLineDecoder(8).push('x'.repeat(9))).toThrow(QmpProtocolError);
    expect(() => new QmpLineDecoder(8).push(`${'x'.repeat(9)}\n`)).toThrow(QmpProtocolError);
    expect(new QmpLineDecoder(8).push(`${'x'.repeat(8)}\r\n`)).toEqual(['xxxxxxxx']);
  });
});
