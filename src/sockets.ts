import { connect as netConnect, type Socket } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';

/** Idle time before the first TCP keepalive probe on every connection. */
const KEEPALIVE_MS = 10_000;

/** A host whose last connection failed this recently is tried again only after this long. */
const HOST_RETRY_MS = 250;

/** A connection the client ended this soon after opening it was refused for its session attributes (a standby). */
const REFUSED_WITHIN_MS = 2000;

/** What postgres.js passes to its `socket` option: the parsed hosts of the URL. */
interface DriverTarget {
  host: string[];
  port: number[];
  path?: string | false;
}

interface Tracked {
  socket: Socket;
  openedAt: number;
  /** When data last arrived (0: never). */
  readAt: number;
  /** When a write went out that nothing has answered yet (0: none). */
  waitingSince: number;
}

/**
 * The sockets of one durably pool (its queries and its listener), opened
 * through postgres.js's `socket` option so that durably can see and close
 * them: TCP keepalives on every connection; hosts of a multi-host URL tried
 * in order of their last failure, never faster than one attempt per
 * HOST_RETRY_MS each (a failover does not spin); a socket whose written
 * request has gone unanswered longer than `silentMs` destroyed (a half-open
 * connection leaves the pool and its query fails as transient); and on
 * demand every socket, or every one quiet since a moment, destroyed.
 */
export class Sockets {
  private readonly open = new Set<Tracked>();
  private readonly failedAt = new Map<string, number>();
  private readonly watchdog: NodeJS.Timeout;

  constructor(silentMs: number) {
    this.watchdog = setInterval(() => void this.destroySilent(silentMs), Math.min(1000, silentMs));
    this.watchdog.unref();
  }

  /** The `socket` option of postgres.js. */
  readonly create = async (target: DriverTarget): Promise<Socket> => {
    if (target.path) return this.track(netConnect(target.path), target.path);
    const hosts = target.host.map((host, i) => ({ host, port: target.port[i] ?? target.port[0], key: `${host}:${target.port[i] ?? target.port[0]}` }));
    const next = hosts.reduce((best, h) => (this.failed(h.key) < this.failed(best.key) ? h : best));
    const wait = this.failed(next.key) + HOST_RETRY_MS - Date.now();
    if (wait > 0) await delay(wait);
    const socket = netConnect({ host: next.host, port: next.port });
    // postgres.js names the server in its errors by these.
    Object.assign(socket, { host: next.host, port: next.port });
    return this.track(socket, next.key);
  };

  /** Destroys every socket: their connections reconnect (to the writable host). */
  destroyAll(): void {
    for (const t of this.open) t.socket.destroy();
  }

  /** Destroys every socket that has received nothing since `since` (epoch ms). */
  destroyQuietSince(since: number): void {
    for (const t of this.open) if (Math.max(t.openedAt, t.readAt) < since) t.socket.destroy();
  }

  close(): void {
    clearInterval(this.watchdog);
  }

  private failed(key: string): number {
    return this.failedAt.get(key) ?? 0;
  }

  private track(socket: Socket, key: string): Socket {
    const t: Tracked = { socket, openedAt: Date.now(), readAt: 0, waitingSince: 0 };
    this.open.add(t);
    socket.setKeepAlive(true, KEEPALIVE_MS);
    let connected = false;
    let endedByClient = false;
    socket.once('connect', () => { connected = true; });
    socket.on('data', () => { t.readAt = Date.now(); t.waitingSince = 0; });
    const write = socket.write.bind(socket) as (...args: unknown[]) => boolean;
    socket.write = ((...args: unknown[]) => {
      if (t.waitingSince === 0) t.waitingSince = Date.now();
      return write(...args);
    }) as Socket['write'];
    const end = socket.end.bind(socket) as (...args: unknown[]) => Socket;
    socket.end = ((...args: unknown[]) => {
      endedByClient = true;
      return end(...args);
    }) as Socket['end'];
    socket.once('close', () => {
      this.open.delete(t);
      if (!connected || (endedByClient && Date.now() - t.openedAt < REFUSED_WITHIN_MS)) this.failedAt.set(key, Date.now());
    });
    return socket;
  }

  /**
   * Destroys every socket whose request has gone unanswered for longer than
   * `ms`; resolves once they are closed, so that the pool has let go of
   * their connections and a query made next opens a new one.
   */
  destroySilent(ms: number): Promise<void> {
    const now = Date.now();
    const silent = [...this.open].filter((t) => t.waitingSince > 0 && now - t.waitingSince > ms);
    const closed = silent.map((t) => new Promise<void>((ok) => t.socket.once('close', () => setImmediate(ok))));
    for (const t of silent) t.socket.destroy();
    return Promise.all(closed).then(() => {});
  }
}
