import { retryTransient, textArray, type Sql } from './db.js';
import { DurablyError } from './errors.js';
import { settledValue, type PromiseState } from './promises.js';
import type { Metrics } from './metrics.js';
import type { CheckpointBatch } from './checkpoint-batch.js';
import type { ExecutionSpan } from './tracing.js';

/** A child promise as the claim query returns it (the execution's history). */
export interface ChildRecord {
  id: string;
  kind: 'invoke' | 'step' | 'sleep' | 'external';
  func: string | null;
  state: PromiseState;
  value: unknown;
  timeout_at: string | Date;
}

/** What an execution needs from the worker running it. */
export interface ExecutionHost {
  sql: Sql;
  workerId: string;
  group: string;
  /** Sleeps up to this long wait in process; longer ones suspend. */
  inProcessSleepMs: number;
  metrics: Metrics;
  /** Where step checkpoints are written, together with those of the worker's other executions. */
  checkpoints: CheckpointBatch;
  /** Called when the execution suspended until `wakeAt` (if a timer). */
  onSuspended(wakeAt: Date | undefined): void;
  /** Whether the worker surely still holds the task's lease (see LeaseKeeper.valid). */
  leaseValid(): boolean;
}

/** Ends an execution early: it suspended, or it was aborted. Never seen by user code that awaits ctx operations. */
export type Interrupt = { kind: 'suspended' } | { kind: 'aborted'; reason: unknown };

type RemoteWait = { wakeAt?: Date; resolve: (v: unknown) => void; reject: (e: unknown) => void };

/**
 * One run of one claimed task: the state its contexts share. It decides when
 * to suspend: when every branch of the function waits on something remote
 * (a child on another worker, a long timer, an external promise) and nothing
 * runs locally.
 */
export class Execution {
  readonly controller = new AbortController();
  /** This attempt's span, when the application registered an OpenTelemetry SDK. */
  trace?: ExecutionSpan;
  private localOps = 0;
  /** Waiting for the local work in flight to end (see localDone). */
  private localWaiters: (() => void)[] = [];
  private readonly remote = new Map<string, RemoteWait>();
  private checkScheduled = false;
  private suspending = false;
  /** The function returned or threw: the execution ends with that outcome and never suspends. */
  private finished = false;
  private interrupt!: (i: Interrupt) => void;
  /** Settles when the execution suspends or is aborted. */
  readonly interrupted = new Promise<Interrupt>((ok) => { this.interrupt = ok; });

  constructor(
    readonly host: ExecutionHost,
    readonly promiseId: string,
    readonly rootId: string,
    readonly timeoutAt: Date,
    readonly attempt: number,
    /** Null for a first run: there is nothing to replay. */
    readonly history: Map<string, ChildRecord> | null,
  ) {}

  /** A query on the execution's pool, retried through broken connections (every one is idempotent). */
  query<T>(make: (sql: Sql) => Promise<T>): Promise<T> {
    return retryTransient(() => make(this.host.sql));
  }

  abort(reason: unknown) {
    if (this.controller.signal.aborted) return;
    this.controller.abort(reason);
    for (const w of this.remote.values()) w.reject(reason);
    this.remote.clear();
    this.interrupt({ kind: 'aborted', reason });
  }

  /** Runs `op` as local work: while it runs, the execution does not suspend. */
  async local<T>(op: () => Promise<T>): Promise<T> {
    this.throwIfAborted();
    this.localOps++;
    try {
      return await op();
    } finally {
      if (--this.localOps === 0) for (const done of this.localWaiters.splice(0)) done();
      this.scheduleCheck();
    }
  }

  /**
   * The function has returned or thrown. Resolves once the local work it
   * started and did not await has ended (a detached beginRpc's invocation,
   * a step): its outcome is written after them, as nothing more can be made
   * under a settled promise. From now on the execution never suspends.
   */
  finish(): Promise<void> {
    this.finished = true;
    if (this.localOps === 0) return Promise.resolve();
    return new Promise((done) => this.localWaiters.push(done));
  }

  /** Waits for promise `id` to settle elsewhere (or for `wakeAt`, for timers). */
  awaitRemote(id: string, wakeAt?: Date): Promise<unknown> {
    this.throwIfAborted();
    return new Promise((resolve, reject) => {
      this.remote.set(id, { wakeAt, resolve, reject });
      this.scheduleCheck();
    });
  }

  /**
   * Before a step's body runs: a lease that may have run out (this process
   * stalled past it) may have passed the execution to another worker, which
   * runs the step itself; this one goes no further.
   */
  checkLease() {
    if (!this.host.leaseValid()) {
      this.abort(new DurablyError('LEASE_LOST', `the lease on ${this.promiseId} may have run out: another worker may run it`));
    }
    this.throwIfAborted();
  }

  throwIfAborted() {
    if (this.controller.signal.aborted) throw this.controller.signal.reason;
  }

  private scheduleCheck() {
    if (this.checkScheduled) return;
    this.checkScheduled = true;
    // After the microtasks run: by then user code has reached its next await.
    setImmediate(() => {
      this.checkScheduled = false;
      if (this.localOps === 0 && this.remote.size > 0 && !this.suspending && !this.finished && !this.controller.signal.aborted) {
        void this.suspend();
      }
    });
  }

  private async suspend() {
    this.suspending = true;
    const awaits = [...this.remote.keys()];
    const timers = [...this.remote.values()].flatMap((w) => (w.wakeAt ? [w.wakeAt.getTime()] : []));
    const wakeAt = timers.length ? new Date(Math.min(...timers)) : undefined;
    try {
      const [{ suspend_task: outcome }] = await this.query((sql) => sql`
        select durably.suspend_task(${this.host.workerId}, ${this.promiseId}, ${textArray(awaits)}::text[], ${wakeAt ?? null})`);
      if (outcome === 'suspended') {
        this.host.onSuspended(wakeAt);
        this.interrupt({ kind: 'suspended' });
        return;
      }
      if (outcome === 'lost') return this.abort(new DurablyError('LEASE_LOST', `lost the lease on ${this.promiseId}`));
      // Something settled meanwhile: hand out what is ready and go on.
      const rows = await this.query((sql) => sql<{ id: string; state: PromiseState; value: unknown; timeout_at: Date }[]>`
        select id, state, value, timeout_at from durably.promises where id = any(${textArray(awaits)}::text[])`);
      for (const row of rows) {
        const w = this.remote.get(row.id);
        if (!w) continue;
        if (row.state !== 'pending') {
          this.remote.delete(row.id);
          try { w.resolve(settledValue(row)); } catch (e) { w.reject(e); }
        }
      }
      this.suspending = false;
      this.scheduleCheck();
    } catch (err) {
      // The lease runs out and another claim replays the execution.
      this.abort(err);
    }
  }
}
