import { randomBytes } from 'node:crypto';
import type postgres from 'postgres';
import { within } from './deadline.js';

type Handler = { fn: (payload: string) => void; onlisten?: () => void; resync?: () => Promise<void> };

/** What the listener needs from its connection: a postgres.js pool of one connection. */
export type ListenConnection = postgres.Sql<Record<string, never>>;

/** Opens the listener's connection, delivering notifications and reporting its loss. */
export type OpenListenConnection = (onnotify: (channel: string, payload: string) => void, onclose: () => void) => ListenConnection;

/** The LISTEN statements of a (re)connection, and each proof, must answer within this long. */
const MIN_PROOF_TIMEOUT_MS = 2000;

/** Back-off between attempts to listen again, doubling up to the cap. */
const RETRY_MS = 100;
const MAX_RETRY_MS = 5000;

const quote = (channel: string) => `"${channel.replace(/"/g, '""')}"`;

/**
 * LISTEN on one connection of its own that proves itself: every `proofMs` it
 * sends a NOTIFY to itself (on a channel private to this listener) and must
 * receive it within max(proofMs, 2 s). A connection that is lost, refused
 * (a standby: "cannot execute LISTEN during recovery") or silent (half-open)
 * is replaced and every channel listened to again, with back-off, until it
 * works; then each `onlisten` runs so that its owner checks what it may have
 * missed. Where a handler must settle what it missed before it may hear
 * more (its `resync`), listening again waits for that. When a proof fails,
 * `onsilent` gets the time it was sent: the pool's connections that have
 * received nothing since are likely cut off too.
 */
export class Listener {
  private readonly channels = new Map<string, Set<Handler>>();
  private readonly proofChannel = `durably_proof_${randomBytes(6).toString('hex')}`;
  private readonly proofTimeoutMs: number;
  private conn?: ListenConnection;
  /** Channels LISTENed to on the current connection. */
  private listened = new Set<string>();
  private establishing?: Promise<void>;
  private retry?: NodeJS.Timeout;
  private attempts = 0;
  private prover?: NodeJS.Timeout;
  private proof?: { token: string; arrived: () => void };
  private proofSeq = 0;
  private ended = false;

  constructor(
    private readonly open: OpenListenConnection,
    private readonly proofMs: number,
    private readonly onsilent: (since: number) => void,
  ) {
    this.proofTimeoutMs = Math.max(proofMs, MIN_PROOF_TIMEOUT_MS);
  }

  /**
   * Calls `fn` with each notification on `channel`. Resolves once listening;
   * rejects, keeping nothing, when the first LISTEN fails. After that, lost
   * connections are re-established by the listener itself: after `resync`
   * (if given) has resolved, and then `onlisten` runs. Notifications that
   * reach a lost connection after the loss are dropped.
   */
  async listen(channel: string, fn: (payload: string) => void, onlisten?: () => void,
    resync?: () => Promise<void>): Promise<{ unlisten(): Promise<void> }> {
    if (this.ended) throw Object.assign(new Error('the listener has ended'), { code: 'CONNECTION_ENDED' });
    const handler: Handler = { fn, onlisten, resync };
    const set = this.channels.get(channel) ?? new Set<Handler>();
    set.add(handler);
    this.channels.set(channel, set);
    try {
      await this.establish();
    } catch (err) {
      this.remove(channel, handler);
      // Its connection may be the culprit (a standby, half-open): the next try opens another.
      if (this.channels.size > 0) this.lost();
      else await this.replace();
      throw err;
    }
    this.startProving();
    onlisten?.();
    return { unlisten: async () => this.unlisten(channel, handler) };
  }

  async end(): Promise<void> {
    this.ended = true;
    clearTimeout(this.retry);
    clearInterval(this.prover);
    await this.replace();
  }

  private async unlisten(channel: string, handler: Handler): Promise<void> {
    if (!this.remove(channel, handler)) return;
    if (this.channels.size === 0) {
      clearInterval(this.prover);
      this.prover = undefined;
      await this.replace();
      return;
    }
    if (this.listened.delete(channel)) await this.conn?.unsafe(`unlisten ${quote(channel)}`).catch(() => {});
  }

  /** Removes a handler; true when it was its channel's last one. */
  private remove(channel: string, handler: Handler): boolean {
    const set = this.channels.get(channel);
    if (!set?.delete(handler) || set.size > 0) return false;
    this.channels.delete(channel);
    return true;
  }

  /** LISTENs on the current connection to every channel not yet listened to there. */
  private establish(): Promise<void> {
    this.establishing ??= (async () => {
      try {
        for (;;) {
          const missing = [...this.channels.keys(), this.proofChannel].filter((c) => !this.listened.has(c));
          if (missing.length === 0 || this.channels.size === 0) return;
          const conn = this.connection();
          await within(conn.unsafe(missing.map((c) => `listen ${quote(c)}`).join(';')), this.proofTimeoutMs);
          if (conn !== this.conn) continue; // lost meanwhile: listen again on the new one
          for (const c of missing) this.listened.add(c);
        }
      } finally {
        this.establishing = undefined;
      }
    })();
    return this.establishing;
  }

  private connection(): ListenConnection {
    if (this.conn) return this.conn;
    const conn: ListenConnection = this.open(
      (channel, payload) => { if (this.conn === conn) this.notified(channel, payload); },
      () => { if (this.conn === conn) this.lost(); },
    );
    this.conn = conn;
    return conn;
  }

  private notified(channel: string, payload: string): void {
    if (channel === this.proofChannel) {
      if (this.proof?.token === payload) this.proof.arrived();
      return;
    }
    for (const h of this.channels.get(channel) ?? []) h.fn(payload);
  }

  /** Drops the current connection (if any); the next LISTEN opens a new one. */
  private async replace(): Promise<void> {
    const old = this.conn;
    this.conn = undefined;
    this.listened = new Set();
    await old?.end({ timeout: 0 }).catch(() => {});
  }

  /** The connection is gone or useless: listen again, with back-off, until it works. */
  private lost(): void {
    this.listened = new Set();
    if (this.retry || this.ended || this.channels.size === 0) return;
    const wait = this.attempts === 0 ? 0 : Math.min(RETRY_MS * 2 ** (this.attempts - 1), MAX_RETRY_MS);
    this.retry = setTimeout(() => {
      this.retry = undefined;
      void this.replace()
        .then(() => Promise.all([...this.channels.values()].flatMap((set) => [...set].map((h) => h.resync?.()))))
        .then(() => this.establish())
        .then(() => {
          this.attempts = 0;
          for (const set of this.channels.values()) for (const h of set) h.onlisten?.();
        }, () => {
          this.attempts++;
          this.lost();
        });
    }, wait);
    this.retry.unref();
  }

  private startProving(): void {
    if (this.prover) return;
    this.prover = setInterval(() => void this.prove(), this.proofMs);
    this.prover.unref();
  }

  /** One NOTIFY to itself; a listener that does not hear it within the timeout is replaced. */
  private async prove(): Promise<void> {
    const conn = this.conn;
    if (!conn || this.retry || this.establishing || this.proof || this.listened.size === 0) return;
    const token = String(++this.proofSeq);
    const sentAt = Date.now();
    let arrived!: () => void;
    const heard = new Promise<void>((ok) => { arrived = ok; });
    this.proof = { token, arrived };
    conn.unsafe(`select pg_notify('${this.proofChannel}', '${token}')`).catch(() => {});
    const ok = await within(heard, this.proofTimeoutMs).then(() => true, () => false);
    this.proof = undefined;
    if (ok || conn !== this.conn || this.ended) return;
    this.onsilent(sentAt);
    this.lost();
  }
}
