import { EtagMismatchError } from '@hyperplane/domain';

/** The etag for a resource version: a strong, quoted validator. */
export function etagOf(version: number): string {
  return `"${version}"`;
}

/** Parses an If-Match value into a version; `*` or absent → undefined (no precondition). */
export function parseIfMatch(ifMatch: string | undefined): number | undefined {
  if (ifMatch === undefined || ifMatch.trim() === '' || ifMatch.trim() === '*') return undefined;
  const m = /^(?:W\/)?"?(\d+)"?$/.exec(ifMatch.trim());
  return m ? Number(m[1]) : -1;
}

/** Throws {@link EtagMismatchError} when an If-Match precondition does not hold. */
export function checkIfMatch(kind: string, id: string, expected: number | undefined, version: number): void {
  if (expected !== undefined && expected !== version) throw new EtagMismatchError(kind, id, etagOf(version));
}
