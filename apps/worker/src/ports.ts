/** Free TCP ports on this node, for migration listeners and provider gateways the control plane asks for without a port. */
import { createServer } from 'node:net';

function canListen(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, host, () => server.close(() => resolve(true)));
  });
}

/** A TCP port free on `host` now (another process may still take it before it is bound; that start then fails cleanly). */
export async function freePort(host: string): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 40_000);
    if (await canListen(host, port)) return port;
  }
  throw new Error(`no free TCP port on ${host}`);
}

/**
 * A port on `host` that is free now, with the next one free too (live migration: the memory
 * stream on `port`, the NBD disk copy on `port + 1`). Another process may still take them before
 * QEMU binds; the migration then fails cleanly and can be retried.
 */
export async function freePortPair(host: string): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 40_000);
    if ((await canListen(host, port)) && (await canListen(host, port + 1))) return port;
  }
  throw new Error(`no two consecutive free TCP ports on ${host}`);
}
