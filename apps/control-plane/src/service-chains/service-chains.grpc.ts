import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { Inject, Injectable } from '@nestjs/common';
import { Principal } from '@hyperplane/domain';
import { v1 } from '@hyperplane/proto';
import { Logger } from 'pino';
import { parseIfMatch } from '../common/etag';
import { LOGGER } from '../common/tokens';
import { MutationOptions } from '../common/transactions';
import { validateInput } from '../common/validation';
import { toGrpcError } from '../grpc/grpc-errors';
import { operationMsg } from '../grpc/grpc-mappers';
import { AuthService } from '../projects/auth.service';
import type { ThrottleLimits } from './chain-rules';
import type { AttachmentView, ChainStatusView, LinkView, ServiceChainView } from './chain-view';
import { AddReplicaInput, AttachInput, CreateServiceChainInput, LinkInput } from './service-chains.dto';
import { AttachmentOperationView, ChainOperationView, ServiceChainsService } from './service-chains.service';

type Unary<Req, Res> = (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => void;

const pick = <T extends object>(o: T): Partial<T> => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;

/** Throttle limits from the wire (absent fields stay absent). */
function throttleIn(t: v1.ThrottleLimits__Output | null | undefined): ThrottleLimits | undefined {
  if (!t) return undefined;
  return pick({ iopsTotal: t.iopsTotal, iopsRead: t.iopsRead, iopsWrite: t.iopsWrite, bpsTotal: t.bpsTotal, bpsRead: t.bpsRead, bpsWrite: t.bpsWrite }) as ThrottleLimits;
}

/** A LinkSpec message as the REST body of a link (then validated by the same DTO). */
function linkIn(l: v1.LinkSpec__Output): Record<string, unknown> {
  return pick({
    name: l.name ?? '',
    kind: l.kind ?? '',
    consumes: l.consumes,
    replicas: l.replicas,
    image: l.image,
    sizeBytes: l.sizeBytes,
    key: l.key,
    throttle: throttleIn(l.throttle),
    nodes: l.nodes?.length ? l.nodes : undefined,
  });
}

function linkMsg(l: LinkView): v1.Link {
  return { ...l, consumes: l.consumes ?? '', throttle: l.throttle ?? undefined, replicaStatus: l.replicaStatus };
}

/** Chain view → proto. */
export function chainMsg(c: ServiceChainView): v1.ServiceChain {
  return { ...c, links: c.links.map(linkMsg) };
}

function statusMsg(s: ChainStatusView): v1.ServiceChainStatus {
  return { ...s, links: s.links.map(linkMsg) };
}

/** Attachment view → proto. */
export function attachmentMsg(a: AttachmentView): v1.Attachment {
  return { ...a };
}

/**
 * The gRPC door of service chains (ServiceChainService): every call parses into the same service
 * call the REST door makes, through the same DTOs (same validation, same messages), and errors
 * map in grpc-errors.ts.
 */
@Injectable()
export class ServiceChainsGrpcApi {
  constructor(
    private readonly auth: AuthService,
    private readonly chains: ServiceChainsService,
    @Inject(LOGGER) private readonly log: Logger,
  ) {}

  private unary<Req, Res>(fn: (p: Principal, req: Req, projectId: string, opts: (key?: string, etag?: string) => MutationOptions) => Promise<Res>): Unary<Req, Res> {
    return (call, cb) => {
      const requestId = String(call.metadata.get('x-request-id')[0] ?? randomUUID());
      void (async () => {
        try {
          const principal = await this.auth.authenticate(String(call.metadata.get('authorization')[0] ?? '') || undefined);
          const requested = call.metadata.get('project')[0];
          const projectId = await this.auth.projectScope(principal, requested ? String(requested) : undefined);
          const opts = (key?: string, etag?: string): MutationOptions => {
            const ifMatch = parseIfMatch(etag);
            return { idempotencyKey: key || undefined, ifMatch: ifMatch === -1 ? undefined : ifMatch, requestId };
          };
          cb(null, await fn(principal, call.request, projectId, opts));
        } catch (e) {
          const err = toGrpcError(e);
          if (err.code === grpc.status.INTERNAL) this.log.error({ err: e, requestId, method: call.getPath() }, 'gRPC call failed');
          cb(err);
        }
      })();
    };
  }

  /** Implementations keyed by service name, for grpc.Server#addService. */
  services(): Record<string, grpc.UntypedServiceImplementation> {
    const pair = (r: ChainOperationView): v1.ServiceChainOperation => ({ serviceChain: chainMsg(r.serviceChain), operation: operationMsg(r.operation) });
    const attached = (r: AttachmentOperationView): v1.AttachmentOperation => ({ attachment: attachmentMsg(r.attachment), operation: operationMsg(r.operation) });
    return {
      ServiceChainService: {
        CreateServiceChain: this.unary<v1.CreateServiceChainRequest__Output, v1.ServiceChainOperation>(async (p, r, project, opts) => {
          const input = validateInput(CreateServiceChainInput, pick({ name: r.name ?? '', description: r.description, links: (r.links ?? []).map(linkIn) }));
          return pair(await this.chains.create(p, project, input, opts(r.requestId)));
        }),
        GetServiceChain: this.unary<v1.GetServiceChainRequest__Output, v1.ServiceChain>(async (p, r, project) => chainMsg(await this.chains.get(p, project, r.id ?? ''))),
        GetServiceChainStatus: this.unary<v1.GetServiceChainRequest__Output, v1.ServiceChainStatus>(async (p, r, project) => statusMsg(await this.chains.status(p, project, r.id ?? ''))),
        ListServiceChains: this.unary<v1.ListServiceChainsRequest__Output, v1.ListServiceChainsResponse>(async (p, r, project) => {
          const page = await this.chains.list(p, project, { pageSize: r.pageSize, pageToken: r.pageToken });
          return { items: page.items.map(chainMsg), nextPageToken: page.nextPageToken };
        }),
        DeleteServiceChain: this.unary<v1.DeleteServiceChainRequest__Output, v1.ServiceChainOperation>(async (p, r, project, opts) => pair(await this.chains.delete(p, project, r.id ?? '', opts(r.requestId, r.etag)))),
        AddLink: this.unary<v1.AddLinkRequest__Output, v1.ServiceChainOperation>(async (p, r, project, opts) => {
          const input = validateInput(LinkInput, r.link ? linkIn(r.link) : {}, 'link');
          return pair(await this.chains.addLink(p, project, r.id ?? '', input, opts(r.requestId, r.etag)));
        }),
        RemoveLink: this.unary<v1.RemoveLinkRequest__Output, v1.ServiceChainOperation>(async (p, r, project, opts) => pair(await this.chains.removeLink(p, project, r.id ?? '', r.link ?? '', opts(r.requestId, r.etag)))),
        AddReplica: this.unary<v1.AddReplicaRequest__Output, v1.ServiceChainOperation>(async (p, r, project, opts) => {
          const input = validateInput(AddReplicaInput, pick({ node: r.node }));
          return pair(await this.chains.addReplica(p, project, r.id ?? '', r.link ?? '', input, opts(r.requestId, r.etag)));
        }),
        RemoveReplica: this.unary<v1.RemoveReplicaRequest__Output, v1.ServiceChainOperation>(async (p, r, project, opts) =>
          pair(await this.chains.removeReplica(p, project, r.id ?? '', r.link ?? '', r.replicaId ?? '', opts(r.requestId, r.etag)))),
        GetReplicaLog: this.unary<v1.GetReplicaLogRequest__Output, v1.ReplicaLog>(async (p, r, project) => this.chains.replicaLog(p, project, r.id ?? '', r.link ?? '', r.replicaId ?? '', r.tailBytes)),
        AttachChain: this.unary<v1.AttachChainRequest__Output, v1.AttachmentOperation>(async (p, r, project, opts) => {
          const input = validateInput(AttachInput, pick({ chainId: r.chainId ?? '', link: r.link, readOnly: r.readOnly }));
          return attached(await this.chains.attach(p, project, r.partitionId ?? '', input, opts(r.requestId)));
        }),
        ListAttachments: this.unary<v1.ListAttachmentsRequest__Output, v1.ListAttachmentsResponse>(async (p, r, project) => {
          const page = await this.chains.attachments(p, project, r.partitionId ?? '', { pageSize: r.pageSize, pageToken: r.pageToken });
          return { items: page.items.map(attachmentMsg), nextPageToken: page.nextPageToken };
        }),
        DetachChain: this.unary<v1.DetachChainRequest__Output, v1.AttachmentOperation>(async (p, r, project, opts) =>
          attached(await this.chains.detach(p, project, r.partitionId ?? '', r.attachmentId ?? '', opts(r.requestId, r.etag)))),
      },
    };
  }
}
