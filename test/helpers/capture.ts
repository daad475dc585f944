/** Packet capture on loopback with tcpdump, to check what really crosses the network between nodes. */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';

/** A running capture of the traffic to and from one address. */
export interface Capture {
  /** Stops the capture and returns the captured bytes (pcap, headers included). */
  stop(): Promise<Buffer>;
}

/** Starts `tcpdump -i lo host <address>` writing to `file`; resolves once it listens. */
export async function captureHost(address: string, file: string): Promise<Capture> {
  const proc = spawn('tcpdump', ['-i', 'lo', '-U', '-s', '0', '-w', file, 'host', address], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  await new Promise<void>((resolve, reject) => {
    proc.stderr!.on('data', (d) => {
      err += d;
      if (err.includes('listening on')) resolve();
    });
    proc.once('exit', (code) => reject(new Error(`tcpdump exited (${code}): ${err}`)));
    proc.once('error', reject);
  });
  return {
    async stop() {
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGINT');
      await exited;
      return readFileSync(file);
    },
  };
}
