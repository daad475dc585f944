import { PermissionDeniedError } from './errors';

/** A token's role within its project; `cluster-admin` tokens belong to no project. */
export type Role = 'viewer' | 'operator' | 'admin' | 'cluster-admin';

/** Roles a project token may have. */
export const PROJECT_ROLES = ['viewer', 'operator', 'admin'] as const;

const RANK: Record<Role, number> = { viewer: 1, operator: 2, admin: 3, 'cluster-admin': 4 };

/** Who is calling: resolved from the bearer token before any service method runs. */
export interface Principal {
  tokenId: string;
  role: Role;
  /** The project the token belongs to; null for cluster-admin tokens. */
  projectId: string | null;
}

/** True when `role` is at least `needed`. Cluster admins pass every project check. */
export function hasRole(role: Role, needed: Role): boolean {
  return RANK[role] >= RANK[needed];
}

/** Throws {@link PermissionDeniedError} unless the principal holds at least `needed`. */
export function requireRole(principal: Principal, needed: Role, action: string): void {
  if (!hasRole(principal.role, needed)) {
    throw new PermissionDeniedError(`role ${principal.role} may not ${action}: it needs ${needed}`);
  }
}
