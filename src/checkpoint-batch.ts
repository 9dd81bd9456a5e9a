import { isTransient, retryTransient, textArray, type Sql } from './db.js';
import { InvalidArgumentError } from './errors.js';
import type { ChildRecord } from './execution.js';
import type { SettleArrays, SettlementBatch } from './settlement-batch.js';

/** A step's outcome to store: a settled child `id` of `parentId`, in the tree of `rootId`. */
export interface Checkpoint {
  id: string;
  parentId: string;
  rootId: string;
  func: string;
  state: 'resolved' | 'rejected';
  /** The outcome as JSON text. */
  value: string;
  timeoutAt: Date;
}

interface Waiting {
  checkpoint: Checkpoint;
  resolve: (stored: ChildRecord) => void;
  reject: (err: unknown) => void;
}

type StoredRow = ChildRecord & { error: string | null };

/**
 * The step checkpoints of a worker's executions, written together: those
 * queued in one event-loop turn (the steps that finished at the same moment)
 * go in one call of durably.create_steps, one statement and one commit, with
 * the settlements of executions that finished meanwhile. Each step's promise
 * settles when that commit returns, so a step is stored before its result is
 * used. A checkpoint the database refuses fails alone, with its reason.
 */
export class CheckpointBatch {
  private pending: Waiting[] = [];
  private flushScheduled = false;
  /** Writes in flight: they may carry settlements, which stop() must see written. */
  private readonly writing = new Set<Promise<void>>();

  constructor(
    private readonly sql: Sql,
    private readonly settlements: SettlementBatch,
  ) {}

  /** Stores `checkpoint` with the others of this turn; resolves with the stored child (the first stored wins). */
  write(checkpoint: Checkpoint): Promise<ChildRecord> {
    return new Promise((resolve, reject) => {
      this.pending.push({ checkpoint, resolve, reject });
      if (this.flushScheduled) return;
      this.flushScheduled = true;
      // After the turn's microtasks: every step finishing now has queued its checkpoint.
      setImmediate(() => {
        this.flushScheduled = false;
        const write = this.store(this.pending.splice(0));
        this.writing.add(write);
        void write.finally(() => this.writing.delete(write));
      });
    });
  }

  /** Resolves when the writes queued or in flight now have ended. */
  async idle(): Promise<void> {
    while (this.flushScheduled || this.writing.size > 0) {
      await Promise.all([...this.writing, new Promise((ok) => setImmediate(ok))]);
    }
  }

  /**
   * Writes a batch, retried through broken connections. The database returns
   * only the checkpoints not stored as sent: the child stored before under
   * that id, or the reason it refused one. A batch it refuses as a whole (an
   * error no row check foresaw) is written one checkpoint at a time, so that
   * the error reaches only the execution it belongs to.
   */
  private async store(batch: Waiting[]): Promise<void> {
    let rows: StoredRow[];
    try {
      rows = await retryTransient(() => this.settlements.carry((settle) => this.createSteps(batch, settle)));
    } catch (err) {
      if (batch.length > 1 && !isTransient(err)) {
        await Promise.all(batch.map((w) => this.store([w])));
        return;
      }
      for (const w of batch) w.reject(err);
      return;
    }
    const exceptions = new Map(rows.map((r) => [r.id, r]));
    for (const w of batch) {
      const row = exceptions.get(w.checkpoint.id);
      if (!row) w.resolve(stored(w.checkpoint));
      else if (row.error === null) w.resolve(row);
      else w.reject(new InvalidArgumentError(`the outcome of step ${w.checkpoint.func} (${w.checkpoint.id}) could not be stored: ${row.error}`));
    }
  }

  private createSteps(batch: Waiting[], settle: SettleArrays | null): Promise<StoredRow[]> {
    const column = (f: (c: Checkpoint) => string) => textArray(batch.map((w) => f(w.checkpoint)));
    return this.sql<StoredRow[]>`
      select id, kind, func, state, value, timeout_at, error
        from durably.create_steps(${column((c) => c.id)}::text[], ${column((c) => c.parentId)}::text[],
          ${column((c) => c.rootId)}::text[], ${column((c) => c.func)}::text[], ${column((c) => c.state)}::text[],
          ${column((c) => c.value)}::text[]::jsonb[], ${column((c) => c.timeoutAt.toISOString())}::timestamptz[],
          ${settle?.ids ?? null}::text[], ${settle?.states ?? null}::text[], ${settle?.values ?? null}::text[]::jsonb[],
          ${settle?.seqs ?? null}::text[]::bigint[])`;
  }
}

/** The child a checkpoint stored as sent: its value read back from its JSON, as a replay reads it. */
function stored(c: Checkpoint): ChildRecord {
  return { id: c.id, kind: 'step', func: c.func, state: c.state, value: JSON.parse(c.value), timeout_at: c.timeoutAt };
}
