/** Typing into a partition's serial console through the public WebSocket console. */
import WebSocket from 'ws';
import { waitUntil } from './control-plane';

/** Opens the console, types `text`, waits until the output contains `until`, closes. */
export async function typeOnConsole(url: string, token: string, id: string, text: string, until: string, timeoutMs = 30_000): Promise<string> {
  const ws = new WebSocket(`${url.replace('http', 'ws')}/v1/partitions/${id}/console`, { headers: { authorization: `Bearer ${token}` } });
  let seen = '';
  ws.on('message', (m) => (seen += m.toString()));
  await new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });
  try {
    ws.send(Buffer.from(`\n${text}\n`));
    await waitUntil(() => seen.includes(until), timeoutMs, `console output ${JSON.stringify(until)}`);
    return seen;
  } finally {
    ws.close();
  }
}
