import { randomBytes } from 'node:crypto';
import { after } from 'node:test';
import postgres from 'postgres';
import type { Sql } from '../../src/db.js';
import { databaseUrl } from './url.js';
import { waitFor } from './wait.js';

export interface TestDatabase {
  /** URL of a fresh, migrated database of this test file's own. */
  url: string;
  /** A pool on it, closed after the file's tests. */
  sql: Sql;
  /** A pool on the server's admin database (for pg_terminate_backend etc.). */
  admin: Sql;
}

/**
 * A fresh database copied from the migrated template that `npm test` makes.
 * Dropped after the file's tests.
 */
export async function testDatabase(): Promise<TestDatabase> {
  const adminUrl = process.env.DURABLY_TEST_ADMIN_URL;
  const template = process.env.DURABLY_TEST_TEMPLATE;
  if (!adminUrl || !template) throw new Error('run the tests with `npm test` (it prepares the database)');
  const name = `durably_t_${randomBytes(6).toString('hex')}`;
  const admin = harnessPool(adminUrl, 2);
  await admin.unsafe(`create database ${name} template ${template}`);
  const url = databaseUrl(adminUrl, name);
  const sql = harnessPool(url, 5);
  after(async () => {
    await sql.end({ timeout: 1 });
    await admin.unsafe(`drop database if exists ${name} with (force)`);
    await admin.end();
  });
  return { url, sql, admin };
}

/**
 * The tests' own pools: named so that connection storms aimed at durably's
 * connections (application_name durably...) spare them, and fetching array
 * types so tests can pass JS arrays as parameters.
 */
function harnessPool(url: string, max: number): Sql {
  return postgres(url, { max, onnotice: () => {}, connection: { application_name: 'test-harness' } }) as unknown as Sql;
}

/**
 * The tables test/fixtures/worker.ts writes: one row per run (executions)
 * and the side effect, once per invocation (effects).
 */
export async function createWorkerTables(sql: Sql): Promise<void> {
  await sql`create table executions (
    id serial primary key, invocation_id text not null, worker_name text not null, attempt integer not null,
    started_at timestamptz not null default clock_timestamp())`;
  await sql`create table effects (
    invocation_id text primary key, worker_name text not null, at timestamptz not null default clock_timestamp())`;
}

/** Counts calls of durably's functions on this database, in the connections opened from now on (functionCalls). */
export async function trackFunctionCalls(sql: Sql): Promise<void> {
  const [{ name }] = await sql<{ name: string }[]>`select current_database() as name`;
  await sql.unsafe(`alter database ${name} set track_functions = 'all'`);
}

/** Calls of the durably functions `names`, as reported by the backends so far (pg_stat_user_functions). */
export async function functionCalls(sql: Sql, names: string[]): Promise<number> {
  const [{ calls }] = await sql<{ calls: number }[]>`
    select coalesce(sum(calls), 0)::int as calls from pg_stat_user_functions
     where schemaname = 'durably' and funcname = any(${names})`;
  return calls;
}

/** Waits until worker `workerId` is recorded idle, with room: the next invocation it can run is handed to it. */
export async function recordedIdle(sql: Sql, workerId: string): Promise<void> {
  await waitFor(async () => (await sql`select 1 from durably.idle_workers where worker_id = ${workerId}`).length === 1,
    { what: `worker ${workerId} to be recorded idle` });
}
