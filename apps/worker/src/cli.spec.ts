import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { CliError, TLS_FILES, parseCli } from './cli';

const env = { HYPERPLANE_DATA_DIR: '/var/hp' };

describe('parseCli', () => {
  it('applies defaults and the environment', () => {
    const config = parseCli(['--node', 'n2', '--address', '127.0.0.2'], { ...env, HYPERPLANE_GRPC_PORT: '9191', HYPERPLANE_JOIN_TOKEN: 'secret' });

    expect(config).toMatchObject({
      nodeName: 'n2',
      nodes: [{ name: 'n2', dataDir: '/var/hp/nodes/n2' }],
      address: '127.0.0.2',
      controlPlane: '127.0.0.1:9191',
      joinToken: 'secret',
      driver: 'qemu',
      accel: 'auto',
      guestDir: '/var/hp/guest',
    });
  });

  it('--control-plane wins over HYPERPLANE_CONTROL_PLANE; --data-dir over the default', () => {
    const config = parseCli(['--node', 'n2', '--address', '127.0.0.2', '--control-plane', 'cp.local:7000', '--data-dir', 'here'], { ...env, HYPERPLANE_CONTROL_PLANE: '10.0.0.1:9090' });

    expect(config.controlPlane).toBe('cp.local:7000');
    expect(config.nodes[0]!.dataDir).toBe(resolve('here'));
  });

  it('--count runs hollow nodes <node>-<i>, each with its own data dir', () => {
    const config = parseCli(['--node', 'h', '--address', '127.0.0.9', '--driver', 'simulated', '--count', '3', '--sim-start-ms', '0', '--sim-fail-rate', '0.25'], env);

    expect(config.nodes).toEqual([1, 2, 3].map((i) => ({ name: `h-${i}`, dataDir: join('/var/hp/nodes', `h-${i}`) })));
    expect(config).toMatchObject({ simStartMs: 0, simFailRate: 0.25 });
  });

  it.each([
    [['--address', '127.0.0.2'], '--node is required'],
    [['--node', 'N_2', '--address', '127.0.0.2'], '--node "N_2" must be a DNS label'],
    [['--node', 'n2'], '--address is required'],
    [['--node', 'n2', '--address', 'not an address'], '--address "not an address"'],
    [['--node', 'n2', '--address', '127.0.0.2', '--driver', 'xen'], '--driver "xen"'],
    [['--node', 'n2', '--address', '127.0.0.2', '--accel', 'hvf'], '--accel "hvf"'],
    [['--node', 'n2', '--address', '127.0.0.2', '--count', '2'], '--count needs --driver simulated'],
    [['--node', 'n2', '--address', '127.0.0.2', '--driver', 'simulated', '--count', '0'], '--count "0"'],
    [['--node', 'n2', '--address', '127.0.0.2', '--driver', 'simulated', '--sim-fail-rate', '2'], '--sim-fail-rate "2"'],
    [['--node', 'n2', '--address', '127.0.0.2', '--control-plane', 'nohost'], '--control-plane "nohost"'],
    [['--node', 'n2', '--address', '127.0.0.2', '--label', 'oops'], '--label "oops"'],
    [['--node', 'n2', '--address', '127.0.0.2', '--frobnicate'], "Unknown option '--frobnicate'"],
    [['--node', 'n2', '--address', '127.0.0.2', '--tls-dir', '/nonexistent'], '--tls-dir "/nonexistent" lacks ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem'],
    [['--node', 'n2', '--address', '127.0.0.2', '--driver', 'simulated', '--tls-dir', '/tmp'], '--tls-dir needs --driver qemu'],
  ])('%j is refused naming the culprit', (argv, message) => {
    expect(() => parseCli(argv, env)).toThrow(CliError);
    expect(() => parseCli(argv, env)).toThrow(message);
  });

  it('--tls-dir (or HYPERPLANE_TLS_DIR) names a directory with the five credential files', () => {
    const tls = mkdtempSync(join(tmpdir(), 'hp-tls-'));
    try {
      for (const f of TLS_FILES) writeFileSync(join(tls, f), 'x');
      expect(parseCli(['--node', 'n2', '--address', '127.0.0.2', '--tls-dir', tls], env).tlsDir).toBe(tls);
      expect(parseCli(['--node', 'n2', '--address', '127.0.0.2'], { ...env, HYPERPLANE_TLS_DIR: tls }).tlsDir).toBe(tls);
      expect(parseCli(['--node', 'n2', '--address', '127.0.0.2'], env).tlsDir).toBe('');
    } finally {
      rmSync(tls, { recursive: true, force: true });
    }
  });

  it('a bad environment variable is named', () => {
    expect(() => parseCli(['--node', 'n2', '--address', '127.0.0.2'], { HYPERPLANE_CONTROL_PLANE: 'x' })).toThrow('HYPERPLANE_CONTROL_PLANE "x"');
  });
});
