/**
 * A fake control plane for agent tests and the hollow-node measurement: a real gRPC server that
 * implements AgentService.Connect, records every AgentMessage, answers Register with Registered
 * (and, if configured, a DesiredState), and lets the test send any ControlMessage.
 */
import * as grpc from '@grpc/grpc-js';
import { AGENT_PROTO_FILE, loadDefinition, type agentV1 } from '@hyperplane/proto';

type ServerCall = grpc.ServerDuplexStream<agentV1.AgentMessage__Output, agentV1.ControlMessage>;

/** One agent stream as the fake sees it. */
export interface FakeAgentStream {
  call: ServerCall;
  nodeName: string;
  messages: agentV1.AgentMessage__Output[];
  ended: boolean;
}

/** How the fake answers Register. */
export interface FakeControlPlaneOptions {
  /** Node id to hand out (default: `node-<name>`). */
  nodeId?: (nodeName: string) => string;
  heartbeatIntervalMs?: number;
  /** The desired state sent after Registered (none when undefined). */
  desired?: (nodeName: string) => agentV1.PartitionSpec[] | undefined;
  /** Record messages (default true; off for thousands of hollow nodes). */
  record?: boolean;
}

/** See the file comment. Start with `FakeControlPlane.start`; always `stop` it. */
export class FakeControlPlane {
  readonly streams: FakeAgentStream[] = [];
  /** Count of messages per body type, over all streams. */
  readonly counts = new Map<string, number>();
  private readonly waiters = new Set<() => void>();

  private constructor(
    private readonly server: grpc.Server,
    readonly port: number,
    private readonly options: FakeControlPlaneOptions,
  ) {}

  /** Starts a fake on 127.0.0.1:`port` (0 picks a free port). */
  static async start(port = 0, options: FakeControlPlaneOptions = {}): Promise<FakeControlPlane> {
    const server = new grpc.Server();
    const definition = loadDefinition([AGENT_PROTO_FILE]);
    let fake: FakeControlPlane | undefined;
    server.addService(definition['hyperplane.agent.v1.AgentService'] as grpc.ServiceDefinition, {
      Connect: (call: ServerCall) => fake!.onConnect(call),
    });
    const bound = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (error, p) => (error ? reject(error) : resolve(p))),
    );
    fake = new FakeControlPlane(server, bound, options);
    return fake;
  }

  /** `127.0.0.1:<port>`. */
  get target(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Every message received, over all streams, in arrival order per stream. */
  get messages(): agentV1.AgentMessage__Output[] {
    return this.streams.flatMap((s) => s.messages);
  }

  /** The newest stream of a node. */
  streamOf(nodeName: string): FakeAgentStream | undefined {
    return this.streams.filter((s) => s.nodeName === nodeName).at(-1);
  }

  /** Sends a control message down the newest stream of `nodeName`. */
  send(nodeName: string, message: agentV1.ControlMessage): void {
    const stream = this.streamOf(nodeName);
    if (!stream || stream.ended) throw new Error(`no open stream of ${nodeName}`);
    stream.call.write(message);
  }

  /** Resolves with the first recorded message (over all streams) that matches, waiting for it. */
  async waitFor(predicate: (m: agentV1.AgentMessage__Output) => boolean, timeoutMs = 5_000, what = 'a matching message'): Promise<agentV1.AgentMessage__Output> {
    return this.waitUntil(() => this.messages.find(predicate), timeoutMs, what);
  }

  /** Resolves with `probe()`'s first defined value, re-checked on every message and stream change. */
  waitUntil<T>(probe: () => T | undefined, timeoutMs = 5_000, what = 'a condition'): Promise<T> {
    const now = probe();
    if (now !== undefined) return Promise.resolve(now);
    return new Promise((resolve, reject) => {
      const check = () => {
        const value = probe();
        if (value === undefined) return;
        done();
        resolve(value);
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`fake control plane: no ${what} within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
    });
  }

  /** Kills the server at once: every stream breaks, as when the control plane dies. */
  async stop(): Promise<void> {
    this.server.forceShutdown();
  }

  private onConnect(call: ServerCall): void {
    const stream: FakeAgentStream = { call, nodeName: '', messages: [], ended: false };
    this.streams.push(stream);
    call.on('data', (message: agentV1.AgentMessage__Output) => {
      this.counts.set(message.body ?? '', (this.counts.get(message.body ?? '') ?? 0) + 1);
      if (this.options.record !== false) stream.messages.push(message);
      if (message.body === 'register' && message.register) this.onRegister(stream, message.register);
      this.notify();
    });
    const end = () => {
      if (stream.ended) return;
      stream.ended = true;
      this.notify();
    };
    call.on('end', () => {
      end();
      call.end();
    });
    call.on('error', end);
    call.on('cancelled', end);
    this.notify();
  }

  private onRegister(stream: FakeAgentStream, register: agentV1.Register__Output): void {
    const name = register.nodeName ?? '';
    stream.nodeName = name;
    const nodeId = this.options.nodeId?.(name) ?? `node-${name}`;
    stream.call.write({ registered: { nodeId, heartbeatIntervalMs: this.options.heartbeatIntervalMs ?? 3_000 } });
    const desired = this.options.desired?.(name);
    if (desired) stream.call.write({ desired: { partitions: desired } });
  }

  private notify(): void {
    for (const check of [...this.waiters]) check();
  }
}
