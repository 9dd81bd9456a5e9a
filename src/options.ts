import { InvalidArgumentError } from './errors.js';
import { checkRetry, type RetryPolicy } from './retry.js';
import { MAX_TAGS_BYTES, toJson } from './json.js';
import type { TransactionSql } from './db.js';

/** Per-call options; pass `durably.options({...})` as the last argument. */
export interface CallOptions {
  /** Group to dispatch to: a group name or `poll://any@<group>`. */
  target?: string;
  /** Milliseconds until the promise times out (default 24 h). */
  timeout?: number;
  tags?: Record<string, string>;
  retry?: RetryPolicy;
  /** Start no earlier than this many milliseconds from now. */
  delay?: number;
  /** Flow control: the key whose limits (`durably.limits.set`) apply, e.g. `customer:42`. */
  concurrencyKey?: string;
  /** Higher runs first, within what the limits allow (an integer, default 0). */
  priority?: number;
  /**
   * Enqueue inside the caller's transaction (a postgres.js `sql.begin`
   * transaction): the invocation exists if and only if it commits.
   */
  tx?: TransactionSql;
  /** For steps: the id to store the step under instead of the position-derived one. */
  id?: string;
  // Schedules (durably.schedule):
  /** IANA timezone the cron expression is read in (default UTC). */
  timezone?: string;
  overlap?: 'always_start' | 'skip_if_running' | 'cancel_and_restart' | 'buffer_one';
  catchup?: 'all' | 'latest' | 'none';
  /** Missed ticks older than this many milliseconds are skipped. */
  catchupWindow?: number;
  /** Promise id of each tick: tokens {schedule}, {timestamp}, {occurrence} (default `{schedule}.{timestamp}`). */
  idTemplate?: string;
  /** Group the ticks run on (same as target). */
  group?: string;
  /** Replace an existing schedule with another definition instead of failing. */
  replace?: boolean;
}

const OPTIONS = Symbol('durably.options');
export type Options = CallOptions & { readonly [OPTIONS]: true };

export function options(opts: CallOptions): Options {
  return { ...opts, [OPTIONS]: true };
}

/** Splits `(...args, options?)` into args and options. */
export function splitArgs(rest: unknown[]): { args: unknown[]; opts: CallOptions } {
  const last = rest.at(-1);
  if (last && typeof last === 'object' && OPTIONS in last) return { args: rest.slice(0, -1), opts: last as CallOptions };
  return { args: rest, opts: {} };
}

/** A flow control key: 1 to 512 characters. */
export function checkLimitKey(key: unknown, what = 'limit key'): string {
  if (typeof key !== 'string' || key === '' || key.length > 512) {
    throw new InvalidArgumentError(`invalid ${what} ${JSON.stringify(key)?.slice(0, 80)}: a string of 1 to 512 characters`);
  }
  return key;
}

const GROUP = /^[A-Za-z0-9_.:-]{1,128}$/;

/** `poll://any@workers` or `workers` -> `workers`. */
export function parseTarget(target: string): string {
  const m = /^poll:\/\/any@(.*)$/.exec(target);
  const group = m ? m[1] : target;
  if (typeof group !== 'string' || !GROUP.test(group) || (!m && target.includes('://'))) {
    throw new InvalidArgumentError(
      `invalid target ${JSON.stringify(target)}: use a group name (letters, digits, _ . : -) or poll://any@<group>`);
  }
  return group;
}

export function checkGroup(group: string): string {
  if (!GROUP.test(group)) throw new InvalidArgumentError(`invalid group ${JSON.stringify(group)}: 1 to 128 letters, digits, _ . : -`);
  return group;
}

/** Validates the options that are stored with an invocation. */
export function invokeOptions(opts: CallOptions): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (opts.timeout !== undefined) {
    if (!Number.isFinite(opts.timeout) || opts.timeout <= 0) throw new InvalidArgumentError(`invalid timeout ${opts.timeout}: milliseconds > 0`);
    out.timeout_ms = Math.round(opts.timeout);
  }
  if (opts.delay !== undefined) {
    if (!Number.isFinite(opts.delay) || opts.delay < 0) throw new InvalidArgumentError(`invalid delay ${opts.delay}: milliseconds >= 0`);
    out.delay_ms = Math.round(opts.delay);
  }
  if (opts.tags !== undefined) {
    if (typeof opts.tags !== 'object' || opts.tags === null || Array.isArray(opts.tags)
        || Object.values(opts.tags).some((v) => typeof v !== 'string')) {
      throw new InvalidArgumentError('tags must be an object of strings');
    }
    const bytes = Buffer.byteLength(toJson(opts.tags, 'tags'));
    if (bytes > MAX_TAGS_BYTES) {
      throw new InvalidArgumentError(`tags are ${bytes} bytes of JSON; the limit is ${MAX_TAGS_BYTES}`);
    }
    out.tags = opts.tags;
  }
  if (opts.retry !== undefined) out.retry = checkRetry(opts.retry);
  if (opts.concurrencyKey !== undefined) out.concurrency_key = checkLimitKey(opts.concurrencyKey, 'concurrencyKey');
  if (opts.priority !== undefined) {
    if (!Number.isInteger(opts.priority) || opts.priority < -2_147_483_648 || opts.priority > 2_147_483_647) {
      throw new InvalidArgumentError(`invalid priority ${opts.priority}: an integer (higher runs first, default 0)`);
    }
    out.priority = opts.priority;
  }
  return out;
}
