/**
 * Live refresh: Server-Sent Events fed by LISTEN on durably's channels. Each
 * open page holds one event stream; a burst of notifications becomes at most
 * one event per THROTTLE_MS, and the page re-fetches itself (assets/dashboard.js).
 * Settlements notify only those who wait on them: while pages are open, the
 * dashboard is recorded as a watcher of every settlement (durably.watch).
 */
import { randomUUID } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import type { Sql } from '../db.js';

const CHANNELS = ['durably_watch', 'durably_tasks', 'durably_schedules'];
const THROTTLE_MS = 300;
const KEEPALIVE_MS = 15_000;
/** Well within the minute a watcher is counted for after it was last seen. */
const WATCH_EVERY_MS = 20_000;

export class LiveEvents {
  private readonly clients = new Set<ServerResponse>();
  private listening?: Promise<{ unlisten(): Promise<void> }[]>;
  private pending?: NodeJS.Timeout;
  private keepalive?: NodeJS.Timeout;
  private watching?: NodeJS.Timeout;
  private readonly watcher = randomUUID();

  constructor(private readonly sql: Sql) {}

  /** Answers a GET of the event stream; the stream stays open until the page goes away. */
  subscribe(res: ServerResponse): void {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
    res.write('retry: 2000\n\n');
    this.clients.add(res);
    res.on('close', () => {
      this.clients.delete(res);
      if (this.clients.size === 0) this.unwatch();
    });
    this.listening ??= Promise.all(CHANNELS.map((c) =>
      this.sql.listen(c, () => this.changed(), () => this.changed())));
    this.listening.catch(() => { this.listening = undefined; });
    this.keepalive ??= setInterval(() => { for (const c of this.clients) c.write(': keepalive\n\n'); }, KEEPALIVE_MS).unref();
    if (!this.watching) {
      this.watch();
      this.watching = setInterval(() => this.watch(), WATCH_EVERY_MS).unref();
    }
  }

  /** Records (or renews) this dashboard as a watcher of every settlement; a failure is retried at the next renewal. */
  private watch(): void {
    this.sql`select durably.watch(${this.watcher})`.catch(() => {});
  }

  private unwatch(): Promise<unknown> {
    clearInterval(this.watching);
    this.watching = undefined;
    return this.sql`select durably.unwatch(${this.watcher})`.catch(() => {});
  }

  private changed(): void {
    if (this.pending) return;
    this.pending = setTimeout(() => {
      this.pending = undefined;
      for (const c of this.clients) c.write('data: changed\n\n');
    }, THROTTLE_MS);
  }

  async close(): Promise<void> {
    clearTimeout(this.pending);
    clearInterval(this.keepalive);
    for (const c of this.clients) c.end();
    this.clients.clear();
    await this.unwatch();
    const l = this.listening;
    this.listening = undefined;
    for (const s of (await l?.catch(() => [])) ?? []) await s.unlisten().catch(() => {});
  }
}
