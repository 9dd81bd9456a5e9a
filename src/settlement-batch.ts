import { isTransient, retryTransient, textArray, type Sql } from './db.js';

/** An execution's outcome to write: its promise (by id and sequence number), state and JSON value. */
export interface Settlement {
  id: string;
  seq: number;
  state: string;
  value: string | null;
}

/** The arguments of durably.settle_many and settle_and_claim, as array literals. */
export interface SettleArrays {
  ids: string;
  states: string;
  values: string;
  seqs: string;
}

/**
 * The outcomes a worker has yet to write, written together: carried by the
 * next claim (one transaction, one commit) when one is near, or flushed on
 * their own. A slot frees as soon as its outcome is queued here; the lease
 * stays renewed until the write, after which `onWritten` lets it go (also
 * when the write was given up on: the lease then expires and the task runs
 * again elsewhere).
 */
export class SettlementBatch {
  private pending: Settlement[] = [];
  private flushing?: Promise<void>;
  private flushScheduled = false;

  constructor(
    private readonly sql: Sql,
    private readonly onWritten: (batch: Settlement[]) => void,
    private readonly log: (message: string) => void,
  ) {}

  get size(): number {
    return this.pending.length;
  }

  add(s: Settlement): void {
    this.pending.push(s);
  }

  /**
   * Runs `op` with the waiting outcomes (null when there are none) for it to
   * write in its own transaction. When `op` fails on a broken connection they
   * wait for the next write again; when the database refuses them, they are
   * written apart (see write) and `op` runs again without them.
   */
  async carry<T>(op: (batch: SettleArrays | null) => Promise<T>): Promise<T> {
    const batch = this.pending.splice(0);
    if (batch.length === 0) return op(null);
    try {
      const result = await op(arrays(batch));
      this.onWritten(batch);
      return result;
    } catch (err) {
      if (isTransient(err)) {
        this.pending.unshift(...batch);
        throw err;
      }
      await this.write(batch, err);
      return op(null);
    }
  }

  flushSoon(): void {
    if (this.flushScheduled || this.flushing) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      void this.flush();
    });
  }

  /** Writes everything waiting, batch after batch, with durably.settle_many. */
  flush(): Promise<void> {
    // With nothing waiting (a claim or a checkpoint write carried it), the
    // loop below would end before `flushing` is set, which then stays set.
    if (this.pending.length === 0) return this.flushing ?? Promise.resolve();
    this.flushing ??= (async () => {
      try {
        while (this.pending.length > 0) await this.write(this.pending.splice(0));
      } finally {
        this.flushing = undefined;
      }
    })();
    return this.flushing;
  }

  /**
   * Writes a batch with durably.settle_many, retried through broken
   * connections (failing that, it is given up: the leases expire and the
   * tasks run again). A batch the database refuses (a value it cannot store
   * that passed the client's checks) is written one by one, so the others are
   * kept; a refused outcome rejects its promise with UnstorableResultError.
   */
  private async write(batch: Settlement[], refused?: unknown): Promise<void> {
    let err = refused ?? await retryTransient(() => this.settleMany(batch), 20).then(() => undefined, (e: unknown) => e);
    if (err !== undefined && !isTransient(err)) {
      if (batch.length > 1) {
        for (const s of batch) await this.write([s]);
        return;
      }
      const [s] = batch;
      const value = JSON.stringify({ name: 'UnstorableResultError',
        message: `the outcome of ${s.id} could not be stored: ${(err as Error).message}` });
      err = await retryTransient(() => this.settleMany([{ ...s, state: 'rejected', value }]), 20)
        .then(() => undefined, (e: unknown) => e);
    }
    if (err !== undefined) this.log(`complete tasks failed, leaving them to lease expiry: ${(err as Error).message}`);
    this.onWritten(batch);
  }

  private settleMany(batch: Settlement[]) {
    const a = arrays(batch);
    return this.sql`
      select durably.settle_many(${a.ids}::text[], ${a.states}::text[], ${a.values}::text[]::jsonb[], ${a.seqs}::text[]::bigint[])`;
  }
}

function arrays(batch: Settlement[]): SettleArrays {
  return {
    ids: textArray(batch.map((s) => s.id)),
    states: textArray(batch.map((s) => s.state)),
    values: textArray(batch.map((s) => s.value)),
    seqs: textArray(batch.map((s) => String(s.seq))),
  };
}
