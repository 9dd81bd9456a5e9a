/**
 * A TCP proxy on 127.0.0.1 in front of a server that can go silent on the
 * connections it carries: freeze() stops forwarding on every open
 * connection without closing it (a half-open connection, as after a
 * network failover), while new connections are forwarded as usual.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';

export interface FreezingProxy {
  port: number;
  /** Open connections stop forwarding (both ways) and stay open. */
  freeze(): void;
  /** New connections go to this port from now on. */
  retarget(port: number): void;
  close(): Promise<void>;
}

export async function freezingProxy(target: { host: string; port: number }): Promise<FreezingProxy> {
  let port = target.port;
  const pairs = new Set<{ client: Socket; upstream: Socket; frozen: boolean }>();
  const server: Server = createServer((client) => {
    const upstream = connect(port, target.host);
    const pair = { client, upstream, frozen: false };
    pairs.add(pair);
    client.on('data', (b) => { if (!pair.frozen) upstream.write(b); });
    upstream.on('data', (b) => { if (!pair.frozen) client.write(b); });
    const close = () => { pairs.delete(pair); client.destroy(); upstream.destroy(); };
    client.on('close', close).on('error', close);
    upstream.on('close', close).on('error', close);
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  return {
    port: (server.address() as { port: number }).port,
    freeze: () => { for (const p of pairs) p.frozen = true; },
    retarget: (to) => { port = to; },
    close: async () => {
      for (const p of pairs) { p.client.destroy(); p.upstream.destroy(); }
      await new Promise<void>((ok) => server.close(() => ok()));
    },
  };
}
