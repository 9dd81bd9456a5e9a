import { callProcedure, type Sql } from './db.js';
import { InvalidArgumentError } from './errors.js';
import { checkLimitKey } from './options.js';

/**
 * The limits of one key (sql/limits.sql). A key is an invocation's
 * `concurrencyKey`, `function:<name>` or `group:<name>`.
 */
export interface LimitSettings {
  /** Executions running at once (suspended ones hold no slot); 0 pauses the key; null: no limit. */
  concurrency?: number | null;
  /** At most `limit` starts in any interval of `periodMs`; null: no limit. */
  rate?: { limit: number; periodMs: number } | null;
}

/** A limit as durably.limit_list shows it, with what it counts now. */
export interface LimitRecord {
  key: string;
  concurrency: number | null;
  rate: { limit: number; periodMs: number } | null;
  /** Executions holding a slot (claimed under a lease that has not expired). */
  running: number;
  /** Ready tasks waiting for a slot of this key. */
  parked: number;
  /** Starts in the current rate window. */
  startedInWindow: number;
  updatedAt: Date;
}

const MAX_INT = 2_147_483_647;

function checkCount(value: unknown, what: string, min: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > MAX_INT) {
    throw new InvalidArgumentError(`invalid ${what} ${JSON.stringify(value)}: an integer from ${min} to ${MAX_INT}`);
  }
  return value;
}

/** Validates settings before anything is written; the SQL checks them again. */
export function checkLimit(key: unknown, settings: LimitSettings) {
  checkLimitKey(key);
  if (typeof settings !== 'object' || settings === null) throw new InvalidArgumentError('limit settings must be an object');
  const concurrency = settings.concurrency == null ? null : checkCount(settings.concurrency, 'concurrency', 0);
  const rate = settings.rate ?? null;
  if (rate !== null && (typeof rate !== 'object' || Array.isArray(rate))) {
    throw new InvalidArgumentError('rate must be { limit, periodMs } or null');
  }
  return {
    concurrency,
    rateLimit: rate === null ? null : checkCount(rate.limit, 'rate limit', 0),
    ratePeriodMs: rate === null ? null : checkCount(rate.periodMs, 'rate period (ms)', 1),
  };
}

type Row = { key: string; concurrency: number | null; rate_limit: number | null; rate_period_ms: number | null;
  running: string | number; parked: string | number; started_in_window: string | number; updated_at: Date };

function toRecord(r: Row): LimitRecord {
  return {
    key: r.key,
    concurrency: r.concurrency,
    rate: r.rate_limit === null || r.rate_period_ms === null ? null : { limit: r.rate_limit, periodMs: r.rate_period_ms },
    running: Number(r.running),
    parked: Number(r.parked),
    startedInWindow: Number(r.started_in_window),
    updatedAt: r.updated_at,
  };
}

/** Flow control limits, enforced by the claims of every worker: `durably.limits`. */
export class Limits {
  constructor(private readonly sql: Sql, private readonly ready: () => Promise<unknown>) {}

  /** Sets the limits of `key` (replacing what it had); in force from the next claim. */
  async set(key: string, settings: LimitSettings): Promise<LimitRecord> {
    const { concurrency, rateLimit, ratePeriodMs } = checkLimit(key, settings);
    await this.ready();
    await callProcedure(() => this.sql`select durably.set_limit(${key}, ${concurrency}::integer, ${rateLimit}::integer, ${ratePeriodMs}::integer)`);
    return (await this.get(key))!;
  }

  async get(key: string): Promise<LimitRecord | undefined> {
    checkLimitKey(key);
    await this.ready();
    const [row] = await this.sql<Row[]>`select * from durably.limit_list where key = ${key}`;
    return row && toRecord(row);
  }

  async list(): Promise<LimitRecord[]> {
    await this.ready();
    return (await this.sql<Row[]>`select * from durably.limit_list order by key`).map(toRecord);
  }

  /** Removes the limits of `key`; the tasks waiting on it become ready. False when it had none. */
  async delete(key: string): Promise<boolean> {
    checkLimitKey(key);
    await this.ready();
    const [row] = await callProcedure(() => this.sql`select durably.delete_limit(${key}) as deleted`);
    return row.deleted as boolean;
  }
}
