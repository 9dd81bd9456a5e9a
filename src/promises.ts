import { textArray, type Sql } from './db.js';
import { NotFoundError, PromiseRejectedError, type RejectedState } from './errors.js';

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
}

/** The value of a settled promise, or its recorded error thrown. */
export function settledValue<T>(p: Pick<PromiseRecord, 'id' | 'state' | 'value'>): T {
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

type Waiter = { resolve: (p: PromiseRecord) => void; reject: (e: unknown) => void };

/**
 * Waits for promises to settle. LISTENs on durably_settled (one notification
 * per settling statement) and re-reads what it waits for; on every (re)connect
 * of the listener and every poll interval it checks all of them, so a lost
 * notification only delays a result.
 */
export class Settlements {
  private readonly waiting = new Map<string, Waiter[]>();
  private listening?: Promise<{ unlisten(): Promise<void> }>;
  private poller?: NodeJS.Timeout;

  constructor(private readonly sql: Sql, private readonly pollMs: number) {}

  async get(id: string): Promise<PromiseRecord> {
    const [row] = await this.sql<PromiseRecord[]>`select * from durably.promises where id = ${id}`;
    if (!row) throw new NotFoundError(`promise ${JSON.stringify(id)} not found`);
    return row;
  }

  async wait(id: string): Promise<PromiseRecord> {
    await this.listen();
    const settled = new Promise<PromiseRecord>((resolve, reject) => {
      const list = this.waiting.get(id) ?? [];
      list.push({ resolve, reject });
      this.waiting.set(id, list);
    });
    this.startPolling();
    // Read after listening: a settlement that happened before is seen here,
    // one after sends a notification.
    const row = await this.get(id).catch((e) => {
      // Unknown ids fail now; a broken connection is retried by the poller.
      if (e instanceof NotFoundError) this.fail(id, e);
      return undefined;
    });
    if (row && row.state !== 'pending') this.deliver([row]);
    return settled;
  }

  async close(): Promise<void> {
    clearInterval(this.poller);
    this.poller = undefined;
    const l = this.listening;
    this.listening = undefined;
    await (await l?.catch(() => undefined))?.unlisten().catch(() => {});
  }

  private listen() {
    this.listening ??= this.sql.listen(
      'durably_settled',
      (payload) => this.check(payload === '*' ? [...this.waiting.keys()] : payload.split('\n')),
      () => this.check([...this.waiting.keys()]),
    );
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
      this.check([...this.waiting.keys()]);
    }, this.pollMs);
    this.poller.unref();
  }

  private check(ids: string[]) {
    const wanted = ids.filter((id) => this.waiting.has(id));
    if (wanted.length === 0) return;
    this.sql<PromiseRecord[]>`select * from durably.promises where id = any(${textArray(wanted)}::text[]) and state <> 'pending'`
      .then((rows) => this.deliver(rows), () => { /* the next poll or reconnect checks again */ });
  }

  private deliver(rows: PromiseRecord[]) {
    for (const row of rows) {
      const list = this.waiting.get(row.id);
      this.waiting.delete(row.id);
      for (const w of list ?? []) w.resolve(row);
    }
  }

  private fail(id: string, err: unknown) {
    const list = this.waiting.get(id);
    this.waiting.delete(id);
    for (const w of list ?? []) w.reject(err);
  }
}
