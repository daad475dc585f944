/** gRPC clients for tests, loaded from proto/ exactly as a user's client would. */
import * as grpc from '@grpc/grpc-js';
import { PUBLIC_PROTO_FILES, loadGrpcObject } from '@hyperplane/proto';

type Ctor = new (address: string, creds: grpc.ChannelCredentials) => grpc.Client;

/** Clients for every public service, with a token in the metadata of every call. */
export class GrpcApi {
  readonly clients: Record<string, grpc.Client> = {};

  constructor(
    readonly address: string,
    readonly token?: string,
  ) {
    const { tree } = loadGrpcObject<{ hyperplane: { v1: Record<string, Ctor> } }>(PUBLIC_PROTO_FILES);
    // Every service of the public API (a client per service, as a user's code would have).
    for (const [name, ctor] of Object.entries(tree.hyperplane.v1)) {
      if (typeof ctor === 'function' && name.endsWith('Service') && 'service' in ctor) this.clients[name] = new ctor(address, grpc.credentials.createInsecure());
    }
  }

  /** Metadata carrying the token (and project, for cluster admins). */
  metadata(extra: Record<string, string> = {}): grpc.Metadata {
    const md = new grpc.Metadata();
    if (this.token) md.set('authorization', `Bearer ${this.token}`);
    for (const [k, v] of Object.entries(extra)) md.set(k, v);
    return md;
  }

  /** Calls a unary method; resolves with the response or rejects with the ServiceError. */
  call<T = any>(service: string, method: string, request: object, extra: Record<string, string> = {}): Promise<T> {
    const client = this.clients[service] as unknown as Record<string, Function>;
    return new Promise((resolve, reject) => {
      client[method]!.call(client, request, this.metadata(extra), (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res)));
    });
  }

  /** Calls and returns the error (fails the test if the call succeeds). */
  async fail(service: string, method: string, request: object, extra: Record<string, string> = {}): Promise<grpc.ServiceError> {
    try {
      await this.call(service, method, request, extra);
    } catch (e) {
      return e as grpc.ServiceError;
    }
    throw new Error(`${service}.${method} was expected to fail`);
  }

  /** Closes every channel. */
  close(): void {
    for (const c of Object.values(this.clients)) c.close();
  }
}
