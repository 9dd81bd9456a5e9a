import postgres from 'postgres';
import { setTimeout as delay } from 'node:timers/promises';
import { fromDatabase } from './errors.js';

export type Sql = postgres.Sql<Record<string, never>>;
export type TransactionSql = postgres.TransactionSql<Record<string, never>>;

export interface ConnectOptions {
  max?: number;
  /** Application name shown in pg_stat_activity. */
  name?: string;
}

/**
 * A postgres.js pool with the settings every durably connection uses.
 *
 * postgres.js 3.4.9 keeps per-connection state across a reconnect when a
 * connection dies mid-result (porsager/postgres#1119, #1181): the next query
 * can fail with the dead query's error, and the one after can resolve with a
 * sparse array (leading holes before the real rows). Every durably operation
 * retries transient errors (retryTransient), and the pool returned here drops
 * the holes, so callers see exactly the rows the server sent.
 */
export function connect(url: string, options: ConnectOptions = {}): Sql {
  const pool = postgres(url, {
    max: options.max ?? 10,
    onnotice: () => {},
    connection: { application_name: options.name ?? 'durably' },
    // Connections are recycled now and then so that one broken by a server
    // restart or failover does not stay in the pool for long.
    max_lifetime: 60 * 30,
    // postgres.js 3.4.9 runs an array-type lookup on every new connection
    // without handling its failure: a connection killed during that query
    // (server restart, pg_terminate_backend) becomes an unhandled rejection
    // that ends the process. Without it, arrays are passed as literals: see
    // textArray.
    fetch_types: false,
    // bigint columns (millisecond durations, counters) stay far below 2^53.
    types: { int8: { to: 20, from: [20], serialize: (x: number) => String(x), parse: (x: string) => Number(x) } },
    // Reconnect fast after a restart (the default backs off to 20 s); seconds.
    backoff: (retries: number) => Math.min(0.05 * 2 ** retries, 2),
    idle_timeout: 60,
    // A connection that never answers its startup (a write lost by the driver
    // after the server dropped it) fails after this many seconds and is retried.
    connect_timeout: 5,
  });
  return new Proxy(pool, {
    apply: (target, self, args) =>
      withDeadline((Reflect.apply(target, self, args) as Promise<unknown>).then(withoutHoles), QUERY_DEADLINE_MS),
  }) as unknown as Sql;
}

/**
 * No query of durably's takes long; one that has not answered after this
 * sat on a connection whose write the driver lost when the server dropped it
 * (postgres.js 3.4.9 can leave a pooled connection unable to write). It fails
 * as transient, so callers retry it, most likely on another connection.
 */
const QUERY_DEADLINE_MS = 20_000;

function withDeadline<T>(query: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, fail) => {
    timer = setTimeout(() => fail(Object.assign(new Error(`the query did not answer within ${ms} ms`), { code: 'QUERY_TIMEOUT' })), ms);
    timer.unref();
  });
  return Promise.race([query, deadline]).finally(() => clearTimeout(timer));
}

function withoutHoles<T>(rows: T): T {
  if (Array.isArray(rows) && rows.includes(undefined)) {
    const kept = rows.filter((r) => r !== undefined);
    return Object.assign(kept, { count: kept.length }) as T;
  }
  return rows;
}

/**
 * A `text[]` literal for a query parameter (`${textArray(ids)}::text[]`, or
 * `::text[]::jsonb[]` for JSON texts). Arrays are passed this way because the
 * pools do not fetch array types (see connect).
 */
export function textArray(xs: readonly (string | null)[]): string {
  return `{${xs.map((x) => (x === null ? 'NULL' : `"${x.replace(/[\\"]/g, (c) => `\\${c}`)}"`)).join(',')}}`;
}

/** The url to use when none is given. */
export function defaultUrl(): string | undefined {
  return process.env.DATABASE_URL || undefined;
}

const CONNECTION_CODES = new Set([
  'CONNECTION_CLOSED', 'CONNECTION_ENDED', 'CONNECTION_DESTROYED', 'CONNECT_TIMEOUT',
  'ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'QUERY_TIMEOUT',
]);

/**
 * Errors worth retrying: a broken or refused connection (server restart,
 * failover, pg_terminate_backend: SQLSTATE classes 08 and 57), a deadlock or
 * a serialization failure. Every operation durably retries is idempotent.
 */
export function isTransient(err: unknown): boolean {
  const code = (err as { code?: unknown })?.code;
  if (typeof code !== 'string') return false;
  return CONNECTION_CODES.has(code) || code.startsWith('08') || code.startsWith('57') || code === '40001' || code === '40P01';
}

/** Runs `op` again after transient errors, with backoff, up to `attempts` times. */
export async function retryTransient<T>(op: () => Promise<T>, attempts = 8): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await op();
    } catch (err) {
      if (i >= attempts || !isTransient(err)) throw err;
      await delay(Math.min(50 * 2 ** i, 2000));
    }
  }
}

/**
 * Runs a call of a durably procedure: retried through transient errors unless
 * `retry` is false (a caller's transaction cannot be retried from here), and
 * errors raised by the procedure turned into their typed errors.
 */
export async function callProcedure<T>(make: () => Promise<T>, retry = true): Promise<T> {
  try {
    return await (retry ? retryTransient(make) : make());
  } catch (err) {
    throw fromDatabase(err);
  }
}
