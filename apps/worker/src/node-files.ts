/** Files of a node's data dir that belong to the agent itself: its node id and its lock. */
import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FailedPreconditionError } from '@hyperplane/domain';

const NODE_ID_FILE = 'node-id';
const LOCK_FILE = 'agent.lock';

/** The node id this data dir was given by the control plane, or '' before the first registration. */
export async function readNodeId(dataDir: string): Promise<string> {
  return (await readFile(join(dataDir, NODE_ID_FILE), 'utf8').catch(() => '')).trim();
}

/** Persists the node id (atomically), so it survives agent restarts. */
export async function writeNodeId(dataDir: string, nodeId: string): Promise<void> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const tmp = join(dataDir, `.${NODE_ID_FILE}.${randomBytes(4).toString('hex')}.tmp`);
  await writeFile(tmp, `${nodeId}\n`, { mode: 0o600 });
  await rename(tmp, join(dataDir, NODE_ID_FILE));
}

/**
 * Claims the data dir for this process (file `agent.lock` with our pid). Two agents on one data
 * dir would fight over the same guests and QMP sockets, so a lock held by another live process
 * is an error. A lock left by a dead process is taken over. Returns the release function.
 */
export async function lockDataDir(dataDir: string): Promise<() => Promise<void>> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const path = join(dataDir, LOCK_FILE);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(path, 'wx', 0o600);
      await handle.writeFile(`${process.pid}\n`);
      await handle.close();
      return () => rm(path, { force: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const holder = Number.parseInt((await readFile(path, 'utf8').catch(() => '')).trim(), 10);
      if (holder > 0 && holder !== process.pid && alive(holder)) {
        throw new FailedPreconditionError(`another agent (pid ${holder}) uses the data dir ${dataDir}`);
      }
      await rm(path, { force: true });
    }
  }
  throw new FailedPreconditionError(`cannot lock the data dir ${dataDir}`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
