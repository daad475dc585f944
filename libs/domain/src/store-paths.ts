import { isAbsolute, join, normalize, relative } from 'node:path';
import { ValidationError } from './errors';

/** Longest path accepted for a file of a node's image store. */
export const MAX_STORE_PATH = 4096;

/** True when `child` lies strictly inside `dir` (both absolute and normalized). */
export function isInsideDir(dir: string, child: string): boolean {
  const rel = relative(dir, child);
  return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel);
}

/**
 * Checks a path naming a file of a node's image store, lexically (symlinks are the node's to
 * resolve): not empty, no NUL, at most 4096 characters, no `..` segment, and an absolute path must
 * lie in `storeDir`. Returns the absolute path. `storeDir` '' (unknown) accepts relative paths only.
 * Throws ValidationError on the `path` field, naming what was wrong.
 */
export function storeFilePath(storeDir: string, path: unknown): string {
  if (typeof path !== 'string' || path === '') throw ValidationError.field('path', "is required: a file of the node's image store");
  if (path.length > MAX_STORE_PATH || path.includes('\0')) throw ValidationError.field('path', `must be a file path of at most ${MAX_STORE_PATH} characters`);
  if (path.split(/[\\/]+/).includes('..')) throw ValidationError.field('path', `must not contain '..' (got ${JSON.stringify(path)})`);
  if (!storeDir) {
    if (isAbsolute(path)) throw ValidationError.field('path', `${JSON.stringify(path)}: the node has not said where its image store is; give the path relative to it`);
    return normalize(path);
  }
  const abs = normalize(isAbsolute(path) ? path : join(storeDir, path));
  if (!isInsideDir(normalize(storeDir), abs)) throw ValidationError.field('path', `${JSON.stringify(path)} is outside the node's image store (${storeDir})`);
  return abs;
}
