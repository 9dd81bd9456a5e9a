import { callProcedure, connect, defaultUrl, type Sql } from './db.js';
import { DurablyError, InvalidArgumentError, toErrorValue } from './errors.js';
import { MAX_TAGS_BYTES, toJson } from './json.js';
import { migrate } from './migrate.js';
import { options, splitArgs, parseTarget, checkGroup, invokeOptions, type CallOptions, type Options } from './options.js';
import { DurableHandle, Settlements, settledValue, type PromiseRecord, type PromiseState } from './promises.js';
import { checkRetry, type RetryPolicy } from './retry.js';
import { Worker, type Registered } from './worker.js';
import { Schedules, ScheduleHandle, Ticker, type Recurrence } from './schedules.js';
import { Limits } from './limits.js';
import type { StepFunction } from './context.js';
import { toLogger, type Logger, type LogOption } from './log.js';
import { Metrics, renderMetrics, serveMetrics } from './metrics.js';
import { traceInvoke } from './tracing.js';
import type { Server } from 'node:http';

export interface DurablyConfig {
  /** Postgres URL; defaults to DATABASE_URL. */
  url?: string;
  /** The group this process's worker joins and `run` dispatches to (default `default`). */
  group?: string;
  /** Executions run at once by this process's worker (default 10). */
  concurrency?: number;
  /**
   * Tasks the worker holds at most, running or claimed ahead (at least
   * concurrency). Claiming ahead starts the next task without a round trip;
   * tasks held here wait for this worker (after a crash, until their lease
   * expires). Default: adaptive, from 2 × concurrency up to concurrency +
   * 200 (21 × concurrency below 10; 2 × concurrency above 200) while claims
   * come back full; the
   * tasks claimed ahead are at most about a second of the worker's work, so
   * few for long functions (see the README).
   */
  prefetch?: number;
  /** Lease on a claimed task; a crashed worker's work is re-run after it (default 30 s). */
  leaseMs?: number;
  /** Lease renewal interval (default leaseMs / 3). */
  heartbeatMs?: number;
  /** Fallback poll interval when no notification arrives (default 1 s). */
  pollMs?: number;
  /** Sleeps up to this long wait in process; longer ones suspend and free the slot (default 5 s). */
  inProcessSleepMs?: number;
  /** stop() waits this long for running executions before releasing them (default 10 s). */
  graceMs?: number;
  /** Connections in the pool (default concurrency + 2). */
  poolSize?: number;
  /**
   * Settled invocations (with their steps and children) are deleted this long
   * after they settled (default 7 days); null keeps them forever.
   */
  retentionMs?: number | null;
  /** Apply migrations on first use (default true). */
  migrate?: boolean;
  /**
   * Where log lines go: a structured logger (pino-like `{ debug, info, warn,
   * error }`, each taking fields and a message; lines about an execution carry
   * promise_id, function, group and attempt), or a function taking a line of
   * text (warnings and errors only). Default: warnings and errors on stderr.
   */
  log?: LogOption;
  /** Serve this process's metrics at http://127.0.0.1:<metricsPort>/metrics while started. */
  metricsPort?: number;
}

export interface RegisterOptions {
  retry?: RetryPolicy;
}

type AnyFunction = StepFunction;

/**
 * Client and worker in one: register functions and start() to run them;
 * run/rpc/beginRun/beginRpc to invoke; get/promises to inspect and settle.
 */
export class Durably {
  readonly group: string;
  readonly sql: Sql;
  private readonly functions = new Map<string, Registered>();
  private readonly settlements: Settlements;
  private readonly config: Required<Omit<DurablyConfig, 'url' | 'poolSize' | 'log' | 'metricsPort' | 'prefetch'>>
    & { log: Logger; prefetch: number | null };
  private readonly instruments = new Metrics();
  private readonly metricsPort?: number;
  private metricsServer?: Server;
  private worker?: Worker;
  private ticker?: Ticker;
  private migrated?: Promise<unknown>;
  /** Schedules: get, list, handle(id), delete, pause, resume, next. */
  readonly schedules: Schedules;
  /** Flow control limits by key: set, get, list, delete. */
  readonly limits: Limits;

  constructor(config: DurablyConfig = {}) {
    const url = config.url ?? defaultUrl();
    if (!url) throw new InvalidArgumentError('no database: pass { url } or set DATABASE_URL');
    const concurrency = config.concurrency ?? 10;
    if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 10_000) {
      throw new InvalidArgumentError(`invalid concurrency ${concurrency}: an integer from 1 to 10000`);
    }
    const prefetch = config.prefetch ?? null;
    if (prefetch !== null && (!Number.isInteger(prefetch) || prefetch < concurrency || prefetch > 100_000)) {
      throw new InvalidArgumentError(`invalid prefetch ${prefetch}: an integer from concurrency (${concurrency}) to 100000`);
    }
    const leaseMs = config.leaseMs ?? 30_000;
    this.config = {
      group: checkGroup(config.group ?? 'default'),
      concurrency,
      prefetch,
      leaseMs,
      heartbeatMs: config.heartbeatMs ?? Math.max(50, Math.floor(leaseMs / 3)),
      pollMs: config.pollMs ?? 1000,
      inProcessSleepMs: config.inProcessSleepMs ?? 5000,
      graceMs: config.graceMs ?? 10_000,
      retentionMs: config.retentionMs === undefined ? 7 * 86_400_000 : config.retentionMs,
      migrate: config.migrate ?? true,
      log: toLogger(config.log),
    };
    if (config.metricsPort !== undefined && (!Number.isInteger(config.metricsPort) || config.metricsPort < 0 || config.metricsPort > 65535)) {
      throw new InvalidArgumentError(`invalid metricsPort ${config.metricsPort}: a TCP port from 0 to 65535`);
    }
    this.metricsPort = config.metricsPort;
    this.group = this.config.group;
    this.sql = connect(url, { max: config.poolSize ?? concurrency + 2, name: `durably:${this.group}`, proofMs: 3 * this.config.pollMs });
    this.settlements = new Settlements(this.sql, this.config.pollMs);
    this.schedules = new Schedules(this.sql, () => this.ready(), this.group);
    this.limits = new Limits(this.sql, () => this.ready());
  }

  /** Marks the last argument of run/rpc/schedule calls as options. */
  options(opts: CallOptions): Options {
    return options(opts);
  }

  /** Registers a durable function under `name` (or its own name). */
  register(name: string, fn: AnyFunction, opts?: RegisterOptions): this;
  register(fn: AnyFunction, opts?: RegisterOptions): this;
  register(a: string | AnyFunction, b?: AnyFunction | RegisterOptions, c?: RegisterOptions): this {
    const [name, fn, opts] = typeof a === 'string' ? [a, b as AnyFunction, c] : [a.name, a, b as RegisterOptions | undefined];
    if (typeof fn !== 'function') throw new InvalidArgumentError(`register(${JSON.stringify(name)}): not a function`);
    if (!name || name.length > 255) throw new InvalidArgumentError('a function needs a name of 1 to 255 characters: register(name, fn)');
    const existing = this.functions.get(name);
    if (existing && existing.fn !== fn) {
      throw new DurablyError('ALREADY_REGISTERED', `a different function is already registered as ${JSON.stringify(name)}`);
    }
    if (this.worker) throw new DurablyError('ALREADY_STARTED', 'register functions before start()');
    this.functions.set(name, { name, fn, retry: opts?.retry && checkRetry(opts.retry) });
    return this;
  }

  /** Migrates if needed, joins the group, starts running its tasks and driving schedules. */
  async start(): Promise<void> {
    if (this.worker) return;
    await this.ready();
    const worker = new Worker(this.sql, this.functions, this.config, this.instruments);
    this.worker = worker;
    await worker.start();
    this.ticker = new Ticker(this.sql, this.config.pollMs, this.config.log);
    await this.ticker.start();
    if (this.metricsPort !== undefined) {
      this.metricsServer = await serveMetrics(this.metricsPort, () => this.metrics(),
        (err) => this.config.log.warn({}, `rendering metrics failed: ${err.message}`));
    }
  }

  /**
   * The Prometheus text exposition: what this process counted (invocations,
   * durations, retries, lease expirations) and the database's gauges (tasks,
   * oldest ready task, workers, schedule lag).
   */
  async metrics(): Promise<string> {
    await this.ready();
    return renderMetrics(this.sql, this.instruments);
  }

  /** Stops claiming, lets running work finish (up to graceMs), releases the rest, closes connections. */
  async stop(): Promise<void> {
    if (this.metricsServer) await new Promise((done) => this.metricsServer!.close(done));
    await this.ticker?.stop();
    await this.worker?.stop();
    await this.settlements.close();
    await this.sql.end({ timeout: 5 });
  }

  /** Invokes a function on this group and waits for its result. */
  async run<R = unknown>(id: string, fn: string | AnyFunction, ...rest: unknown[]): Promise<R> {
    return (await this.invokeHere<R>(id, fn, rest, true)).result();
  }

  /** Invokes a function on this group; returns a handle at once. */
  async beginRun<R = unknown>(id: string, fn: string | AnyFunction, ...rest: unknown[]): Promise<DurableHandle<R>> {
    return this.invokeHere<R>(id, fn, rest, false);
  }

  /** Invokes registered function `name` on a group (options target, default this group) and waits. */
  async rpc<R = unknown>(id: string, name: string, ...rest: unknown[]): Promise<R> {
    const { args, opts } = splitArgs(rest);
    return (await this.invoke<R>(id, name, args, opts, true)).result();
  }

  async beginRpc<R = unknown>(id: string, name: string, ...rest: unknown[]): Promise<DurableHandle<R>> {
    const { args, opts } = splitArgs(rest);
    return this.invoke<R>(id, name, args, opts, false);
  }

  /**
   * Creates a schedule: each tick invokes `func` with `args` on a group as a
   * durable promise. Re-creating the same definition is a no-op; another
   * definition under the same id fails unless `options({ replace: true })`.
   */
  async schedule(id: string, recurrence: Recurrence, func: string, ...rest: unknown[]): Promise<ScheduleHandle> {
    const { args, opts } = splitArgs(rest);
    return this.schedules.create(id, recurrence, func, args, opts);
  }

  /** Waits until promise `id` exists (a schedule's occurrence, say) and settles; returns its value. */
  async wait<R = unknown>(id: string, timeoutMs: number): Promise<R> {
    const deadline = Date.now() + timeoutMs;
    await this.ready();
    for (;;) {
      const [row] = await this.sql`select 1 from durably.promises where id = ${id}`.catch(() => []);
      if (row) break;
      if (Date.now() >= deadline) throw new DurablyError('TIMED_OUT', `promise ${JSON.stringify(id)} did not appear within ${timeoutMs} ms`);
      await new Promise((ok) => setTimeout(ok, Math.min(this.config.pollMs, 100)));
    }
    return settledValue<R>(await this.settlements.wait(id,
      { ms: Math.max(0, deadline - Date.now()), message: `promise ${JSON.stringify(id)} did not settle within ${timeoutMs} ms` }));
  }

  /** A handle for an existing promise. */
  async get<R = unknown>(id: string): Promise<DurableHandle<R>> {
    await this.ready();
    await this.settlements.get(id);
    return new DurableHandle<R>(id, this.settlements);
  }

  readonly promises = {
    get: async (id: string): Promise<PromiseRecord> => {
      await this.ready();
      return this.settlements.get(id);
    },
    /** Creates a promise settled from outside (dedup by id). */
    create: async (id: string, opts: { timeout?: number; tags?: Record<string, string> } = {}): Promise<PromiseRecord> => {
      const stored = invokeOptions(opts);
      await this.ready();
      await callProcedure(() => this.sql`select durably.create_promise(${id}, 'external', null,
        p_timeout_ms => ${(stored.timeout_ms as number | undefined) ?? 86_400_000},
        p_tags => ${JSON.stringify(stored.tags ?? {})}::text::jsonb)`);
      return this.settlements.get(id);
    },
    // async: bad input rejects the returned promise like every other call, rather than throwing synchronously
    resolve: async (id: string, value?: unknown) => this.settle(id, 'resolve', toJson(value ?? null, 'the value')),
    reject: async (id: string, error?: unknown) => this.settle(id, 'reject', JSON.stringify(toErrorValue(error ?? new Error('rejected')))),
    cancel: async (id: string, reason = 'canceled'): Promise<PromiseRecord> => {
      if (Buffer.byteLength(reason) > MAX_TAGS_BYTES) {
        throw new InvalidArgumentError(`the reason is ${Buffer.byteLength(reason)} bytes; the limit is ${MAX_TAGS_BYTES}`);
      }
      await this.ready();
      const [row] = await callProcedure(() => this.sql<PromiseRecord[]>`select * from durably.cancel(${id}, ${reason})`);
      return row;
    },
    /** Promises whose id matches a LIKE pattern (`*` as wildcard), newest first. */
    search: async (pattern = '*', opts: { state?: PromiseState; limit?: number } = {}): Promise<PromiseRecord[]> => {
      await this.ready();
      const like = pattern.replace(/[\\%_]/g, (c) => `\\${c}`).replaceAll('*', '%');
      return this.sql<PromiseRecord[]>`
        select * from durably.promises
         where id like ${like} and (${opts.state ?? null}::text is null or state = ${opts.state ?? null})
         order by created_at desc limit ${opts.limit ?? 100}`;
    },
  };

  /** The worker's id (after start()). */
  get workerId(): string | undefined {
    return this.worker?.id;
  }

  private async settle(id: string, verb: 'resolve' | 'reject', json: string): Promise<PromiseRecord> {
    await this.ready();
    const [row] = await callProcedure(() => verb === 'resolve'
      ? this.sql<PromiseRecord[]>`select * from durably.resolve(${id}, ${json}::text::jsonb)`
      : this.sql<PromiseRecord[]>`select * from durably.reject(${id}, ${json}::text::jsonb)`);
    return row;
  }

  private invokeHere<R>(id: string, fn: string | AnyFunction, rest: unknown[], awaited: boolean): Promise<DurableHandle<R>> {
    const name = typeof fn === 'string' ? fn : this.nameOf(fn);
    const { args, opts } = splitArgs(rest);
    return this.invoke<R>(id, name, args, { ...opts, target: this.group }, awaited);
  }

  /**
   * `awaited`: the caller waits for the result at once, so the invocation is
   * made marked as waited for, sparing the wait the write that marks it.
   */
  private async invoke<R>(id: string, name: string, args: unknown[], opts: CallOptions, awaited: boolean): Promise<DurableHandle<R>> {
    if (typeof id !== 'string') throw new InvalidArgumentError('the id must be a string');
    if (typeof name !== 'string' || name === '') throw new InvalidArgumentError('the function name must be a non-empty string');
    const group = parseTarget(opts.target ?? this.group);
    const argsJson = toJson(args, `the args of ${name}`);
    const stored = invokeOptions(opts);
    const sql = opts.tx ?? this.sql;
    await this.ready();
    await traceInvoke(name, { 'durably.promise_id': id, 'durably.function': name, 'durably.group': group }, (trace) =>
      callProcedure(() => sql`select 1 from durably.invoke(${id}, ${name}, ${argsJson}::text::jsonb, ${group}, ${JSON.stringify({ ...stored, trace, awaited })}::text::jsonb)`,
        !opts.tx)); // a caller's transaction cannot be retried from here
    return new DurableHandle<R>(id, this.settlements);
  }

  private nameOf(fn: AnyFunction): string {
    for (const r of this.functions.values()) if (r.fn === fn) return r.name;
    throw new InvalidArgumentError(`function ${fn.name || '(anonymous)'} is not registered: register it first`);
  }

  private ready(): Promise<unknown> {
    if (!this.config.migrate) return Promise.resolve();
    this.migrated ??= migrate(this.sql).catch((e) => { this.migrated = undefined; throw e; });
    return this.migrated;
  }

}
