import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { setTimeout as delay } from 'node:timers/promises';
import { listen, retryTransient, textArray, type Sql } from './db.js';
import { Context, type StepFunction } from './context.js';
import { Execution, type ChildRecord } from './execution.js';
import { LeaseKeeper } from './leases.js';
import { SettlementBatch } from './settlement-batch.js';
import { CheckpointBatch } from './checkpoint-batch.js';
import {
  DurablyError, NonDeterminismError, PromiseRejectedError, toErrorValue,
} from './errors.js';
import { toJson } from './json.js';
import { DEFAULT_RETRY, retryDelay, type RetryPolicy } from './retry.js';
import { startExecution, withContext, type ExecutionOutcome, type ExecutionSpan } from './tracing.js';
import type { Metrics } from './metrics.js';
import type { ExecutionFields, Logger } from './log.js';

export interface Registered {
  name: string;
  fn: StepFunction;
  retry?: RetryPolicy;
}

export interface WorkerConfig {
  group: string;
  concurrency: number;
  /** Tasks held at most, running or claimed ahead; null: adaptive (see Worker.limit). */
  prefetch: number | null;
  leaseMs: number;
  heartbeatMs: number;
  pollMs: number;
  inProcessSleepMs: number;
  /** How long stop() waits for running executions before releasing them. */
  graceMs: number;
  /** Settled invocations older than this are pruned (null: kept forever). */
  retentionMs: number | null;
  log: Logger;
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
  /** The invoker's W3C trace context (tracing.ts). */
  trace_context: unknown;
  /** Handed to this worker (durably.hand_off), not claimed by it. */
  handed?: boolean;
  /** Seconds the task had been runnable when it was claimed. */
  ready_seconds: number;
  /** From execute() to the attempt's outcome: its span (with an SDK registered) and start. */
  span?: ExecutionSpan;
  startedAt?: number;
}

/**
 * Adaptive claiming ahead (no `prefetch` given): the tasks claimed ahead of
 * free slots are at most about this much of the worker's work, by the mean
 * run time of its executions; a crashed worker's claimed-ahead tasks wait for
 * their lease to expire, and this bounds how much work that is.
 */
const AHEAD_WORK_MS = 1000;
/**
 * ... and at most this many per slot, and this many in all (or concurrency,
 * if more). Larger claims spread a turn's fixed cost (its settlements and
 * claim, one transaction) over more tasks: a backlog of no-ops at
 * concurrency 50 ran 10-15 % faster holding 250 than 150, and no faster
 * holding 500, whose turns are long enough for the slots to run dry.
 */
const MAX_AHEAD_PER_SLOT = 20;
const MAX_AHEAD = 200;
/** Weight of the latest execution in the mean run time. */
const RUN_TIME_WEIGHT = 0.1;

/** How often a worker deletes settled invocations past their retention, and workers long gone. */
const PRUNE_EVERY_MS = 60_000;
/** Roots per prune_promises call: a batch takes tens of milliseconds. */
const PRUNE_BATCH = 5000;
/**
 * A pass goes on while its batches come back full, for at most this long: a
 * backlog is worked off in most of each minute, and passes never overlap.
 */
const PRUNE_BUDGET_MS = 50_000;

/**
 * Claims tasks of one group in batches and runs them; their outcomes are
 * written in batches (SettlementBatch) and their leases renewed by one
 * heartbeat (LeaseKeeper). Woken by NOTIFY on durably_tasks; the poll
 * interval is the fallback and also expires promises past their timeout.
 */
export class Worker {
  readonly id = randomUUID();
  private readonly running = new Map<string, Execution>();
  private readonly leases: LeaseKeeper;
  private readonly settlements: SettlementBatch;
  private readonly checkpoints: CheckpointBatch;
  /** The claim loop while it runs: stop() waits for a claim in flight. */
  private pumping?: Promise<void>;
  private pumpAgain = false;
  private pumpScheduled = false;
  /** The last claim came back full: there may be more to claim. */
  private backlog = true;
  /** Tasks to claim ahead of the slots (adaptive prefetch): doubles while claims come back full, halves when not. */
  private ahead: number;
  /** Mean run time of this worker's executions, ms (exponentially weighted); unknown before the first ends. */
  private meanRunMs?: number;
  private stopping = false;
  private timers: NodeJS.Timeout[] = [];
  /** The prune pass while it runs: stop() waits for it. */
  private pruning?: Promise<void>;
  private listener?: { unlisten(): Promise<void> };
  /** Listening for handoffs (durably.hand_off) on this worker's own channel. */
  private handoffs?: { unlisten(): Promise<void> };
  /** Listening on its own channel: it may be handed work (see returnHandoffs). */
  private listening = true;
  /**
   * Tasks this worker may still be handed: the room its last claim left,
   * which durably.record_claim recorded (idle: durably.idle_workers), less
   * the handoffs since. At 0 it is idle no more, and claims again when an
   * execution ends.
   */
  private room = 0;
  /** Claimed ahead of free slots, in claim order: run as slots free up. */
  private queue: ClaimedTask[] = [];
  private drained?: () => void;
  /** The wake-up timer (see wakeAt). */
  private wake?: { at: number; timer: NodeJS.Timeout };

  constructor(
    private readonly sql: Sql,
    private readonly functions: Map<string, Registered>,
    private readonly config: WorkerConfig,
    private readonly metrics: Metrics,
  ) {
    this.ahead = config.concurrency;
    this.leases = new LeaseKeeper(sql, this.id, config.leaseMs, (id, reason) => this.lost(id, reason),
      (message) => config.log.warn({}, message));
    this.settlements = new SettlementBatch(sql, (batch) => { for (const s of batch) this.leases.release(s.id); },
      (message) => config.log.warn({ group: config.group }, message));
    this.checkpoints = new CheckpointBatch(sql, this.settlements);
  }

  async start(): Promise<void> {
    const { heartbeatMs, pollMs } = this.config;
    const registeredAt = Date.now();
    await this.register();
    this.leases.beat(registeredAt);
    this.handoffs = await listen(this.sql, `durably_worker_${this.id}`, (payload) => this.handedOff(payload),
      () => this.resumeHandoffs(), () => this.returnHandoffs());
    this.listener = await this.sql.listen('durably_tasks', (payload) => { if (this.wokenBy(payload)) this.pump(); }, () => this.pump());
    this.leases.start(heartbeatMs);
    this.timers.push(setInterval(() => this.poll(), pollMs));
    // The first pass at a random moment of the first poll interval, so that
    // workers started together do not all prune together; then every minute.
    this.timers.push(setTimeout(() => {
      this.prune();
      if (!this.stopping) this.timers.push(setInterval(() => this.prune(), PRUNE_EVERY_MS));
    }, Math.random() * pollMs));
    this.pump();
  }

  /**
   * A wake-up is for this worker when it is for its group and names no
   * worker (every worker of the group claims) or names this one among the
   * idle workers picked for the work (durably.wake_group): `<group>` or
   * `<group>\n<worker id>\n...`.
   */
  private wokenBy(payload: string): boolean {
    const { group } = this.config;
    if (payload === group) return true;
    return payload.startsWith(`${group}\n`) && payload.includes(this.id, group.length);
  }

  /**
   * A task handed to this worker (durably.hand_off), claimed for it by the
   * transaction that invoked it: it runs as a claimed one. When stopping, it
   * is left to release_tasks.
   */
  private handedOff(payload: string): void {
    if (this.stopping) return;
    const task = { ...JSON.parse(payload), handed: true } as ClaimedTask;
    task.timeout_at = new Date(task.timeout_at);
    this.room--;
    // Its lease runs from the last heartbeat: after a stall, another worker may have it.
    const since = this.leases.handedSince();
    if (since === undefined) return this.putBack(task);
    this.enqueue(task, since);
    this.drain();
  }

  /** A handed task this worker may no longer own goes back (durably.put_back_handoffs), unless another has it. */
  private putBack(task: ClaimedTask): void {
    this.leases.release(task.id);
    void this.retrying('put back a handed task', () =>
      this.sql`select durably.put_back_handoffs(${this.id}, ${textArray([task.id])}::text[])`, 5, this.fields(task));
  }

  /**
   * Before listening again after a lost connection: the handoffs made while
   * it was down never arrive. Stops them and puts back the handed tasks this
   * worker does not hold (durably.return_handoffs); the next claim, once
   * listening, records it idle again.
   */
  private async returnHandoffs(): Promise<void> {
    this.room = 0;
    this.listening = false;
    await this.sql`select durably.return_handoffs(${this.id}, ${textArray(this.leases.ids())}::text[])`;
  }

  /** Listening (again, after returnHandoffs): handoffs may resume (durably.resume_handoffs). */
  private resumeHandoffs(): void {
    this.sql`select durably.resume_handoffs(${this.id})`.then(() => { this.listening = true; },
      (err) => this.config.log.warn({}, `resuming handoffs failed, woken by name until the next reconnection: ${(err as Error).message}`));
  }

  /**
   * Records this worker with the functions it runs (claims take only their
   * tasks), as one that reads the names in a wake-up and, while it listens
   * on its own channel, takes handoffs.
   */
  private register(): Promise<unknown> {
    const { group, leaseMs } = this.config;
    const policies = Object.fromEntries([...this.functions.values()].flatMap((f) => (f.retry ? [[f.name, f.retry]] : [])));
    return this.sql`select durably.register_worker(${this.id}, ${group}, ${hostname()}, ${process.pid},
      ${textArray([...this.functions.keys()])}::text[], ${leaseMs}, ${JSON.stringify(policies)}::text::jsonb, true, ${this.listening})`;
  }

  /**
   * Stops claiming, waits up to graceMs for running executions, then releases
   * what is left. Leases are renewed until then, so no other worker runs
   * what still runs here, however long the grace.
   */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    for (const t of this.timers) clearInterval(t);
    clearTimeout(this.wake?.timer);
    await this.listener?.unlisten().catch(() => {});
    await this.handoffs?.unlisten().catch(() => {});
    await this.pruning;
    // Tasks a claim in flight brings back, and those claimed ahead, are not
    // run: release_tasks below frees them.
    await this.pumping;
    for (const task of this.queue) this.leases.release(task.id);
    this.queue = [];
    if (this.running.size > 0) {
      const drained = new Promise<void>((ok) => { this.drained = ok; });
      await Promise.race([drained, delay(this.config.graceMs)]);
    }
    for (const exec of this.running.values()) exec.abort(new DurablyError('WORKER_STOPPED', 'the worker stopped'));
    await this.checkpoints.idle();
    await this.settlements.flush();
    await this.retrying('release tasks', () => this.sql`select durably.release_tasks(${this.id})`, 5);
    this.leases.stop();
  }

  get activeCount(): number {
    return this.running.size;
  }

  /**
   * Claims while the last claim came back full, keeping up to limit()
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
          let claim = this.claimNext();
          while (claim) {
            const tasks = await claim.tasks;
            if (this.stopping) break;
            for (const task of tasks) this.enqueue(task, claim.sentAt);
            this.backlog = tasks.length === claim.want;
            this.room = claim.want - tasks.length;
            this.adapt();
            // The next claim goes out before these tasks start (running and
            // queued together stay the same): the database works on it while
            // they run here. Unless it would be for less than half the room:
            // then the slots free more first (the pumpSoon of each ending
            // execution). A claim's fixed cost is most of a small one's:
            // claims alternating large and small (one in flight) ran a
            // backlog of no-ops at concurrency 10 a quarter slower than
            // claims of the whole room.
            claim = this.backlog ? this.claimNext(Math.ceil(this.limit() / 2)) : undefined;
            this.drain();
          }
        } while (this.pumpAgain && !this.stopping);
      } catch (err) {
        this.config.log.warn({ group: this.config.group }, `claim failed, retrying at the next poll: ${(err as Error).message}`);
      }
    })();
    this.pumping = run;
    void run.then(() => {
      this.pumping = undefined;
      // a wake-up that came after the loop's last look
      if (this.pumpAgain) this.pump();
      else if (this.settlements.size > 0) this.settlements.flushSoon();
    });
  }

  /**
   * Tasks held at most, running or claimed ahead: `prefetch`, or by default
   * concurrency plus `ahead`, which grows while claims come back full (a
   * backlog: larger claims, fewer round trips) up to MAX_AHEAD_PER_SLOT ×
   * concurrency or MAX_AHEAD, and never past AHEAD_WORK_MS of work at the mean run time
   * (long tasks: few or none claimed ahead). Before any execution ended,
   * concurrency ahead.
   */
  private limit(): number {
    const { concurrency, prefetch } = this.config;
    if (prefetch !== null) return prefetch;
    const byWork = this.meanRunMs === undefined ? concurrency : Math.floor(concurrency * AHEAD_WORK_MS / this.meanRunMs);
    return concurrency + Math.min(this.ahead, byWork);
  }

  /** After a claim: more ahead while claims come back full, less when they do not. */
  private adapt(): void {
    const { concurrency } = this.config;
    const most = Math.max(concurrency, Math.min(MAX_AHEAD_PER_SLOT * concurrency, MAX_AHEAD));
    this.ahead = this.backlog ? Math.min(2 * this.ahead, most) : Math.max(concurrency, this.ahead >> 1);
  }

  /**
   * Claims up to `want` tasks. With a backlog, the waiting settlements go
   * along (one commit a turn); otherwise the claim answers a wake-up and
   * goes alone, faster, while the settlements are written beside it.
   */
  private claim(want: number): Promise<ClaimedTask[]> {
    const { group, leaseMs } = this.config;
    if (!this.backlog) return this.sql<ClaimedTask[]>`select * from durably.claim_tasks(${this.id}, ${group}, ${want}, ${leaseMs})`;
    return this.settlements.carry((a) => a
      ? this.sql<ClaimedTask[]>`
          select * from durably.settle_and_claim(${this.id}, ${group}, ${want}, ${leaseMs},
            ${a.ids}::text[], ${a.states}::text[], ${a.values}::text[]::jsonb[], ${a.seqs}::text[]::bigint[])`
      : this.sql<ClaimedTask[]>`select * from durably.claim_tasks(${this.id}, ${group}, ${want}, ${leaseMs})`);
  }

  /** Sends a claim for the room left under limit(), if at least `least` (else a backlog may wait, see pump). */
  private claimNext(least = 1): { want: number; sentAt: number; tasks: Promise<ClaimedTask[]> } | undefined {
    const want = this.limit() - this.running.size - this.queue.length;
    if (want < least || this.stopping) {
      this.backlog = true;
      return undefined;
    }
    return { want, sentAt: Date.now(), tasks: this.claim(want) };
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

  /**
   * Deletes settled invocations past their retention, batch after batch
   * while the batches come back full, for up to PRUNE_BUDGET_MS, and the
   * rows of workers long gone. Workers pruning at once take different
   * batches (SKIP LOCKED), so more workers prune faster.
   */
  private prune(): void {
    if (this.pruning) return;
    const { retentionMs } = this.config;
    this.pruning = (async () => {
      await this.sql`select durably.prune_workers()`;
      // A worker silent for longer than that (a suspended laptop, a paused
      // VM) was removed as gone: it joins again, or no claim would take work for it.
      const [{ known }] = await this.sql<{ known: boolean }[]>`
        select exists (select 1 from durably.workers w where w.id = ${this.id}) as known`;
      if (!known && !this.stopping) await this.register();
      const until = Date.now() + PRUNE_BUDGET_MS;
      while (retentionMs !== null && !this.stopping && Date.now() < until) {
        const [{ deleted }] = await this.sql<{ deleted: number }[]>`
          select durably.prune_promises(${retentionMs} * interval '1 millisecond', ${PRUNE_BATCH}) as deleted`;
        if (deleted < PRUNE_BATCH) break;
      }
    })()
      .catch((err) => this.config.log.warn({}, `pruning failed: ${(err as Error).message}`))
      .finally(() => { this.pruning = undefined; });
  }

  private poll(): void {
    this.pump();
    this.sql`select durably.expire_promises()`
      .catch((err) => this.config.log.warn({ group: this.config.group }, `expiring promises failed: ${(err as Error).message}`));
  }

  private enqueue(task: ClaimedTask, sentAt: number): void {
    // Our own task whose lease ran out while it still runs (or waits) here:
    // the claim renewed the lease; the run in progress goes on.
    const ours = this.leases.has(task.id);
    this.leases.add(task.id, sentAt);
    if (ours) return;
    // An execution that ran before (resumed, retried: it comes with its
    // history) starts ahead of the fresh tasks claimed ahead, as claims pick
    // it ahead of them (sql/tasks.sql): a full local queue would hold it back.
    const fresh = task.history ? this.queue.findIndex((t) => !t.history) : -1;
    if (fresh >= 0) this.queue.splice(fresh, 0, task);
    else this.queue.push(task);
  }

  /** Starts queued tasks while there are free slots. */
  private drain(): void {
    while (this.running.size < this.config.concurrency && this.queue.length > 0 && !this.stopping) {
      const task = this.queue.shift()!;
      // Claimed ahead, and this process stalled past the lease: another worker may run it.
      if (this.leases.valid(task.id)) this.execute(task);
      else if (task.handed) this.putBack(task);
      else this.leases.release(task.id);
    }
  }

  private execute(task: ClaimedTask): void {
    const exec = new Execution(
      {
        sql: this.sql,
        workerId: this.id,
        group: this.config.group,
        inProcessSleepMs: this.config.inProcessSleepMs,
        metrics: this.metrics,
        checkpoints: this.checkpoints,
        onSuspended: (wakeAt) => this.wakeAt(wakeAt),
        leaseValid: () => this.leases.valid(task.id),
      },
      task.id, task.root_id, task.timeout_at, task.attempt,
      task.history ? new Map(task.history.map((c) => [c.id, c])) : null,
    );
    task.span = exec.trace = startExecution(task, this.config.group);
    task.startedAt = performance.now();
    this.metrics.executionStarted(task, this.config.group);
    this.running.set(task.id, exec);
    void this.runToOutcome(task, exec).finally(() => {
      this.running.delete(task.id);
      if (this.running.size === 0) this.drained?.();
      this.drain();
      if ((this.backlog || this.room <= 0) && this.queue.length < this.config.concurrency) this.pumpSoon();
    });
  }

  private async runToOutcome(task: ClaimedTask, exec: Execution): Promise<void> {
    // Claims return only tasks of the functions this worker registered.
    const registered = this.functions.get(task.func)!;
    if (task.state !== 'pending') {
      // Settled while queued (canceled, timed out): only the task is left to drop.
      return this.settle(task, 'rejected', null);
    }
    const timeout = setTimeout(() => exec.abort(new DurablyError('TIMED_OUT', `promise ${task.id} timed out`)),
      Math.min(task.timeout_at.getTime() - Date.now(), 2 ** 31 - 1));
    try {
      const ctx = new Context(exec, task.id, task.attempt, exec.history);
      const returned = Promise.resolve().then(() => withContext(exec.trace?.context, () => registered.fn(ctx, ...task.args))).then(
        (value) => ({ kind: 'resolved' as const, value }),
        (error) => ({ kind: 'rejected' as const, error }),
      );
      let outcome = await Promise.race([returned, exec.interrupted]);
      if (outcome.kind === 'resolved' || outcome.kind === 'rejected') {
        const ended = outcome;
        outcome = await Promise.race([exec.finish().then(() => ended), exec.interrupted]);
      }
      switch (outcome.kind) {
        case 'suspended':
          this.ended(task, 'suspended');
          this.leases.release(task.id);
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
    this.ended(task, reason instanceof DurablyError && reason.code === 'CANCELED' ? 'canceled' : 'released', reason);
    this.leases.release(task.id);
  }

  private async failed(task: ClaimedTask, registered: Registered, error: unknown): Promise<void> {
    const value = toErrorValue(error, task.attempt);
    // An error that a stored child produced comes back the same on every
    // replay: retrying the function cannot change it.
    const replayable = error instanceof PromiseRejectedError && error.promiseId.startsWith(`${task.id}.`);
    const wait = replayable ? null : retryDelay(task.retry ?? registered.retry ?? DEFAULT_RETRY, task.attempt);
    this.ended(task, wait === null ? 'rejected' : 'retry', error);
    if (wait === null) return this.settle(task, 'rejected', value);
    await this.retrying('retry task', () =>
      this.sql`select durably.retry_task(${this.id}, ${task.id}, ${wait}, ${JSON.stringify(value)}::text::jsonb)`, 10, this.fields(task));
    this.leases.release(task.id);
    this.wakeAt(new Date(Date.now() + wait));
  }

  /**
   * Queues a settlement. The slot is free at once; the lease stays renewed
   * until the settlement is written, together with the others of this turn.
   */
  private settle(task: ClaimedTask, state: string, value: unknown): void {
    this.ended(task, OUTCOMES[task.state !== 'pending' ? task.state : state], value);
    this.settlements.add({ id: task.id, seq: task.seq, state,
      value: value === null ? null : typeof value === 'string' ? value : JSON.stringify(value) });
    // With a backlog the next claim is near and carries the settlement.
    if (this.backlog && !this.stopping) this.pumpSoon();
    else this.settlements.flushSoon();
  }

  /** A task the heartbeat found no longer ours: abort its run, or drop it if it was only claimed ahead. */
  private lost(id: string, reason: DurablyError): void {
    this.running.get(id)?.abort(reason);
    const queued = this.queue.findIndex((t) => t.id === id);
    if (queued >= 0) {
      this.queue.splice(queued, 1);
      this.leases.release(id);
    }
  }

  /**
   * Claims again at `when` (a retry's or a timer's due time), sooner than the
   * poll would. One timer, for the earliest due time this worker knows of: a
   * million long sleeps hold one timer, not a million; a later due time is
   * claimed by the poll (at most pollMs late) or by an earlier wake-up.
   */
  private wakeAt(when: Date | undefined): void {
    if (!when) return;
    const at = when.getTime();
    if (this.wake && this.wake.at <= at) return;
    clearTimeout(this.wake?.timer);
    const timer = setTimeout(() => { this.wake = undefined; this.pump(); }, Math.max(0, at - Date.now()) + 5);
    timer.unref();
    this.wake = { at, timer };
  }

  /**
   * An execution attempt's outcome, once: its span ends, its metrics are
   * counted, and a line is logged (info for failures, debug otherwise).
   */
  private ended(task: ClaimedTask, outcome: ExecutionOutcome, error?: unknown): void {
    if (task.startedAt === undefined) return;
    const ms = performance.now() - task.startedAt;
    task.startedAt = undefined;
    this.meanRunMs = this.meanRunMs === undefined ? ms : this.meanRunMs + RUN_TIME_WEIGHT * (ms - this.meanRunMs);
    task.span?.end(outcome, error);
    this.metrics.executionEnded(task.func, this.config.group, outcome, ms / 1000);
    const failed = outcome === 'rejected' || outcome === 'retry' || outcome === 'timedout';
    const fields = { ...this.fields(task), outcome, duration_ms: Math.round(ms) };
    if (failed) this.config.log.info({ ...fields, error: errorMessage(error) }, `execution ${outcome === 'retry' ? 'failed, to be retried' : outcome}`);
    else this.config.log.debug(fields, `execution ${outcome}`);
  }

  /** What every log line about an execution carries. */
  private fields(task: ClaimedTask): ExecutionFields {
    return { promise_id: task.id, function: task.func, group: this.config.group, attempt: task.attempt };
  }

  /** Retries `op` through broken connections; failing that, logs: the lease expires and the work is re-run. */
  private async retrying<T>(what: string, op: () => Promise<T>, attempts: number, fields: Partial<ExecutionFields> = {}): Promise<T | undefined> {
    try {
      return await retryTransient(op, attempts);
    } catch (err) {
      this.config.log.warn(fields, `${what} failed, leaving it to lease expiry: ${(err as Error).message}`);
      return undefined;
    }
  }
}

/** Settled promise states as execution outcomes. */
const OUTCOMES: Record<string, ExecutionOutcome> = {
  resolved: 'resolved', rejected: 'rejected', rejected_canceled: 'canceled', rejected_timedout: 'timedout',
};

function errorMessage(error: unknown): string | undefined {
  if (error instanceof Error) return error.message;
  if (typeof error === 'string') return error;
  return (error as { message?: string } | undefined)?.message;
}
