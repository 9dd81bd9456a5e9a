import { CronExpressionParser } from 'cron-parser';
import { callProcedure, type Sql } from './db.js';
import { InvalidArgumentError, NotFoundError } from './errors.js';
import { toJson } from './json.js';
import { parseTarget, type CallOptions } from './options.js';
import type { Logger } from './log.js';
import { tick } from './tracing.js';

export type OverlapPolicy = 'always_start' | 'skip_if_running' | 'cancel_and_restart' | 'buffer_one';
export type CatchupPolicy = 'all' | 'latest' | 'none';

/** A cron expression (5 or 6 fields, or a macro such as `@hourly`), or a fixed delay. */
export type Recurrence = string | { every: number };

/** A schedule as stored (the columns of durably.schedules). */
export interface ScheduleRecord {
  id: string;
  cron: string | null;
  every_ms: number | null;
  timezone: string;
  func: string;
  args: unknown[];
  group_name: string;
  id_template: string;
  timeout_ms: number;
  overlap: OverlapPolicy;
  catchup: CatchupPolicy;
  catchup_window_ms: number | null;
  paused: boolean;
  next_run_at: Date | null;
  last_run_at: Date | null;
  last_promise_id: string | null;
  occurrence: number;
  created_at: Date;
  updated_at: Date;
  /** Why the last attempt to tick failed (null once a tick succeeds): SQLSTATE, message, time, failures in a row. */
  last_error: { code: string; message: string; at: string; failures: number } | null;
  /** When a schedule whose tick failed is tried again (its due ticks are kept). */
  retry_at: Date | null;
}

/** What `durably.schedule(...)` returns. */
export class ScheduleHandle {
  constructor(readonly id: string, private readonly schedules: Schedules) {}
  delete(): Promise<boolean> { return this.schedules.delete(this.id); }
  pause(): Promise<ScheduleRecord> { return this.schedules.pause(this.id); }
  resume(): Promise<ScheduleRecord> { return this.schedules.resume(this.id); }
  /** The next `n` run times. */
  next(n = 5): Promise<Date[]> { return this.schedules.next(this.id, n); }
  get(): Promise<ScheduleRecord> { return this.schedules.get(this.id); }
}

/** Creating, reading and changing schedules; each call is one procedure in schema durably. */
export class Schedules {
  constructor(private readonly sql: Sql, private readonly ready: () => Promise<unknown>, private readonly defaultGroup: string) {}

  async create(id: string, recurrence: Recurrence, func: string, args: unknown[], opts: CallOptions): Promise<ScheduleHandle> {
    const stored = scheduleOptions(recurrence, args, opts, this.defaultGroup);
    const cron = typeof recurrence === 'string' ? recurrence : null;
    if (typeof func !== 'string' || func === '') throw new InvalidArgumentError('the function name must be a non-empty string');
    await this.ready();
    // In a caller's transaction (options tx) the schedule exists iff it commits; such a call is not retried.
    const sql = opts.tx ?? this.sql;
    const create = () => sql`
      select id from durably.create_schedule(${id}, ${cron}, ${func}, ${JSON.stringify(stored)}::text::jsonb, ${opts.replace ?? false})`;
    await callProcedure(create, !opts.tx);
    return new ScheduleHandle(id, this);
  }

  async get(id: string): Promise<ScheduleRecord> {
    await this.ready();
    const [row] = await this.sql<ScheduleRecord[]>`select * from durably.schedules where id = ${id}`;
    if (!row) throw new NotFoundError(`schedule ${JSON.stringify(id)} not found`);
    return row;
  }

  async list(): Promise<ScheduleRecord[]> {
    await this.ready();
    return this.sql<ScheduleRecord[]>`select * from durably.schedules order by id`;
  }

  handle(id: string): ScheduleHandle {
    return new ScheduleHandle(id, this);
  }

  async delete(id: string): Promise<boolean> {
    await this.ready();
    const [{ deleted }] = await callProcedure(() => this.sql`select durably.delete_schedule(${id}) as deleted`);
    return deleted as boolean;
  }

  async pause(id: string): Promise<ScheduleRecord> {
    await this.ready();
    const [row] = await callProcedure(() => this.sql<ScheduleRecord[]>`select * from durably.pause_schedule(${id})`);
    return row;
  }

  async resume(id: string): Promise<ScheduleRecord> {
    await this.ready();
    const [row] = await callProcedure(() => this.sql<ScheduleRecord[]>`select * from durably.resume_schedule(${id})`);
    return row;
  }

  async next(id: string, n: number): Promise<Date[]> {
    if (!Number.isInteger(n) || n < 1 || n > 1000) throw new InvalidArgumentError(`invalid count ${n}: 1 to 1000`);
    await this.ready();
    const rows = await callProcedure(() => this.sql<{ t: Date }[]>`select t from durably.schedule_preview(${id}, ${n}) as t`);
    return rows.map((r) => r.t);
  }

}

/** Validates a schedule before anything is written (the SQL checks again). */
function scheduleOptions(recurrence: Recurrence, args: unknown[], opts: CallOptions, defaultGroup: string): Record<string, unknown> {
  const timezone = opts.timezone ?? 'UTC';
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: timezone });
  } catch {
    throw new InvalidArgumentError(`unknown timezone ${JSON.stringify(timezone)}`);
  }
  const out: Record<string, unknown> = { timezone, args: JSON.parse(toJson(args, 'the schedule args')) };
  if (typeof recurrence === 'string') {
    try {
      CronExpressionParser.parse(recurrence, { tz: timezone });
    } catch (err) {
      throw new InvalidArgumentError(`invalid cron expression ${JSON.stringify(recurrence)}: ${(err as Error).message}`);
    }
  } else if (!recurrence || !Number.isFinite(recurrence.every) || recurrence.every < 1) {
    throw new InvalidArgumentError('a recurrence is a cron expression or { every: milliseconds >= 1 }');
  } else {
    out.every_ms = Math.round(recurrence.every);
  }
  out.group = parseTarget(opts.target ?? opts.group ?? defaultGroup);
  if (opts.idTemplate !== undefined) out.id_template = opts.idTemplate;
  if (opts.timeout !== undefined) {
    if (!Number.isFinite(opts.timeout) || opts.timeout <= 0) throw new InvalidArgumentError(`invalid timeout ${opts.timeout}: milliseconds > 0`);
    out.timeout_ms = Math.round(opts.timeout);
  }
  if (opts.overlap !== undefined) out.overlap = opts.overlap;
  if (opts.catchup !== undefined) out.catchup = opts.catchup;
  if (opts.catchupWindow !== undefined) out.catchup_window_ms = Math.round(opts.catchupWindow);
  return out;
}

/**
 * Drives durably.tick(): right away, at the earliest next run it reports,
 * whenever a schedule changes (NOTIFY durably_schedules), and at least every
 * poll interval as the fallback.
 */
export class Ticker {
  private timer?: NodeJS.Timeout;
  private running = false;
  private again = false;
  private stopped = false;
  private listener?: { unlisten(): Promise<void> };

  constructor(private readonly sql: Sql, private readonly pollMs: number, private readonly log: Logger) {}

  async start(): Promise<void> {
    this.listener = await this.sql.listen('durably_schedules', () => this.kick(), () => this.kick());
    this.kick();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.listener?.unlisten().catch(() => {});
  }

  private kick(): void {
    if (this.stopped) return;
    if (this.running) { this.again = true; return; }
    this.running = true;
    clearTimeout(this.timer);
    void tick(this.sql)
      .then(([row]) => this.sleepUntil(row?.next_run_at ?? null), (err) => {
        this.log.warn({}, `tick failed, trying again at the next poll: ${(err as Error).message}`);
        this.sleepUntil(null);
      })
      .finally(() => {
        this.running = false;
        if (this.again) { this.again = false; this.kick(); }
      });
  }

  private sleepUntil(next: Date | null): void {
    if (this.stopped) return;
    // A few ms at least: this clock may run ahead of the database's.
    const wait = next ? Math.max(5, Math.min(next.getTime() - Date.now(), this.pollMs)) : this.pollMs;
    this.timer = setTimeout(() => this.kick(), wait);
    this.timer.unref();
  }
}
