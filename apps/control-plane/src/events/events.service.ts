import { Injectable } from '@nestjs/common';
import { Principal, ValidationError, requireRole } from '@hyperplane/domain';
import { EventBus, HpEvent } from './event-bus';

/** Which events one watcher receives. */
export interface EventFilter {
  /** Only this project's events; null (cluster admins) for every project and cluster-level events. */
  projectId: string | null;
  types: Set<string> | null;
}

const RESOURCE_TYPES = ['partition', 'operation', 'node', 'project', 'image', 'snapshot'];

/** The event stream, scoped to the caller's project; shared by SSE and gRPC Watch. */
@Injectable()
export class EventsService {
  constructor(private readonly bus: EventBus) {}

  /** Builds the filter for a caller; a project token only ever sees its own project. */
  filterFor(principal: Principal, projectId: string | null, types: unknown): EventFilter {
    requireRole(principal, 'viewer', 'watch events');
    const list = types === undefined || types === '' ? [] : (Array.isArray(types) ? types : [types]).map(String);
    for (const t of list) if (!RESOURCE_TYPES.includes(t)) throw ValidationError.field('type', `must be one of ${RESOURCE_TYPES.join(', ')} (got ${JSON.stringify(t)})`);
    return { projectId: principal.projectId ?? projectId, types: list.length ? new Set(list) : null };
  }

  /** Calls `fn` for every event the filter lets through, until the returned function is called. */
  watch(filter: EventFilter, fn: (e: HpEvent) => void): () => void {
    return this.bus.subscribe((e) => {
      if (e.type === 'operation.cancel-requested') return;
      if (filter.projectId !== null && e.projectId !== filter.projectId) return;
      if (filter.types && !filter.types.has(e.resourceType)) return;
      fn(e);
    });
  }
}
