/**
 * Kysely support: table types for durably's read-only views, and enqueueing
 * inside a Kysely transaction (the invocation exists if and only if that
 * transaction commits).
 *
 *   import { Kysely } from 'kysely';
 *   import { PostgresJSDialect } from 'kysely-postgres-js';
 *   const db = new Kysely<AppDatabase & DurablyDatabase>({ dialect: new PostgresJSDialect({ postgres: postgres(url) }) });
 *   await db.transaction().execute(async (trx) => {
 *     const order = await trx.insertInto('orders').values({ total: 10 }).returning('id').executeTakeFirstOrThrow();
 *     await invokeInKysely(trx, `order-${order.id}`, 'ship_order', [order.id], 'workers');
 *   });
 *   await db.selectFrom('durably.promise_list').selectAll().where('state', '=', 'pending').execute();
 */
import { sql, type Kysely } from 'kysely';
import { callProcedure } from './db.js';
import { InvalidArgumentError, type ErrorValue } from './errors.js';
import { toJson } from './json.js';
import { invokeOptions, parseTarget, type CallOptions } from './options.js';
import type { PromiseRecord, PromiseState } from './promises.js';
import type { ScheduleRecord } from './schedules.js';

/** A row of durably.promise_list: a promise and, while it is pending, its task. */
export interface PromiseListRow extends PromiseRecord {
  /** The task's columns; null once the promise settled (or for steps, timers and external promises). */
  group_name: string | null;
  task_state: 'ready' | 'claimed' | 'suspended' | null;
  attempt: number | null;
  available_at: Date | null;
  worker_id: string | null;
  last_error: ErrorValue | null;
}

/** A row of durably.task_list: an invocation waiting to run, running or suspended. */
export interface TaskListRow {
  promise_id: string;
  func: string | null;
  group_name: string;
  state: 'ready' | 'claimed' | 'suspended';
  /** ready: since when it may run (due, or woken); claimed: its lease expiry; suspended: its timer (or infinity). */
  available_at: Date;
  attempt: number;
  worker_id: string | null;
  claimed_at: Date | null;
  last_error: ErrorValue | null;
  created_at: Date;
  root_id: string;
  timeout_at: Date;
  concurrency_key: string | null;
  priority: number;
  /** The limit key whose full concurrency holds this ready task back. */
  parked_on: string | null;
}

/** A row of durably.limit_list: a flow control limit and what it counts now (counts come back as strings). */
export interface LimitListRow {
  key: string;
  concurrency: number | null;
  rate_limit: number | null;
  rate_period_ms: number | null;
  updated_at: Date;
  running: string;
  parked: string;
  started_in_window: string;
}

/** A row of durably.schedule_list: a schedule and the state of its latest tick. */
export interface ScheduleListRow extends ScheduleRecord {
  last_state: PromiseState | null;
}

/** A row of durably.worker_status. */
export interface WorkerStatusRow {
  id: string;
  group_name: string;
  host: string;
  pid: number;
  functions: string[];
  lease_ms: number;
  started_at: Date;
  heartbeat_at: Date;
  stopped_at: Date | null;
  status: 'active' | 'stale' | 'stopped';
}

/**
 * durably's views as Kysely tables (read-only: write through the functions).
 * Merge it with the application's own: `Kysely<AppDatabase & DurablyDatabase>`.
 * bigint columns (every_ms, timeout_ms, occurrence) come back as strings
 * unless the postgres.js pool parses int8.
 */
export interface DurablyDatabase {
  'durably.promise_list': PromiseListRow;
  'durably.task_list': TaskListRow;
  'durably.schedule_list': ScheduleListRow;
  'durably.worker_status': WorkerStatusRow;
  'durably.limit_list': LimitListRow;
}

/** What durably.invoke returns: the promise, and whether this call created it. */
export interface InvokeResult {
  id: string;
  state: PromiseState;
  value: unknown;
  timeout_at: Date;
  /** false: the id existed (dedup), nothing new was started. */
  created: boolean;
}

/**
 * Invokes `func(...args)` on a group (`workers` or `poll://any@workers`) with
 * `select * from durably.invoke(...)` on `db`: a Kysely transaction (or
 * connection). In a transaction, the invocation exists if and only if it
 * commits, and workers are woken at commit. Options as for beginRpc
 * (timeout, tags, retry, delay). Bad input throws InvalidArgumentError
 * before anything is sent.
 */
export async function invokeInKysely(
  db: Kysely<any>, id: string, func: string, args: unknown[], target: string,
  opts: Pick<CallOptions, 'timeout' | 'tags' | 'retry' | 'delay'> = {},
): Promise<InvokeResult> {
  if (typeof id !== 'string') throw new InvalidArgumentError('the id must be a string');
  if (typeof func !== 'string' || func === '') throw new InvalidArgumentError('the function name must be a non-empty string');
  if (!Array.isArray(args)) throw new InvalidArgumentError('args must be an array');
  const group = parseTarget(target);
  const argsJson = toJson(args, `the args of ${func}`);
  const optsJson = JSON.stringify(invokeOptions(opts));
  // not retried: db may be the caller's transaction
  const { rows } = await callProcedure(() => sql<InvokeResult>`
    select * from durably.invoke(${id}, ${func}, ${argsJson}::text::jsonb, ${group}, ${optsJson}::text::jsonb)`.execute(db), false);
  return rows[0];
}
