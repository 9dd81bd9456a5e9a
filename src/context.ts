import { setTimeout as delay } from 'node:timers/promises';
import { NonDeterminismError, toErrorValue } from './errors.js';
import { toJson } from './json.js';
import { splitArgs, parseTarget, invokeOptions, type CallOptions } from './options.js';
import { DEFAULT_RETRY, retryDelay, type RetryPolicy } from './retry.js';
import { settledValue, type PromiseState } from './promises.js';
import type { ChildRecord, Execution } from './execution.js';
import { Replay } from './replay.js';
import { startStep, traceInvoke, withContext, type TraceContext } from './tracing.js';

export type StepFunction<A extends unknown[] = any[], R = any> = (ctx: Context, ...args: A) => R | Promise<R>;

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
  private readonly replay: Replay;

  constructor(
    private readonly exec: Execution,
    /** The id of the promise this context's steps belong to. */
    readonly id: string,
    readonly attempt: number,
    history: Map<string, ChildRecord> | null,
    /** The span this context's operations are children of (the execution's, or a step's); none when not traced. */
    private readonly trace: TraceContext | undefined = exec.trace?.context,
  ) {
    this.replay = new Replay(exec, id, history);
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
    const id = opts.id ?? this.replay.nextId();
    const name = fn.name || 'anonymous';
    return this.future(id, async () => {
      // A replay passes the stored steps without the bookkeeping of local work:
      // a resume replays every step before its own.
      this.exec.throwIfAborted();
      const replayed = this.replay.storedNow(id, 'step', name);
      if (!replayed) return this.exec.local(() => this.step(id, name, fn as StepFunction, args, opts));
      return settledValue(replayed);
    });
  }

  /** Invokes registered function `name` on a worker of a group (default: this one) and waits for it durably. */
  rpc<R = unknown>(name: string, ...args: unknown[]): Promise<R> {
    return this.beginRpc<R>(name, ...args);
  }

  beginRpc<R = unknown>(name: string, ...rest: unknown[]): Future<R> {
    const { args, opts } = splitArgs(rest);
    const id = opts.id ?? this.replay.nextId();
    return this.future(id, async () => {
      const ready = await this.exec.local(() => this.invokeChild(id, name, args, opts));
      return (ready ? ready.value : await this.exec.awaitRemote(id)) as R;
    });
  }

  /** A durable timer: after a crash the replay waits only for what remains. */
  async sleep(ms: number): Promise<void> {
    const id = this.replay.nextId();
    const wakeAt = await this.exec.local(async () => {
      const stored = await this.replay.stored(id, 'sleep', null);
      let deadline: Date;
      let remaining: number;
      if (stored) {
        if (stored.state !== 'pending') return undefined;
        deadline = new Date(stored.timeout_at);
        remaining = deadline.getTime() - Date.now();
      } else {
        const [row] = await this.exec.query((sql) => sql<{ timeout_at: Date; db_now: Date }[]>`
          select timeout_at, db_now from durably.create_child_promise(${id}, 'sleep', ${this.id}, ${this.exec.rootId}, null,
            ${Math.max(0, Math.round(ms))})`);
        deadline = row.timeout_at;
        remaining = row.timeout_at.getTime() - row.db_now.getTime();
      }
      if (remaining <= 0) return undefined;
      const suspends = remaining > this.exec.host.inProcessSleepMs;
      const wait = this.exec.trace?.wait('durably.sleep', this.trace,
        { 'durably.promise_id': id, 'durably.sleep_ms': remaining, 'durably.suspended': suspends });
      if (suspends) {
        wait?.end(deadline);
        return deadline;
      }
      await delay(remaining, undefined, { signal: this.signal }).finally(() => wait?.end());
      return undefined;
    });
    if (wakeAt) await this.exec.awaitRemote(id, wakeAt);
  }

  /** A durable promise settled from outside (TypeScript, SQL or CLI) by its id. */
  async promise<T = unknown>(opts: { id?: string; timeout?: number } = {}): Promise<ExternalPromise<T>> {
    const id = opts.id ?? this.replay.nextId();
    const record = await this.exec.local(async () => {
      const stored = await this.replay.stored(id, 'external', null);
      if (stored) return stored;
      const timeoutAt = this.childTimeout(opts.timeout);
      const [row] = await this.exec.query((sql) => sql<ChildRecord[]>`
        select id, kind, func, state, value, timeout_at
          from durably.create_child_promise(${id}, 'external', ${this.id}, ${this.exec.rootId}, ${timeoutAt})`);
      return row;
    });
    return {
      id,
      result: async () => (record.state !== 'pending' ? settledValue<T>(record) : (await this.awaitExternal(id)) as T),
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

  /** Waits for an external promise, under a `durably.promise` span when traced. */
  private async awaitExternal(id: string): Promise<unknown> {
    const wait = this.exec.trace?.wait('durably.promise', this.trace, { 'durably.promise_id': id });
    try {
      return await this.exec.awaitRemote(id);
    } finally {
      wait?.end();
    }
  }

  private future<T>(id: string, op: () => Promise<T>): Future<T> {
    const p = op() as Future<T>;
    // A future the caller never awaits must not become an unhandled rejection.
    p.catch(() => {});
    Object.defineProperty(p, 'id', { value: id });
    return p;
  }

  private recorded(name: string, make: () => number): Promise<number> {
    const id = this.replay.nextId();
    return this.exec.local(async () => {
      const stored = await this.replay.stored(id, 'step', name);
      if (stored) return stored.value as number;
      return (await this.checkpoint(id, name, 'resolved', make())) as number;
    });
  }

  private async step(id: string, name: string, fn: StepFunction, args: unknown[], opts: CallOptions): Promise<any> {
    const stored = await this.replay.stored(id, 'step', name);
    if (stored) return settledValue(stored);
    const span = startStep(this.trace, id, name);
    const began = performance.now();
    try {
      return await this.attempts(id, name, fn, args, opts, span?.context);
    } catch (err) {
      span?.fail(err);
      throw err;
    } finally {
      span?.end();
      this.exec.host.metrics.stepEnded(name, (performance.now() - began) / 1000);
    }
  }

  /** Runs a step until it succeeds or its retry policy gives up, and stores the outcome. */
  private async attempts(id: string, name: string, fn: StepFunction, args: unknown[], opts: CallOptions,
    trace: TraceContext | undefined): Promise<any> {
    const policy: RetryPolicy = opts.retry ?? DEFAULT_RETRY;
    for (let attempt = 1; ; attempt++) {
      this.exec.checkLease();
      const child = new Context(this.exec, id, attempt, this.exec.history ? null : new Map(), trace);
      let outcome: { value: unknown } | { error: unknown };
      try {
        outcome = { value: await withContext(trace, () => fn(child, ...args)) };
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

  /**
   * Stores a step's outcome, in one commit with the steps of other executions
   * finishing now, and returns it once committed; a value stored first by
   * another run wins.
   */
  private async checkpoint(id: string, name: string, state: 'resolved' | 'rejected', value: unknown): Promise<unknown> {
    const json = toJson(value ?? null, `the result of step ${name}`);
    const row = await this.exec.host.checkpoints.write({
      id, parentId: this.id, rootId: this.exec.rootId, func: name, state, value: json, timeoutAt: this.exec.timeoutAt,
    });
    return settledValue(row);
  }

  private async invokeChild(id: string, name: string, args: unknown[], opts: CallOptions) {
    const stored = await this.replay.stored(id, 'invoke', name);
    if (stored) return stored.state === 'pending' ? undefined : { value: settledValue(stored) };
    const group = opts.target ? parseTarget(opts.target) : this.exec.host.group;
    const stored_opts = {
      ...invokeOptions({ ...opts, timeout: undefined }),
      parent_id: this.id,
      root_id: this.exec.rootId,
      timeout_at: this.childTimeout(opts.timeout).toISOString(),
    };
    const argsJson = toJson(args, `the args of ${name}`);
    const [row] = await traceInvoke(name, { 'durably.promise_id': id, 'durably.function': name, 'durably.group': group },
      (trace) => this.exec.query((sql) => sql<{ state: PromiseState; value: unknown }[]>`
        select state, value from durably.create_invocations(array[${id}], array[${name}], array[${argsJson}::text::jsonb],
          ${group}, ${JSON.stringify({ ...stored_opts, trace })}::text::jsonb)`), this.trace);
    return row.state === 'pending' ? undefined : { value: settledValue({ id, ...row }) };
  }

  private childTimeout(ms?: number): Date {
    const parent = this.exec.timeoutAt.getTime();
    return new Date(ms === undefined ? parent : Math.min(parent, Date.now() + ms));
  }
}
