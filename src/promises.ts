import { callProcedure, textArray, type Sql } from './db.js';
import { DurablyError, NotFoundError, PromiseRejectedError, type RejectedState } from './errors.js';

export type PromiseState = 'pending' | 'resolved' | RejectedState;

/** A durable promise as stored (the columns of durably.promises). */
export interface PromiseRecord {
  id: string;
  state: PromiseState;
  kind: 'invoke' | 'step' | 'sleep' | 'external';
  func: string | null;
  args: unknown[] | null;
  value: unknown;
  timeout_at: Date;
  tags: Record<string, string>;
  parent_id: string | null;
  root_id: string;
  created_at: Date;
  settled_at: Date | null;
  /** Someone waits for it: its settlement notifies durably_settled. */
  awaited: boolean;
}

/** What a wait returns: enough for the value or the error, and cheap to parse by the thousand (no dates, args, tags). */
export type Settled = Pick<PromiseRecord, 'id' | 'state' | 'value'>;

/** The value of a settled promise, or its recorded error thrown. */
export function settledValue<T>(p: Settled): T {
  if (p.state === 'resolved') return p.value as T;
  throw new PromiseRejectedError(p.id, p.state as RejectedState, p.value);
}

/** What callers hold for an invocation or a promise. */
export class DurableHandle<T = unknown> {
  constructor(readonly id: string, private readonly settlements: Settlements) {}

  /** Waits for the promise to settle; returns its value or throws its recorded error. */
  async result(): Promise<T> {
    return settledValue<T>(await this.settlements.wait(this.id));
  }

  /** Whether the promise has settled (does not wait). */
  async done(): Promise<boolean> {
    return (await this.settlements.get(this.id)).state !== 'pending';
  }
}

type Waiter = { resolve: (p: Settled) => void; reject: (e: unknown) => void };

/**
 * Waits for promises to settle. LISTENs on durably_settled, which names the
 * settled promises someone waits on, so each wait marks its promise
 * (durably.await_promise) after listening; notified ids are re-read, those
 * that arrive while a read runs all in the next one. On every (re)connect of
 * the listener and every poll interval it checks all of them, so a lost
 * notification only delays a result. Waiting rides through lost connections:
 * a listen that fails is tried again at the next poll, reads that fail are
 * read again; only an unknown id or the caller's timeout ends a wait early.
 */
export class Settlements {
  private readonly waiting = new Map<string, Set<Waiter>>();
  private listening?: Promise<unknown>;
  private listener?: { unlisten(): Promise<void> };
  private poller?: NodeJS.Timeout;
  private closed = false;
  private readonly toRead = new Set<string>();
  /** Waited-for ids whose mark (durably.await_promise) has not been made yet. */
  private readonly unmarked = new Set<string>();
  private reading = false;

  constructor(private readonly sql: Sql, private readonly pollMs: number) {}

  async get(id: string): Promise<PromiseRecord> {
    const [row] = await this.sql<PromiseRecord[]>`select * from durably.promises where id = ${id}`;
    if (!row) throw new NotFoundError(`promise ${JSON.stringify(id)} not found`);
    return row;
  }

  /**
   * The settled promise `id`. With `timeout`, fails with TIMED_OUT after
   * `timeout.ms` and stops waiting for it.
   */
  async wait(id: string, timeout?: { ms: number; message: string }): Promise<Settled> {
    let waiter!: Waiter;
    const settled = new Promise<Settled>((resolve, reject) => { waiter = { resolve, reject }; });
    // The timeout may fire while listen() or mark() is still awaited: handled
    // here so that it is not an unhandled rejection; `await settled` rethrows it.
    settled.catch(() => {});
    const set = this.waiting.get(id) ?? new Set<Waiter>();
    set.add(waiter);
    this.waiting.set(id, set);
    this.startPolling();
    let timer: NodeJS.Timeout | undefined;
    if (timeout) {
      timer = setTimeout(() => {
        this.drop(id, waiter);
        waiter.reject(new DurablyError('TIMED_OUT', timeout.message));
      }, timeout.ms);
    }
    try {
      await this.listen();
      // Mark and read after listening: a settlement that happened before is
      // seen here, one after finds the mark and notifies. Without a listener,
      // the poller reads.
      this.unmarked.add(id);
      await this.mark(id);
      return await settled;
    } finally {
      clearTimeout(timer);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.poller);
    this.poller = undefined;
    await this.listening;
    await this.listener?.unlisten().catch(() => {});
  }

  /**
   * Marks `id` awaited and reads it. A mark lost with its connection is made
   * again at the next reconnect or poll (checkAll): until it is made, no
   * settlement of that promise notifies.
   */
  private async mark(id: string): Promise<void> {
    try {
      const [row] = await callProcedure(() => this.sql<Settled[]>`select id, state, value from durably.await_promise(${id})`, false);
      this.unmarked.delete(id);
      if (row.state !== 'pending') this.deliver([row]);
    } catch (e) {
      if (e instanceof NotFoundError) this.fail(id, e);
    }
  }

  /** Listens unless it already does; a failure is left to the next poll to try again. */
  private listen(): Promise<unknown> {
    if (this.listener || this.closed) return Promise.resolve();
    this.listening ??= this.sql.listen(
      'durably_settled',
      (payload) => this.notified(payload.split('\n')),
      () => this.checkAll(),
    ).then((l) => {
      this.listener = l;
      if (this.closed) return l.unlisten().catch(() => {});
    }, () => { /* polled meanwhile; listened again at the next poll */ })
      .finally(() => { this.listening = undefined; });
    return this.listening;
  }

  private startPolling() {
    if (this.poller) return;
    this.poller = setInterval(() => {
      if (this.waiting.size === 0) {
        clearInterval(this.poller);
        this.poller = undefined;
        return;
      }
      void this.listen();
      this.checkAll();
    }, this.pollMs);
    this.poller.unref();
  }

  /** Reads every promise waited for, whatever read is in flight (one may hang on a broken connection). */
  private checkAll() {
    for (const id of this.unmarked) {
      if (this.waiting.has(id)) void this.mark(id);
      else this.unmarked.delete(id);
    }
    if (this.waiting.size > 0) void this.readSettled([...this.waiting.keys()]);
  }

  /**
   * Notified ids are read one read at a time: those notified while a read
   * runs go in the next one, so a burst of notifications (one per settling
   * transaction) costs a few reads, not one each.
   */
  private notified(ids: string[]) {
    for (const id of ids) if (this.waiting.has(id)) this.toRead.add(id);
    if (!this.reading && this.toRead.size > 0) void this.readNotified();
  }

  private async readNotified() {
    this.reading = true;
    try {
      while (this.toRead.size > 0) {
        const ids = [...this.toRead].filter((id) => this.waiting.has(id));
        this.toRead.clear();
        if (ids.length > 0) await this.readSettled(ids);
      }
    } finally {
      this.reading = false;
    }
  }

  private readSettled(ids: string[]): Promise<void> {
    return this.sql<Settled[]>`select id, state, value from durably.promises where id = any(${textArray(ids)}::text[]) and state <> 'pending'`
      .then((rows) => this.deliver(rows), () => { /* the next poll or reconnect checks again */ });
  }

  private deliver(rows: Settled[]) {
    for (const row of rows) {
      const set = this.waiting.get(row.id);
      this.waiting.delete(row.id);
      for (const w of set ?? []) w.resolve(row);
    }
  }

  private fail(id: string, err: unknown) {
    const set = this.waiting.get(id);
    this.waiting.delete(id);
    for (const w of set ?? []) w.reject(err);
  }

  private drop(id: string, waiter: Waiter) {
    const set = this.waiting.get(id);
    set?.delete(waiter);
    if (set?.size === 0) this.waiting.delete(id);
  }

  /** How many promises are waited for (what the poller reads). */
  get waitedFor(): number {
    return this.waiting.size;
  }
}
