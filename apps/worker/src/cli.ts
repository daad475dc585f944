/**
 * Command line and environment of the worker. Everything is validated before anything starts; a
 * bad value is a {@link CliError} whose message names the flag or variable (main prints it on one
 * line and exits 2).
 */
import { existsSync } from 'node:fs';
import { isIP } from 'node:net';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import type { AccelChoice } from './drivers/qemu/host-tools';

/** A bad flag or environment variable; the message names it. */
export class CliError extends Error {
  override readonly name = 'CliError';
}

/** One node this process runs (several for `--count`). */
export interface NodeConfig {
  name: string;
  dataDir: string;
}

/** The validated configuration of a worker process. */
export interface WorkerConfig {
  help: boolean;
  /** The `--node` value (the prefix of hollow nodes' names). */
  nodeName: string;
  /** The node(s): one, or `--count` hollow nodes named `<node>-<i>`. */
  nodes: NodeConfig[];
  address: string;
  controlPlane: string;
  joinToken: string;
  driver: 'qemu' | 'simulated';
  accel: AccelChoice;
  simStartMs: number;
  simFailRate: number;
  /** Where the sample guest build is (image store seed). */
  guestDir: string;
  labels: Record<string, string>;
  logLevel: string;
  /** x509 credentials for encrypted migration (QEMU tls-creds-x509 layout); '' when the node has none. */
  tlsDir: string;
}

/** Usage text for --help. */
export const USAGE = `Usage: node apps/worker/dist/main.js --node NAME --address ADDR [options]

  --node NAME             node name (a DNS label)
  --address ADDR          address the node is reachable at (e.g. 127.0.0.2)
  --control-plane H:P     control plane gRPC endpoint (env HYPERPLANE_CONTROL_PLANE,
                          default 127.0.0.1:\${HYPERPLANE_GRPC_PORT:-9090})
  --data-dir DIR          node data dir (default $HYPERPLANE_DATA_DIR/nodes/NAME;
                          with --count: the parent of the hollow nodes' dirs)
  --driver qemu|simulated guest driver (default qemu; simulated is for scale tests only)
  --accel auto|kvm|tcg    QEMU accelerator (default auto: kvm only if usable and vmx/svm)
  --count N               run N hollow nodes NAME-1..NAME-N (simulated driver only)
  --sim-start-ms MS       simulated start latency (default 200)
  --sim-fail-rate R       simulated share of failed starts, 0..1 (default 0)
  --label KEY=VALUE       inventory label (repeatable)
  --tls-dir DIR           TLS credentials for encrypted live migration (env HYPERPLANE_TLS_DIR):
                          ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem,
                          client-key.pem; the server certificate names this node (--node)
  --help                  this text

Environment: HYPERPLANE_DATA_DIR (default .hyperplane), HYPERPLANE_CONTROL_PLANE,
HYPERPLANE_GRPC_PORT, HYPERPLANE_JOIN_TOKEN, HYPERPLANE_GUEST_DIR, HYPERPLANE_LOG_LEVEL,
HYPERPLANE_TLS_DIR.
`;

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$/;
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

function integer(flag: string, raw: string, min: number, max: number): number {
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) throw new CliError(`${flag} ${JSON.stringify(raw)} must be an integer ${min}-${max}`);
  return Number(raw);
}

function hostPort(flag: string, raw: string): string {
  const m = /^(\[[0-9A-Fa-f:.]+\]|[^:[\]]+):(\d+)$/.exec(raw);
  const host = m?.[1]?.replace(/^\[|\]$/g, '') ?? '';
  if (!m || !(isIP(host) || HOSTNAME.test(host)) || Number(m[2]) < 1 || Number(m[2]) > 65535) {
    throw new CliError(`${flag} ${JSON.stringify(raw)} must be host:port`);
  }
  return raw;
}

/** Parses argv (without node and script) and the environment into a WorkerConfig. */
export function parseCli(argv: string[], env: NodeJS.ProcessEnv = process.env): WorkerConfig {
  let values: Record<string, string | boolean | string[] | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        node: { type: 'string' },
        address: { type: 'string' },
        'control-plane': { type: 'string' },
        'data-dir': { type: 'string' },
        driver: { type: 'string' },
        accel: { type: 'string' },
        count: { type: 'string' },
        'sim-start-ms': { type: 'string' },
        'sim-fail-rate': { type: 'string' },
        label: { type: 'string', multiple: true },
        'tls-dir': { type: 'string' },
        help: { type: 'boolean' },
      },
    }));
  } catch (error) {
    throw new CliError((error as Error).message.split('\n')[0]!);
  }
  const str = (name: string) => values[name] as string | undefined;
  const base: Omit<WorkerConfig, 'nodes' | 'address' | 'nodeName'> = {
    help: Boolean(values.help),
    controlPlane: '',
    joinToken: env.HYPERPLANE_JOIN_TOKEN ?? '',
    driver: 'qemu',
    accel: 'auto',
    simStartMs: 200,
    simFailRate: 0,
    guestDir: '',
    labels: {},
    logLevel: 'info',
    tlsDir: '',
  };
  if (base.help) return { ...base, nodeName: '', nodes: [], address: '' };

  const node = str('node');
  if (node === undefined) throw new CliError('--node is required (a DNS label, e.g. n2)');
  if (!DNS_LABEL.test(node)) throw new CliError(`--node ${JSON.stringify(node)} must be a DNS label ([a-z0-9-], at most 63 characters)`);
  const address = str('address');
  if (address === undefined) throw new CliError('--address is required (e.g. 127.0.0.2)');
  if (!isIP(address) && !HOSTNAME.test(address)) throw new CliError(`--address ${JSON.stringify(address)} must be an IP address or a host name`);

  const driver = str('driver') ?? 'qemu';
  if (driver !== 'qemu' && driver !== 'simulated') throw new CliError(`--driver ${JSON.stringify(driver)} must be qemu or simulated`);
  const accel = str('accel');
  if (accel !== undefined && accel !== 'auto' && accel !== 'kvm' && accel !== 'tcg') throw new CliError(`--accel ${JSON.stringify(accel)} must be auto, kvm or tcg`);
  if (accel !== undefined && driver !== 'qemu') throw new CliError('--accel needs --driver qemu');
  for (const flag of ['count', 'sim-start-ms', 'sim-fail-rate']) {
    if (str(flag) !== undefined && driver !== 'simulated') throw new CliError(`--${flag} needs --driver simulated`);
  }
  const count = str('count') === undefined ? undefined : integer('--count', str('count')!, 1, 100_000);
  const simStartMs = str('sim-start-ms') === undefined ? 200 : integer('--sim-start-ms', str('sim-start-ms')!, 0, 600_000);
  let simFailRate = 0;
  const rate = str('sim-fail-rate');
  if (rate !== undefined) {
    simFailRate = Number(rate);
    if (rate.trim() === '' || !Number.isFinite(simFailRate) || simFailRate < 0 || simFailRate > 1) throw new CliError(`--sim-fail-rate ${JSON.stringify(rate)} must be a number 0..1`);
  }

  const dataRoot = resolve(env.HYPERPLANE_DATA_DIR || '.hyperplane');
  const dataDirFlag = str('data-dir');
  if (dataDirFlag !== undefined && dataDirFlag.trim() === '') throw new CliError('--data-dir must not be empty');
  let nodes: NodeConfig[];
  if (count === undefined) {
    nodes = [{ name: node, dataDir: dataDirFlag !== undefined ? resolve(dataDirFlag) : join(dataRoot, 'nodes', node) }];
  } else {
    const parent = dataDirFlag !== undefined ? resolve(dataDirFlag) : join(dataRoot, 'nodes');
    const last = `${node}-${count}`;
    if (!DNS_LABEL.test(last)) throw new CliError(`--node ${JSON.stringify(node)} with --count ${count} gives names like ${last}, which are not DNS labels`);
    nodes = Array.from({ length: count }, (_, i) => ({ name: `${node}-${i + 1}`, dataDir: join(parent, `${node}-${i + 1}`) }));
  }

  let controlPlane: string;
  if (str('control-plane') !== undefined) controlPlane = hostPort('--control-plane', str('control-plane')!);
  else if (env.HYPERPLANE_CONTROL_PLANE) controlPlane = hostPort('HYPERPLANE_CONTROL_PLANE', env.HYPERPLANE_CONTROL_PLANE);
  else {
    const port = env.HYPERPLANE_GRPC_PORT || '9090';
    integer('HYPERPLANE_GRPC_PORT', port, 1, 65535);
    controlPlane = `127.0.0.1:${port}`;
  }

  const labels: Record<string, string> = {};
  for (const label of (values.label as string[] | undefined) ?? []) {
    const m = /^([A-Za-z0-9][-A-Za-z0-9_./]{0,62})=(.{0,256})$/.exec(label);
    if (!m) throw new CliError(`--label ${JSON.stringify(label)} must be KEY=VALUE`);
    labels[m[1]!] = m[2]!;
  }

  const tlsFlag = str('tls-dir') ?? (env.HYPERPLANE_TLS_DIR || undefined);
  let tlsDir = '';
  if (tlsFlag !== undefined) {
    if (driver !== 'qemu') throw new CliError('--tls-dir needs --driver qemu');
    tlsDir = resolve(tlsFlag);
    const missing = TLS_FILES.filter((f) => !existsSync(join(tlsDir, f)));
    if (missing.length) throw new CliError(`--tls-dir ${JSON.stringify(tlsFlag)} lacks ${missing.join(', ')}`);
  }

  const logLevel = env.HYPERPLANE_LOG_LEVEL || 'info';
  if (!LOG_LEVELS.includes(logLevel)) throw new CliError(`HYPERPLANE_LOG_LEVEL=${JSON.stringify(logLevel)} must be one of ${LOG_LEVELS.join(', ')}`);

  return {
    ...base,
    nodeName: node,
    nodes,
    address,
    controlPlane,
    driver,
    accel: (accel ?? 'auto') as AccelChoice,
    simStartMs,
    simFailRate,
    guestDir: env.HYPERPLANE_GUEST_DIR ? resolve(env.HYPERPLANE_GUEST_DIR) : join(dataRoot, 'guest'),
    labels,
    logLevel,
    tlsDir,
  };
}

/** The files QEMU's tls-creds-x509 reads from a TLS directory, for both ends of a migration. */
export const TLS_FILES = ['ca-cert.pem', 'server-cert.pem', 'server-key.pem', 'client-cert.pem', 'client-key.pem'];
