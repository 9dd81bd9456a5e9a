import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { setTimeout as delay } from 'node:timers/promises';
import { retryTransient, textArray, type Sql } from './db.js';
import { Context, Execution, type ChildRecord, type StepFunction } from './context.js';
import {
  DurablyError, NonDeterminismError, PromiseRejectedError, UnknownFunctionError, toErrorValue,
} from './errors.js';
import { toJson } from './json.js';
import { DEFAULT_RETRY, retryDelay, type RetryPolicy } from './retry.js';

export interface Registered {
  name: string;
  fn: StepFunction;
  retry?: RetryPolicy;
}

export interface WorkerConfig {
  group: string;
  concurrency: number;
  /** Tasks held at most, running or claimed ahead. */
  prefetch: number;
  leaseMs: number;
  heartbeatMs: number;
  pollMs: number;
  inProcessSleepMs: number;
  /** How long stop() waits for running executions before releasing them. */
  graceMs: number;
  /** Settled invocations older than this are pruned (null: kept forever). */
  retentionMs: number | null;
  log: (message: string) => void;
}

interface ClaimedTask {
  id: string;
  func: string;
  args: unknown[];
  state: string;
  timeout_at: Date;
  root_id: string;
  attempt: number;
  retry: RetryPolicy | null;
  history: ChildRecord[] | null;
  /** The promise's sequence number: settlements find the row by it. */
  seq: number;
}

type Settlement = { id: string; seq: number; state: string; value: string | null };

/** The arguments of durably.settle_many, as text array literals. */
function settleArrays(batch: Settlement[]) {
  return {
    ids: textArray(batch.map((s) => s.id)),
    states: textArray(batch.map((s) => s.state)),
    values: textArray(batch.map((s) => s.value)),
    seqs: textArray(batch.map((s) => String(s.seq))),
  };
}

/** How often a worker deletes settled invocations past their retention. */
const PRUNE_EVERY_MS = 60_000;

/**
 * Claims tasks of one group in batches, runs them, completes them in batches
 * and renews the leases it holds with one heartbeat. Woken by NOTIFY on
 * durably_tasks; the poll interval is the fallback and also expires promises
 * past their timeout.
 */
export class Worker {
  readonly id = randomUUID();
  private readonly running = new Map<string, Execution>();
  /** Ids whose outcome is not yet written: their leases must stay renewed. */
  private readonly held = new Set<string>();
  /** The claim loop while it runs: stop() waits for a claim in flight. */
  private pumping?: Promise<void>;
  private pumpAgain = false;
  private pumpScheduled = false;
  /** The last claim came back full: there may be more to claim. */
  private backlog = true;
  private stopping = false;
  private timers: NodeJS.Timeout[] = [];
  private listener?: { unlisten(): Promise<void> };
  private settlements: Settlement[] = [];
  private flushing?: Promise<void>;
  private flushScheduled = false;
  /** Claimed ahead of free slots, in claim order: run as slots free up. */
  private queue: ClaimedTask[] = [];
  private drained?: () => void;

  constructor(
    private readonly sql: Sql,
    private readonly functions: Map<string, Registered>,
    private readonly config: WorkerConfig,
  ) {}

  async start(): Promise<void> {
    const { group, leaseMs, heartbeatMs, pollMs } = this.config;
    await this.sql`select durably.register_worker(${this.id}, ${group}, ${hostname()}, ${process.pid},
      ${textArray([...this.functions.keys()])}::text[], ${leaseMs})`;
    this.listener = await this.sql.listen(
      'durably_tasks',
      (payload) => { if (payload === group) this.pump(); },
      () => this.pump(),
    );
    this.timers.push(setInterval(() => this.heartbeat(), heartbeatMs));
    this.timers.push(setInterval(() => this.poll(), pollMs));
    if (this.config.retentionMs !== null) this.timers.push(setInterval(() => this.prune(), PRUNE_EVERY_MS));
    this.pump();
  }

  /** Stops claiming, waits up to graceMs for running executions, then releases what is left. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    for (const t of this.timers) clearInterval(t);
    await this.listener?.unlisten().catch(() => {});
    // Tasks a claim in flight brings back, and those claimed ahead, are not
    // run: release_tasks below frees them.
    await this.pumping;
    for (const task of this.queue) this.held.delete(task.id);
    this.queue = [];
    if (this.running.size > 0) {
      const drained = new Promise<void>((ok) => { this.drained = ok; });
      await Promise.race([drained, delay(this.config.graceMs)]);
    }
    for (const exec of this.running.values()) exec.abort(new DurablyError('WORKER_STOPPED', 'the worker stopped'));
    await this.flush();
    await this.retrying('release tasks', () => this.sql`select durably.release_tasks(${this.id})`, 5);
  }

  get activeCount(): number {
    return this.running.size;
  }

  /**
   * Claims while the last claim came back full, keeping up to `prefetch`
   * tasks at hand (running or queued), so that a slot that frees up starts
   * the next task without a round trip. Settlements waiting to be
   * written go along with the claim: one transaction, one commit.
   */
  private pump(): void {
    if (this.stopping) return;
    if (this.pumping) { this.pumpAgain = true; return; }
    const run = (async () => {
      try {
        do {
          this.pumpAgain = false;
          for (;;) {
            const want = this.config.prefetch - this.running.size - this.queue.length;
            if (want <= 0 || this.stopping) { this.backlog = true; break; }
            const tasks = await this.claim(want);
            if (this.stopping) break;
            for (const task of tasks) this.enqueue(task);
            this.drain();
            this.backlog = tasks.length === want;
            if (!this.backlog) break;
          }
        } while (this.pumpAgain && !this.stopping);
      } catch (err) {
        this.config.log(`claim failed, retrying at the next poll: ${(err as Error).message}`);
      }
    })();
    this.pumping = run;
    void run.then(() => {
      this.pumping = undefined;
      // a wake-up that came after the loop's last look
      if (this.pumpAgain) this.pump();
      else if (this.settlements.length > 0) this.flushSoon();
    });
  }

  /** Claims up to `want` tasks, settling the waiting settlements in the same transaction. */
  private async claim(want: number): Promise<ClaimedTask[]> {
    const { group, leaseMs } = this.config;
    const batch = this.settlements.splice(0);
    if (batch.length === 0) {
      return this.sql<ClaimedTask[]>`select * from durably.claim_tasks(${this.id}, ${group}, ${want}, ${leaseMs})`;
    }
    try {
      const a = settleArrays(batch);
      const tasks = await this.sql<ClaimedTask[]>`
        select * from durably.settle_and_claim(${this.id}, ${group}, ${want}, ${leaseMs},
          ${a.ids}::text[], ${a.states}::text[], ${a.values}::text[]::jsonb[], ${a.seqs}::text[]::bigint[])`;
      for (const s of batch) this.held.delete(s.id);
      return tasks;
    } catch (err) {
      // written by the next flush, which retries
      this.settlements.unshift(...batch);
      throw err;
    }
  }

  /** Pumps once the executions finishing in this turn have freed their slots: fewer, larger claims. */
  private pumpSoon(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  private prune(): void {
    this.sql`select durably.prune_promises(${this.config.retentionMs} * interval '1 millisecond')`
      .catch((err) => this.config.log(`pruning settled promises failed: ${(err as Error).message}`));
  }

  private poll(): void {
    this.pump();
    this.sql`select durably.expire_promises()`.catch(() => {});
  }

  private enqueue(task: ClaimedTask): void {
    // Our own task whose lease ran out while it still runs (or waits) here:
    // the claim renewed the lease; the run in progress goes on.
    if (this.held.has(task.id)) return;
    this.held.add(task.id);
    this.queue.push(task);
  }

  /** Starts queued tasks while there are free slots. */
  private drain(): void {
    while (this.running.size < this.config.concurrency && this.queue.length > 0 && !this.stopping) {
      this.execute(this.queue.shift()!);
    }
  }

  private execute(task: ClaimedTask): void {
    const exec = new Execution(
      {
        sql: this.sql,
        workerId: this.id,
        group: this.config.group,
        inProcessSleepMs: this.config.inProcessSleepMs,
        onSuspended: (wakeAt) => this.wakeAt(wakeAt),
      },
      task.id, task.root_id, task.timeout_at, task.attempt,
      task.history ? new Map(task.history.map((c) => [c.id, c])) : null,
    );
    this.running.set(task.id, exec);
    void this.runToOutcome(task, exec).finally(() => {
      this.running.delete(task.id);
      if (this.running.size === 0) this.drained?.();
      this.drain();
      if (this.backlog && this.queue.length < this.config.concurrency) this.pumpSoon();
    });
  }

  private async runToOutcome(task: ClaimedTask, exec: Execution): Promise<void> {
    const registered = this.functions.get(task.func);
    if (task.state !== 'pending') {
      // Settled while queued (canceled, timed out): only the task is left to drop.
      return this.settle(task, 'rejected', null);
    }
    if (!registered) {
      const known = [...this.functions.keys()].join(', ') || 'none';
      return this.settle(task, 'rejected', toErrorValue(new UnknownFunctionError(
        `function ${JSON.stringify(task.func)} is not registered on worker ${this.id} of group ` +
        `${JSON.stringify(this.config.group)} (registered: ${known})`), task.attempt));
    }
    const timeout = setTimeout(() => exec.abort(new DurablyError('TIMED_OUT', `promise ${task.id} timed out`)),
      Math.min(task.timeout_at.getTime() - Date.now(), 2 ** 31 - 1));
    try {
      const ctx = new Context(exec, task.id, task.attempt, exec.history);
      const outcome = await Promise.race([
        Promise.resolve().then(() => registered.fn(ctx, ...task.args)).then(
          (value) => ({ kind: 'resolved' as const, value }),
          (error) => ({ kind: 'rejected' as const, error }),
        ),
        exec.interrupted,
      ]);
      switch (outcome.kind) {
        case 'suspended':
          this.held.delete(task.id);
          return;
        case 'aborted':
          return this.aborted(task, outcome.reason);
        case 'resolved': {
          let json: string;
          try {
            json = toJson(outcome.value ?? null, `the result of ${task.func}`);
          } catch (err) {
            return this.settle(task, 'rejected', toErrorValue(err, task.attempt));
          }
          return this.settle(task, 'resolved', json);
        }
        case 'rejected':
          if (exec.controller.signal.aborted) return this.aborted(task, exec.controller.signal.reason);
          return this.failed(task, registered, outcome.error);
      }
    } finally {
      clearTimeout(timeout);
    }
  }

  private aborted(task: ClaimedTask, reason: unknown): Promise<void> | void {
    if (reason instanceof NonDeterminismError) return this.settle(task, 'rejected', toErrorValue(reason, task.attempt));
    if (reason instanceof DurablyError && reason.code === 'TIMED_OUT') {
      return this.settle(task, 'rejected_timedout', toErrorValue(reason, task.attempt));
    }
    // Canceled or settled elsewhere, lost lease, or stopping: nothing to write.
    this.held.delete(task.id);
  }

  private async failed(task: ClaimedTask, registered: Registered, error: unknown): Promise<void> {
    const value = toErrorValue(error, task.attempt);
    // An error that a stored child produced comes back the same on every
    // replay: retrying the function cannot change it.
    const replayable = error instanceof PromiseRejectedError && error.promiseId.startsWith(`${task.id}.`);
    const wait = replayable ? null : retryDelay(task.retry ?? registered.retry ?? DEFAULT_RETRY, task.attempt);
    if (wait === null) return this.settle(task, 'rejected', value);
    await this.retrying('retry task', () =>
      this.sql`select durably.retry_task(${this.id}, ${task.id}, ${wait}, ${JSON.stringify(value)}::text::jsonb)`, 10);
    this.held.delete(task.id);
    this.wakeAt(new Date(Date.now() + wait));
  }

  /**
   * Queues a settlement. The slot is free at once; the lease stays renewed
   * until the settlement is written, together with the others of this turn.
   */
  private settle(task: ClaimedTask, state: string, value: unknown): void {
    this.settlements.push({ id: task.id, seq: task.seq, state,
      value: value === null ? null : typeof value === 'string' ? value : JSON.stringify(value) });
    // With a backlog the next claim is near and carries the settlement.
    if (this.backlog && !this.stopping) this.pumpSoon();
    else this.flushSoon();
  }

  private flushSoon(): void {
    if (this.flushScheduled || this.flushing) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      void this.flush();
    });
  }

  private flush(): Promise<void> {
    this.flushing ??= (async () => {
      try {
        while (this.settlements.length > 0) {
          const batch = this.settlements.splice(0);
          const a = settleArrays(batch);
          await this.retrying('complete tasks', () => this.sql`
            select durably.settle_many(${a.ids}::text[], ${a.states}::text[], ${a.values}::text[]::jsonb[], ${a.seqs}::text[]::bigint[])`, 20);
          for (const s of batch) this.held.delete(s.id);
        }
      } finally {
        this.flushing = undefined;
      }
    })();
    return this.flushing;
  }

  private heartbeat(): void {
    if (this.held.size === 0 && this.running.size === 0) {
      this.sql`update durably.workers set heartbeat_at = now() where id = ${this.id}`.catch(() => {});
      return;
    }
    this.sql<{ id: string; state: string | null }[]>`
      select * from durably.heartbeat(${this.id}, ${this.config.leaseMs}, ${textArray([...this.held])}::text[])`
      .then((lost) => {
        for (const { id, state } of lost) {
          const reason = state === 'rejected_canceled'
            ? new DurablyError('CANCELED', `promise ${id} was canceled`)
            : state === 'rejected_timedout'
              ? new DurablyError('TIMED_OUT', `promise ${id} timed out`)
              : new DurablyError('LEASE_LOST', `lost the lease on ${id} (${state ?? 'gone'})`);
          this.running.get(id)?.abort(reason);
          // claimed ahead and not started: drop it
          const queued = this.queue.findIndex((t) => t.id === id);
          if (queued >= 0) {
            this.queue.splice(queued, 1);
            this.held.delete(id);
          }
        }
      }, (err) => this.config.log(`heartbeat failed: ${(err as Error).message}`));
  }

  /** Claims again at `when` (a retry's or a timer's due time), sooner than the poll would. */
  private wakeAt(when: Date | undefined): void {
    if (!when) return;
    const t = setTimeout(() => this.pump(), Math.max(0, when.getTime() - Date.now()) + 5);
    t.unref();
  }

  /** Retries `op` through broken connections; failing that, logs: the lease expires and the work is re-run. */
  private async retrying<T>(what: string, op: () => Promise<T>, attempts: number): Promise<T | undefined> {
    try {
      return await retryTransient(op, attempts);
    } catch (err) {
      this.config.log(`${what} failed, leaving it to lease expiry: ${(err as Error).message}`);
      return undefined;
    }
  }
}
