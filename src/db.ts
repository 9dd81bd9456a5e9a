import postgres from 'postgres';
import { setTimeout as delay } from 'node:timers/promises';
import { InvalidArgumentError, fromDatabase } from './errors.js';
import { within } from './deadline.js';
import { Listener, type ListenConnection } from './listener.js';
import { Sockets } from './sockets.js';

export type Sql = postgres.Sql<Record<string, never>>;
export type TransactionSql = postgres.TransactionSql<Record<string, never>>;

export interface ConnectOptions {
  max?: number;
  /** Application name shown in pg_stat_activity. */
  name?: string;
  /** How often the pool's listener proves itself with a NOTIFY to itself (default 3 s). */
  proofMs?: number;
  /** Client-side deadline of every query (default 20 s; see QUERY_DEADLINE_MS). */
  deadlineMs?: number;
}

/**
 * No query of durably's takes long; one that has not answered after this
 * sat on a connection that can no longer carry it (half-open, or a write
 * the driver lost: postgres.js 3.4.9 can leave a pooled connection unable to
 * write). It fails as transient, so callers retry it, and that connection
 * is destroyed, so the retry goes to a new one.
 */
const QUERY_DEADLINE_MS = 20_000;

/**
 * The server cancels a statement of durably's connections after 3/4 of the
 * deadline, so one that outlives its client-side deadline does not keep its
 * locks, and a connection silent for longer is known to be broken. Set per
 * connection, it also takes precedence over a tighter statement_timeout
 * configured on the server, role or database.
 */
const statementTimeout = (deadlineMs: number) => Math.round((deadlineMs * 3) / 4);

/**
 * A postgres.js pool with the settings every durably connection uses.
 *
 * postgres.js 3.4.9 keeps per-connection state across a reconnect when a
 * connection dies mid-result (porsager/postgres#1119, #1181): the next query
 * can fail with the dead query's error, and the one after can resolve with a
 * sparse array (leading holes before the real rows). Every durably operation
 * retries transient errors (retryTransient), and the pool returned here drops
 * the holes, so callers see exactly the rows the server sent.
 *
 * Multi-host URLs (`postgres://u@h1:5432,h2:5432/db`) always target the
 * primary: postgres.js accepts a hot standby for `read-write` (it looks only
 * at default_transaction_read_only), so `read-write` and `any` are checked as
 * `primary`; a query refused as read-only (SQLSTATE 25006, "cannot execute
 * ... during recovery") closes every connection of the pool, and they
 * reconnect to the writable host. `sql.listen` is a Listener of the pool's
 * own that proves itself (see Listener).
 */
export function connect(url: string, options: ConnectOptions = {}): Sql {
  const deadlineMs = options.deadlineMs ?? QUERY_DEADLINE_MS;
  const sockets = new Sockets(deadlineMs);
  const settings = {
    onnotice: () => {},
    connection: { application_name: options.name ?? 'durably', statement_timeout: statementTimeout(deadlineMs) },
    target_session_attrs: sessionAttrs(url),
    socket: sockets.create,
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
    // A connection that never answers its startup (a write lost by the driver
    // after the server dropped it) fails after this many seconds and is retried.
    connect_timeout: 5,
  };
  const pool = postgres(url, { ...settings, max: options.max ?? 10, idle_timeout: 60 });
  const listener = new Listener(
    // onnotify is a driver option its types do not list
    (onnotify, onclose) => postgres(url, { ...settings, max: 1, idle_timeout: 0, max_lifetime: 0, onclose, ...{ onnotify } }) as unknown as ListenConnection,
    options.proofMs ?? 3000,
    (provedAt) => sockets.destroyQuietSince(provedAt),
  );
  const failed = async (err: unknown) => {
    const code = (err as { code?: unknown })?.code;
    if (code === READ_ONLY) sockets.destroyAll();
    // Its connection is silent for longer than any statement may run.
    if (code === 'QUERY_TIMEOUT') await sockets.destroySilent(statementTimeout(deadlineMs));
    throw err;
  };
  const end = async (opts?: { timeout?: number }) => {
    await listener.end();
    await pool.end(opts);
    sockets.close();
  };
  return new Proxy(pool, {
    apply: (target, self, args) =>
      within((Reflect.apply(target, self, args) as Promise<unknown>).then(withoutHoles), deadlineMs).catch(failed),
    get: (target, key, receiver) =>
      key === 'listen' ? listener.listen.bind(listener) : key === 'end' ? end : Reflect.get(target, key, receiver),
  }) as unknown as Sql;
}

/**
 * `sql.listen` with every argument of Listener.listen (a resync, which the
 * driver's own listen has not): a pool of connect() listens through its Listener.
 */
export function listen(sql: Sql, ...args: Parameters<Listener['listen']>): ReturnType<Listener['listen']> {
  return (sql.listen as unknown as Listener['listen'])(...args);
}

/** SQLSTATE read_only_sql_transaction: a standby, or a primary turned read-only. */
const READ_ONLY = '25006';

/**
 * The target_session_attrs durably connects with: the primary whenever the
 * URL names several hosts or asks for a writable one. A URL asking for a
 * standby is refused: durably writes.
 */
function sessionAttrs(url: string): 'primary' | undefined {
  const query = url.includes('?') ? new URLSearchParams(url.slice(url.indexOf('?') + 1)) : new URLSearchParams();
  const asked = query.get('target_session_attrs') ?? process.env.PGTARGETSESSIONATTRS;
  if (asked && !['any', 'read-write', 'primary'].includes(asked)) {
    throw new InvalidArgumentError(
      `target_session_attrs=${asked} cannot be used: durably writes, so it needs the primary (use target_session_attrs=primary)`);
  }
  const hosts = url.slice(url.indexOf('://') + 3).split(/[/?]/)[0];
  return asked || hosts.includes(',') ? 'primary' : undefined;
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
  // read-only: a standby reached before or during a failover
  READ_ONLY,
]);

/**
 * Errors worth retrying: a broken or refused connection (server restart,
 * failover, pg_terminate_backend: SQLSTATE classes 08 and 57), a server that
 * is read-only (25006: the pool then reconnects), a deadlock or
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
