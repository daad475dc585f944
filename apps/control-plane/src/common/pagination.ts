import { PAGE_LIMITS, ValidationError } from '@hyperplane/domain';

/** A keyset page request: after which id, and how many. */
export interface PageRequest {
  pageSize: number;
  afterId: string | null;
}

/** One page of a list (API.md, Lists). */
export interface Page<T> {
  items: T[];
  nextPageToken: string;
}

/** Validates `pageSize` / `pageToken` from either transport into a {@link PageRequest}. */
export function parsePage(pageSize: unknown, pageToken: unknown): PageRequest {
  let size: number = PAGE_LIMITS.default;
  if (pageSize !== undefined && pageSize !== '' && pageSize !== 0) {
    const n = typeof pageSize === 'number' ? pageSize : Number(pageSize);
    if (!Number.isInteger(n) || n < 1 || n > PAGE_LIMITS.max) {
      throw ValidationError.field('pageSize', `must be an integer between 1 and ${PAGE_LIMITS.max}`);
    }
    size = n;
  }
  let afterId: string | null = null;
  if (typeof pageToken === 'string' && pageToken !== '') {
    const decoded = Buffer.from(pageToken, 'base64url').toString('utf8');
    const m = /^k1:([0-9a-f-]{36})$/.exec(decoded);
    if (!m) throw ValidationError.field('pageToken', 'is not a page token this API issued');
    afterId = m[1]!;
  } else if (pageToken !== undefined && pageToken !== '' && typeof pageToken !== 'string') {
    throw ValidationError.field('pageToken', 'must be a string');
  }
  return { pageSize: size, afterId };
}

/** Builds a page from rows fetched with `LIMIT pageSize + 1`. */
export function toPage<R extends { id: string }, T>(rows: R[], req: PageRequest, map: (r: R) => T): Page<T> {
  const more = rows.length > req.pageSize;
  const slice = more ? rows.slice(0, req.pageSize) : rows;
  const last = slice[slice.length - 1];
  return {
    items: slice.map(map),
    nextPageToken: more && last ? Buffer.from(`k1:${last.id}`).toString('base64url') : '',
  };
}
