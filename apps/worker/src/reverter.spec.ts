import { Reverter } from './reverter';

describe('Reverter', () => {
  it('fail() runs the undos newest first, awaiting each before the next', async () => {
    const order: string[] = [];
    const reverter = new Reverter();
    reverter.add(() => void order.push('dir'));
    reverter.add(async () => {
      await new Promise((r) => setTimeout(r, 5));
      order.push('disk');
    });
    reverter.add(() => void order.push('process'));

    await expect(reverter.fail()).resolves.toEqual([]);

    expect(order).toEqual(['process', 'disk', 'dir']);
  });

  it('success() forgets the undos: a later fail() does nothing', async () => {
    const undo = jest.fn();
    const reverter = new Reverter();
    reverter.add(undo);

    reverter.success();
    await reverter.fail();

    expect(undo).not.toHaveBeenCalled();
    expect(reverter.size).toBe(0);
  });

  it('an undo that throws does not stop the others; fail() resolves with the errors', async () => {
    const ran: number[] = [];
    const reverter = new Reverter();
    reverter.add(() => void ran.push(1));
    reverter.add(() => {
      throw new Error('socket already gone');
    });
    reverter.add(async () => {
      ran.push(3);
      throw new Error('kill failed');
    });

    const errors = await reverter.fail();

    expect(ran).toEqual([3, 1]);
    expect(errors.map((e) => (e as Error).message)).toEqual(['kill failed', 'socket already gone']);
  });

  it('fail() runs each undo once, even when called twice', async () => {
    const undo = jest.fn();
    const reverter = new Reverter();
    reverter.add(undo);

    await reverter.fail();
    await reverter.fail();

    expect(undo).toHaveBeenCalledTimes(1);
  });
});
