import { setTimeout as delay } from 'node:timers/promises';
import { retryTransient, textArray, type Sql } from './db.js';
import { DurablyError, NonDeterminismError, toErrorValue } from './errors.js';
import { toJson } from './json.js';
import { splitArgs, parseTarget, invokeOptions, type CallOptions } from './options.js';
import { DEFAULT_RETRY, retryDelay, type RetryPolicy } from './retry.js';
import { settledValue, type PromiseState } from './promises.js';

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
  /** Called when the execution suspended until `wakeAt` (if a timer). */
  onSuspended(wakeAt: Date | undefined): void;
}

export type StepFunction<A extends unknown[] = any[], R = any> = (ctx: Context, ...args: A) => R | Promise<R>;

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
  private localOps = 0;
  private readonly remote = new Map<string, RemoteWait>();
  private checkScheduled = false;
  private suspending = false;
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
      this.localOps--;
      this.scheduleCheck();
    }
  }

  /** Waits for promise `id` to settle elsewhere (or for `wakeAt`, for timers). */
  awaitRemote(id: string, wakeAt?: Date): Promise<unknown> {
    this.throwIfAborted();
    return new Promise((resolve, reject) => {
      this.remote.set(id, { wakeAt, resolve, reject });
      this.scheduleCheck();
    });
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
      if (this.localOps === 0 && this.remote.size > 0 && !this.suspending && !this.controller.signal.aborted) {
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

/** An operation started with beginRun/beginRpc: await it (or `.result()`) later. */
export interface Future<T> extends Promise<T> {
  readonly id: string;
}

/** A durable promise created by ctx.promise(), settled from outside. */
export interface ExternalPromise<T> {
  readonly id: string;
  result(): Promise<T>;
}

/**
 * What a durable function gets as its first argument. Every operation is
 * numbered in call order; its result is stored as a child promise with id
 * `<parent id>.<n>` and returned, not re-executed, when the function replays.
 */
export class Context {
  private seq = 0;
  private history?: Promise<Map<string, ChildRecord>>;

  constructor(
    private readonly exec: Execution,
    /** The id of the promise this context's steps belong to. */
    readonly id: string,
    readonly attempt: number,
    history: Map<string, ChildRecord> | null,
  ) {
    if (history) this.history = Promise.resolve(history);
  }

  /** Fires when the execution is canceled, times out or loses its lease. */
  get signal(): AbortSignal {
    return this.exec.controller.signal;
  }

  /** Runs `fn(ctx, ...args)` as a checkpointed step; a trailing `options({ retry, id })` applies. */
  run<A extends unknown[], R>(fn: StepFunction<A, R>, ...args: [...A] | [...A, CallOptions]): Promise<Awaited<R>> {
    return this.beginRun(fn, ...args);
  }

  beginRun<A extends unknown[], R>(fn: StepFunction<A, R>, ...rest: [...A] | [...A, CallOptions]): Future<Awaited<R>> {
    const { args, opts } = splitArgs(rest);
    const id = opts.id ?? this.nextId();
    const name = fn.name || 'anonymous';
    return this.future(id, () => this.exec.local(() => this.step(id, name, fn as StepFunction, args, opts)));
  }

  /** Invokes registered function `name` on a worker of a group (default: this one) and waits for it durably. */
  rpc<R = unknown>(name: string, ...args: unknown[]): Promise<R> {
    return this.beginRpc<R>(name, ...args);
  }

  beginRpc<R = unknown>(name: string, ...rest: unknown[]): Future<R> {
    const { args, opts } = splitArgs(rest);
    const id = opts.id ?? this.nextId();
    return this.future(id, async () => {
      const ready = await this.exec.local(() => this.invokeChild(id, name, args, opts));
      return (ready ? ready.value : await this.exec.awaitRemote(id)) as R;
    });
  }

  /** A durable timer: after a crash the replay waits only for what remains. */
  async sleep(ms: number): Promise<void> {
    const id = this.nextId();
    const wakeAt = await this.exec.local(async () => {
      const stored = await this.stored(id, 'sleep', null);
      let deadline: Date;
      let remaining: number;
      if (stored) {
        if (stored.state !== 'pending') return undefined;
        deadline = new Date(stored.timeout_at);
        remaining = deadline.getTime() - Date.now();
      } else {
        const [row] = await this.exec.query((sql) => sql<{ timeout_at: Date; db_now: Date }[]>`
          select timeout_at, db_now from durably.create_promise(${id}, 'sleep', null, p_parent_id => ${this.id},
            p_timeout_ms => ${Math.max(0, Math.round(ms))})`);
        deadline = row.timeout_at;
        remaining = row.timeout_at.getTime() - row.db_now.getTime();
      }
      if (remaining <= 0) return undefined;
      if (remaining > this.exec.host.inProcessSleepMs) return deadline;
      await delay(remaining, undefined, { signal: this.signal });
      return undefined;
    });
    if (wakeAt) await this.exec.awaitRemote(id, wakeAt);
  }

  /** A durable promise settled from outside (TypeScript, SQL or CLI) by its id. */
  async promise<T = unknown>(opts: { id?: string; timeout?: number } = {}): Promise<ExternalPromise<T>> {
    const id = opts.id ?? this.nextId();
    const record = await this.exec.local(async () => {
      const stored = await this.stored(id, 'external', null);
      if (stored) return stored;
      const timeoutAt = this.childTimeout(opts.timeout);
      const [row] = await this.exec.query((sql) => sql<ChildRecord[]>`
        select id, kind, func, state, value, timeout_at
          from durably.create_promise(${id}, 'external', ${timeoutAt}, p_parent_id => ${this.id})`);
      return row;
    });
    return {
      id,
      result: async () => (record.state !== 'pending' ? settledValue<T>(record) : (await this.exec.awaitRemote(id)) as T),
    };
  }

  /** The time, recorded on first run and the same on every replay. */
  now(): Promise<number> {
    return this.recorded('@now', () => Date.now());
  }

  /** A random number in [0, 1), recorded on first run and the same on every replay. */
  random(): Promise<number> {
    return this.recorded('@random', () => Math.random());
  }

  private nextId(): string {
    return `${this.id}.${this.seq++}`;
  }

  private future<T>(id: string, op: () => Promise<T>): Future<T> {
    const p = op() as Future<T>;
    // A future the caller never awaits must not become an unhandled rejection.
    p.catch(() => {});
    Object.defineProperty(p, 'id', { value: id });
    return p;
  }

  private recorded(name: string, make: () => number): Promise<number> {
    const id = this.nextId();
    return this.exec.local(async () => {
      const stored = await this.stored(id, 'step', name);
      if (stored) return stored.value as number;
      return (await this.checkpoint(id, name, 'resolved', make())) as number;
    });
  }

  private async step(id: string, name: string, fn: StepFunction, args: unknown[], opts: CallOptions): Promise<any> {
    const stored = await this.stored(id, 'step', name);
    if (stored) return settledValue(stored);
    const policy: RetryPolicy = opts.retry ?? DEFAULT_RETRY;
    for (let attempt = 1; ; attempt++) {
      this.exec.throwIfAborted();
      const child = new Context(this.exec, id, attempt, this.exec.history ? null : new Map());
      let outcome: { value: unknown } | { error: unknown };
      try {
        outcome = { value: await fn(child, ...args) };
      } catch (err) {
        if (this.signal.aborted || err instanceof NonDeterminismError) throw err;
        outcome = { error: err };
      }
      // Only the step's own errors are retried here; a failure to store the
      // outcome fails the execution attempt and the replay runs the step again.
      if ('value' in outcome) return this.checkpoint(id, name, 'resolved', outcome.value);
      const wait = retryDelay(policy, attempt);
      if (wait === null) return this.checkpoint(id, name, 'rejected', toErrorValue(outcome.error, attempt));
      await delay(wait, undefined, { signal: this.signal });
    }
  }

  /** Stores a step's outcome; a value stored first by another run wins. */
  private async checkpoint(id: string, name: string, state: 'resolved' | 'rejected', value: unknown): Promise<unknown> {
    const json = toJson(value ?? null, `the result of step ${name}`);
    const [row] = await this.exec.query((sql) => sql<ChildRecord[]>`
      select id, kind, func, state, value, timeout_at
        from durably.create_promise(${id}, 'step', ${this.exec.timeoutAt}, ${state}, ${json}::text::jsonb, ${this.id}, ${name})`);
    return settledValue(row);
  }

  private async invokeChild(id: string, name: string, args: unknown[], opts: CallOptions) {
    const stored = await this.stored(id, 'invoke', name);
    if (stored) return stored.state === 'pending' ? undefined : { value: settledValue(stored) };
    const group = opts.target ? parseTarget(opts.target) : this.exec.host.group;
    const stored_opts = {
      ...invokeOptions({ ...opts, timeout: undefined }),
      parent_id: this.id,
      root_id: this.exec.rootId,
      timeout_at: this.childTimeout(opts.timeout).toISOString(),
    };
    const [row] = await this.exec.query((sql) => sql<{ state: PromiseState; value: unknown }[]>`
      select state, value from durably.invoke(${id}, ${name}, ${toJson(args, `the args of ${name}`)}::text::jsonb,
        ${group}, ${JSON.stringify(stored_opts)}::text::jsonb)`);
    return row.state === 'pending' ? undefined : { value: settledValue({ id, ...row }) };
  }

  private childTimeout(ms?: number): Date {
    const parent = this.exec.timeoutAt.getTime();
    return new Date(ms === undefined ? parent : Math.min(parent, Date.now() + ms));
  }

  /** The stored child at `id`, checked against what this run asks for there. */
  private async stored(id: string, kind: ChildRecord['kind'], func: string | null): Promise<ChildRecord | undefined> {
    if (!this.exec.history) return undefined;
    this.history ??= this.loadHistory();
    const child = (await this.history).get(id);
    if (child && (child.kind !== kind || (func !== null && child.func !== func))) {
      const err = new NonDeterminismError(
        `non-deterministic replay of ${this.exec.promiseId}: at ${id} the stored history has ` +
        `${child.kind}${child.func ? ` ${child.func}` : ''}, but this run called ${kind}${func ? ` ${func}` : ''}`);
      this.exec.abort(err);
      throw err;
    }
    return child;
  }

  private async loadHistory(): Promise<Map<string, ChildRecord>> {
    const rows = await this.exec.query((sql) => sql<ChildRecord[]>`
      select id, kind, func, state, value, timeout_at from durably.promises where parent_id = ${this.id}`);
    return new Map(rows.map((r) => [r.id, r]));
  }
}
