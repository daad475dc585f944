import { buildQemuArgs } from './qemu-args';

describe('buildQemuArgs', () => {
  const input = { id: '01900000-0000-7000-8000-00000000000a', name: 'web-1', dir: '/d/p,1', vcpus: 2, memoryMiB: 128, accel: 'tcg' as const };

  it('starts paused, with pinned formats, no defaults and the runtime files in the partition dir', () => {
    const args = buildQemuArgs(input);
    const opt = (name: string) => args.filter((_, i) => args[i - 1] === name);

    expect(args.at(-1)).toBe('-S');
    expect(args).toEqual(expect.arrayContaining(['-no-user-config', '-nodefaults']));
    expect(opt('-drive')).toEqual(['file=/d/p,,1/disk.qcow2,format=qcow2,if=virtio,node-name=disk0']);
    expect(opt('-chardev')).toEqual([
      'socket,id=qmp,path=/d/p,,1/qmp.sock,server=on,wait=off',
      'socket,id=ser0,path=/d/p,,1/console.sock,server=on,wait=off,logfile=/d/p,,1/console.log,logappend=on',
    ]);
    expect(opt('-uuid')).toEqual([input.id]);
    expect(opt('-accel')).toEqual(['tcg']);
    expect(opt('-m')).toEqual(['128']);
    expect(opt('-smp')).toEqual(['2']);
    expect(opt('-pidfile')).toEqual(['/d/p,1/qemu.pid']);
    expect(opt('-cpu')).toEqual([]);
  });

  it('uses the host CPU model with KVM', () => {
    const args = buildQemuArgs({ ...input, accel: 'kvm' });

    expect(args.slice(args.indexOf('-accel'), args.indexOf('-accel') + 4)).toEqual(['-accel', 'kvm', '-cpu', 'host']);
  });

  it('waits for an incoming migration, still paused, when asked', () => {
    const args = buildQemuArgs({ ...input, incoming: true });

    expect(args.slice(-3)).toEqual(['-incoming', 'defer', '-S']);
    expect(buildQemuArgs(input)).not.toContain('-incoming');
  });
});
