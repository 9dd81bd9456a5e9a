/**
 * Crash-safe cron (sql/schedules.sql, src/schedules.ts): every-second
 * schedules over real worker processes (test/fixtures/schedule-worker.ts)
 * killed with SIGKILL, catch-up and overlap policies, re-creation, pause and
 * resume, {occurrence} ids, DST through tick(), bad input, concurrent tickers.
 *
 * Databases: `main` for the scenarios whose tickers may share it (distinct
 * schedule ids and groups), `catchDb` for the catch-up scenario (no ticker
 * may run while its workers are down), and a fresh one for each test that
 * calls durably.tick() itself.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import postgres from 'postgres';
import { CronExpressionParser } from 'cron-parser';
import { Durably, InvalidArgumentError, type DurablyConfig } from '../src/index.js';
import { AlreadyExistsError, NotFoundError } from '../src/errors.js';
import type { Sql } from '../src/db.js';
import { testDatabase, type TestDatabase } from './helpers/db.js';
import { waitFor } from './helpers/wait.js';
import { spawnChild, within, type Child } from './helpers/processes.js';
import { registerScheduleFunctions, SCHED_RUNS_DDL } from './fixtures/schedule-functions.js';

const main = await testDatabase();
const catchDb = await testDatabase();
await main.sql.unsafe(SCHED_RUNS_DDL);
await catchDb.sql.unsafe(SCHED_RUNS_DDL);

const FIXTURE = fileURLToPath(new URL('./fixtures/schedule-worker.ts', import.meta.url));
const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;
const quiet = () => {};
const SECOND = 1000;
const HOUR = 3_600_000;
const iso = (ms: number) => new Date(ms).toISOString();

// ---------------------------------------------------------------------------
// Helpers

/** Starts a worker (and ticker) process on `db` and waits for its `ready` line; killed after the test. */
function spawnWorker(t: TestContext, db: TestDatabase, name: string, env: Record<string, string>): Promise<Child> {
  return spawnChild(t, name, FIXTURE, { env: { DATABASE_URL: db.url, WORKER_NAME: name, ...env } });
}

async function kill(child: Child): Promise<void> {
  await child.kill();
  assert.equal((await child.exited).signal, 'SIGKILL');
}

function fatal(children: Child[]): string {
  return children.filter((c) => /FATAL/.test(c.stderr) || !c.alive())
    .map((c) => `--- ${c.name} (alive: ${c.alive()}, exit ${c.proc.exitCode ?? c.proc.signalCode}):\n${c.stderr}`).join('\n');
}

/** A durably on `db` with the schedule functions registered; started (worker + ticker) if asked. Stopped after the test. */
async function client(t: TestContext, db: TestDatabase, opts: { start?: boolean } & DurablyConfig = {}): Promise<Durably> {
  const { start, ...config } = opts;
  const d = new Durably({ url: db.url, group: uid('client'), pollMs: 200, graceMs: 200, log: quiet, ...config });
  registerScheduleFunctions(d, `inproc-${d.group}`);
  t.after(() => d.stop());
  if (start) await d.start();
  return d;
}

/** The database's clock (every time compared below is the database's). */
async function dbNow(sql: Sql): Promise<number> {
  const [{ now }] = await sql<{ now: Date }[]>`select clock_timestamp() as now`;
  return now.getTime();
}

interface Tick {
  id: string;
  state: string;
  value: any;
  tags: Record<string, string>;
  /** The tick time (tag durably:tick), ms. */
  at: number;
  created: number;
  settled: number | null;
}

/** The promises a schedule's ticks created, in tick order. */
async function ticksOf(sql: Sql, schedule: string): Promise<Tick[]> {
  const rows = await sql<{ id: string; state: string; value: any; tags: Record<string, string>; created_at: Date; settled_at: Date | null }[]>`
    select id, state, value, tags, created_at, settled_at from durably.promises
     where tags->>'durably:schedule' = ${schedule} order by tags->>'durably:tick'`;
  return rows.map((r) => ({
    id: r.id, state: r.state, value: r.value, tags: r.tags,
    at: Date.parse(r.tags['durably:tick']), created: r.created_at.getTime(), settled: r.settled_at?.getTime() ?? null,
  }));
}

interface Run {
  promise_id: string;
  worker: string;
  attempt: number;
  started: number;
  ended: number | null;
  aborted: number | null;
  abort_code: string | null;
}

/** The executions of the function `tick` under `label`, in start order. */
async function runsOf(sql: Sql, label: string): Promise<Run[]> {
  const rows = await sql<{ promise_id: string; worker: string; attempt: number; started_at: Date; ended_at: Date | null;
    aborted_at: Date | null; abort_code: string | null }[]>`
    select promise_id, worker, attempt, started_at, ended_at, aborted_at, abort_code from sched_runs
     where label = ${label} order by started_at, id`;
  return rows.map((r) => ({
    promise_id: r.promise_id, worker: r.worker, attempt: r.attempt, started: r.started_at.getTime(),
    ended: r.ended_at?.getTime() ?? null, aborted: r.aborted_at?.getTime() ?? null, abort_code: r.abort_code,
  }));
}

/** Tick times `step` ms apart, no gap, no duplicate. */
function assertConsecutive(ticks: Tick[], step: number, what: string): void {
  for (let i = 1; i < ticks.length; i++) {
    assert.equal(ticks[i].at - ticks[i - 1].at, step,
      `${what}: ${iso(ticks[i - 1].at)} is followed by ${iso(ticks[i].at)}, not ${step} ms later`);
  }
}

/** Every tick of a schedule settled (waits). */
async function allSettled(sql: Sql, schedule: string, timeoutMs = 15_000): Promise<Tick[]> {
  return waitFor(async () => {
    const ticks = await ticksOf(sql, schedule);
    return ticks.every((x) => x.state !== 'pending') ? ticks : undefined;
  }, { timeoutMs, intervalMs: 50, what: `every tick of ${schedule} to settle` });
}

/** How many executions of `label` were running at once, at most. */
function maxConcurrent(runs: Run[]): number {
  const events = runs.flatMap((r) => [[r.started, 1], [r.ended ?? r.aborted ?? Infinity, -1]] as const)
    .sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let n = 0;
  let max = 0;
  for (const [, d] of events) { n += d; max = Math.max(max, n); }
  return max;
}

function countBy<T>(xs: T[], key: (x: T) => string): Map<string, number> {
  const m = new Map<string, number>();
  for (const x of xs) m.set(key(x), (m.get(key(x)) ?? 0) + 1);
  return m;
}

/** A pool of one connection, closed after the test. */
function connection(t: TestContext, url: string): Sql {
  const sql = postgres(url, { max: 1, onnotice: () => {}, connection: { application_name: 'test-harness' } }) as unknown as Sql;
  t.after(() => sql.end({ timeout: 1 }));
  return sql;
}

// ---------------------------------------------------------------------------
// 1. Every-second cron over three worker processes

test('every-second cron over 3 worker processes: one promise per second, consecutive, each executed once', async (t) => {
  const group = uid('g1');
  const children = await Promise.all(['a', 'b', 'c'].map((n) =>
    spawnWorker(t, main, `s1-${n}`, { GROUP: group, LEASE_MS: '5000', POLL_MS: '200' })));
  const c = await client(t, main);
  const sid = uid('s1');
  const h = await c.schedule(sid, '* * * * * *', 'tick', sid, 0, c.options({ group }));
  const first = (await h.get()).next_run_at!.getTime();
  assert.equal(first % SECOND, 0, 'an every-second cron fires on whole seconds');

  await waitFor(async () => (await ticksOf(main.sql, sid)).filter((x) => x.state === 'resolved').length >= 8,
    { timeoutMs: 25_000, intervalMs: 100, what: '8 resolved ticks' });
  assert.equal(await h.delete(), true);
  const deletedAt = await dbNow(main.sql);
  const ticks = await allSettled(main.sql, sid);

  assert.ok(ticks.length >= 8, `${ticks.length} ticks`);
  assert.equal(ticks[0].at, first, 'the first tick is the next_run_at the schedule was created with');
  assertConsecutive(ticks, SECOND, 'every-second ticks');
  assert.ok(ticks.at(-1)!.at >= deletedAt - 1500,
    `ticks kept up until the deletion: the last one is ${iso(ticks.at(-1)!.at)}, deleted at ${iso(deletedAt)}`);
  for (const x of ticks) {
    assert.equal(x.id, `${sid}.${iso(x.at)}`, 'id {schedule}.{timestamp}');
    assert.match(x.id, /\.\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z$/);
    assert.equal(x.tags['durably:schedule'], sid);
    assert.equal(x.tags['durably:tick'], iso(x.at));
    assert.equal(x.state, 'resolved');
    assert.equal(x.value.id, x.id);
    assert.ok(x.created >= x.at, `${x.id} created at ${iso(x.created)}, not before its tick time`);
    assert.ok(x.created <= deletedAt, 'no tick after the deletion');
  }
  const lags = ticks.map((x) => x.created - x.at);
  t.diagnostic(`${ticks.length} ticks; creation lag after the tick time: max ${Math.max(...lags)} ms, ` +
    `median ${lags.sort((a, b) => a - b)[lags.length >> 1]} ms`);

  const runs = await runsOf(main.sql, sid);
  const perId = countBy(runs, (r) => r.promise_id);
  assert.deepEqual([...perId.keys()].sort(), ticks.map((x) => x.id), 'every tick executed, nothing else');
  assert.deepEqual([...perId.values()].filter((n) => n !== 1), [], 'each tick executed exactly once');
  t.diagnostic(`executions per worker: ${JSON.stringify(Object.fromEntries(countBy(runs, (r) => r.worker)))}`);
  assert.equal(fatal(children), '');
});

// ---------------------------------------------------------------------------
// 2. Catch-up after downtime

test('catch-up: all workers SIGKILLed for 5 s; all creates every missed tick in order, latest the newest, none none', async (t) => {
  const db = catchDb;
  const group = uid('g2');
  const env = { GROUP: group, LEASE_MS: '1500', HEARTBEAT_MS: '300', POLL_MS: '200' };
  const c = await client(t, db);
  const ids = { all: uid('c-all'), latest: uid('c-latest'), none: uid('c-none') };
  // the occurrence in the ids of `all` tells the order the ticks were created in
  await c.schedule(ids.all, '* * * * * *', 'tick', ids.all, 0,
    c.options({ group, catchup: 'all', idTemplate: '{schedule}.{timestamp}#{occurrence}' }));
  await c.schedule(ids.latest, '* * * * * *', 'tick', ids.latest, 0, c.options({ group, catchup: 'latest' }));
  await c.schedule(ids.none, '* * * * * *', 'tick', ids.none, 0, c.options({ group, catchup: 'none' }));
  const resolvedSince = async (since: number, n: number) => {
    for (const sid of Object.values(ids)) {
      if ((await ticksOf(db.sql, sid)).filter((x) => x.state === 'resolved' && x.at > since).length < n) return false;
    }
    return true;
  };

  const before = await Promise.all(['a', 'b'].map((n) => spawnWorker(t, db, `c-${n}`, env)));
  await waitFor(() => resolvedSince(0, 2), { timeoutMs: 20_000, intervalMs: 100, what: '2 ticks of each schedule' });
  await Promise.all(before.map(kill));
  const killedAt = await dbNow(db.sql);
  await delay(5000); // the downtime: no ticker runs
  const restartAt = await dbNow(db.sql);
  assert.deepEqual([...await db.sql`select id from durably.promises where created_at > ${new Date(killedAt)}`], [],
    'nothing ticked while every worker was down');
  const survivor = await spawnWorker(t, db, 'c-restarted', env);
  await waitFor(() => resolvedSince(restartAt, 2), { timeoutMs: 20_000, intervalMs: 100, what: '2 ticks of each after the restart' });
  for (const sid of Object.values(ids)) await c.schedules.delete(sid);

  const report: string[] = [];
  for (const [policy, sid] of Object.entries(ids)) {
    const ticks = await allSettled(db.sql, sid);
    assert.ok(ticks.every((x) => x.state === 'resolved'), `${policy}: every tick resolved`);
    const lastBefore = Math.max(...ticks.filter((x) => x.created < killedAt).map((x) => x.at));
    const after = ticks.filter((x) => x.at > lastBefore);
    const missed = after.filter((x) => x.at <= restartAt);
    const resumed = after[0];
    report.push(`${policy}: last tick before the kill ${iso(lastBefore)}, down until ${iso(restartAt)}, ` +
      `first tick after ${iso(resumed.at)} (created ${iso(resumed.created)}), ${missed.length} missed ticks created`);
    assert.ok(resumed.created >= restartAt, `${policy}: the first tick after the kill was created after the restart`);
    assertConsecutive(after, SECOND, `${policy}: from the first tick after the restart on`);
    if (policy === 'all') {
      assertConsecutive(ticks, SECOND, 'all: no gap over the down interval');
      assert.ok(missed.length >= 4, `all: the ${missed.length} ticks due while down were created`);
      assert.ok(missed.every((x) => x.created >= restartAt && x.id === `${sid}.${iso(x.at)}#${x.id.split('#')[1]}`));
      const occurrences = ticks.map((x) => Number(x.id.split('#')[1]));
      assert.deepEqual(occurrences, ticks.map((_, i) => i), 'all: created in tick order (occurrence follows the tick time)');
    } else {
      // the newest due tick at the first tick() after the restart
      assert.ok(resumed.at <= resumed.created && resumed.at > resumed.created - SECOND,
        `${policy}: the first tick after the restart (${iso(resumed.at)}) is the newest one due when created (${iso(resumed.created)})`);
      assert.ok(resumed.at - lastBefore >= 4 * SECOND, `${policy}: no tick inside the down interval except the newest`);
      assert.ok(missed.length <= 1, `${policy}: ${missed.length} missed ticks created`);
      if (policy === 'none') {
        assert.ok(after.every((x) => x.at >= restartAt - SECOND), 'none: only ticks within 1 s before the restart or later');
      }
    }
  }
  for (const line of report) t.diagnostic(line);
  assert.equal(fatal([survivor]), '');
});

test('catch-up policies and catchupWindow, exact (tick() from SQL over hour-long backlogs)', async () => {
  const db = await testDatabase();
  const { sql } = db;
  const opts = (o: Record<string, unknown>) => JSON.stringify({ every_ms: HOUR, group: 'nobody', ...o });
  const defs: [string, Record<string, unknown>][] = [
    ['all', { catchup: 'all' }],
    ['latest', { catchup: 'latest' }],
    ['none', { catchup: 'none' }],
    ['all-window', { catchup: 'all', catchup_window_ms: 2.75 * HOUR }],
    ['latest-window', { catchup: 'latest', catchup_window_ms: 20 * 60_000 }],
  ];
  for (const [id, o] of defs) await sql`select 1 from durably.create_schedule(${id}, null, 'tick', ${opts(o)}::text::jsonb)`;
  await sql`select 1 from durably.create_schedule('cron-latest', '0 * * * *', 'tick', '{"catchup":"latest","group":"nobody"}')`;
  await sql`select 1 from durably.create_schedule('secondly-latest', '* * * * * *', 'tick', '{"catchup":"latest","group":"nobody"}')`;
  await sql`select 1 from durably.create_schedule('secondly-none', '* * * * * *', 'tick', '{"catchup":"none","group":"nobody"}')`;

  // fixed delays anchored 5.5 h back: due at -5.5 h, -4.5 h, ... -0.5 h
  const [{ base }] = await sql<{ base: Date }[]>`select date_trunc('milliseconds', now()) as base`;
  const anchor = base.getTime() - 5.5 * HOUR;
  await sql`update durably.schedules set next_run_at = ${new Date(anchor)} where every_ms is not null`;
  // a cron with 2000 missed hours, and every-second crons an hour behind: far more than p_max_ticks
  await sql`update durably.schedules set next_run_at = date_trunc('hour', now()) - interval '2000 hours' where id = 'cron-latest'`;
  await sql`update durably.schedules set next_run_at = date_trunc('second', now()) - interval '1 hour' where id like 'secondly-%'`;
  const [{ created }] = await sql<{ created: number }[]>`select created from durably.tick(100, 1000)`;

  const times = async (id: string) => (await ticksOf(sql, id)).map((x) => x.at);
  const grid = (k: number) => anchor + k * HOUR;
  assert.deepEqual(await times('all'), [0, 1, 2, 3, 4, 5].map(grid), 'all: every missed tick, with its original time');
  assert.deepEqual(await times('latest'), [grid(5)], 'latest: only the newest');
  assert.deepEqual(await times('none'), [], 'none: nothing older than 1 s');
  assert.deepEqual(await times('all-window'), [3, 4, 5].map(grid), 'all with a 2.75 h window: the last three');
  assert.deepEqual(await times('latest-window'), [], 'latest with a 20 min window: the newest is 30 min old');
  const next = await sql<{ id: string; next_run_at: Date; occurrence: number }[]>`
    select id, next_run_at, occurrence from durably.schedules where every_ms is not null order by id`;
  for (const s of next) assert.equal(s.next_run_at.getTime(), grid(6), `${s.id}: next run on the grid, after now`);

  // the newest missed run after a backlog longer than p_max_ticks, not the 1000th oldest
  const [{ hour, now }] = await sql<{ hour: Date; now: Date }[]>`select date_trunc('hour', now()) as hour, now()`;
  assert.deepEqual(await times('cron-latest'), [hour.getTime()], 'latest after 2000 missed hours: the current hour');
  const secondly = await times('secondly-latest');
  assert.equal(secondly.length, 1);
  assert.ok(secondly[0] <= now.getTime() && secondly[0] > now.getTime() - 2 * SECOND,
    `latest after 3600 missed seconds: ${iso(secondly[0])}, the newest before ${iso(now.getTime())}`);
  const none = await times('secondly-none');
  assert.equal(none.length, 1, 'none after 3600 missed seconds: the tick of the last second');
  assert.ok(none[0] <= now.getTime() && none[0] > now.getTime() - 2 * SECOND, `none: ${iso(none[0])}`);
  const [{ n }] = await sql<{ n: number }[]>`select count(*)::int as n from durably.promises`;
  assert.equal(created, n, 'tick() reports what it created');
  const [cl] = await sql<{ next_run_at: Date }[]>`select next_run_at from durably.schedules where id = 'cron-latest'`;
  assert.equal(cl.next_run_at.getTime(), hour.getTime() + HOUR);
});

// ---------------------------------------------------------------------------
// 3. Re-creating, replacing, deleting

test('re-creating a schedule: same definition a no-op, another AlreadyExistsError unless replace; delete lets a running tick finish', async (t) => {
  const { sql } = main;
  const group = uid('g3');
  const c = await client(t, main, { group, start: true });
  const sid = uid('s3');
  const def = () => c.options({ group, overlap: 'skip_if_running' });
  const h = await c.schedule(sid, { every: 60_000 }, 'tick', sid, 0, def());
  const r1 = await h.get();
  await delay(50); // so that a recomputed next_run_at would differ
  const h2 = await c.schedule(sid, { every: 60_000 }, 'tick', sid, 0, def());
  assert.equal(h2.id, sid);
  assert.deepEqual(await h.get(), r1, 'the same definition again: the row is unchanged (next_run_at too)');
  const [viaSql] = await sql`select * from durably.create_schedule(${sid}, null, 'tick',
    ${JSON.stringify({ every_ms: 60_000, args: [sid, 0], group, overlap: 'skip_if_running' })}::text::jsonb)`;
  assert.equal(viaSql.next_run_at.getTime(), r1.next_run_at!.getTime(), 'the same through SQL');
  assert.equal(viaSql.updated_at.getTime(), r1.updated_at.getTime());
  assert.deepEqual(await c.schedules.list().then((l) => l.filter((s) => s.id === sid).length), 1);

  const other: [string, () => Promise<unknown>][] = [
    ['another recurrence', () => c.schedule(sid, { every: 30_000 }, 'tick', sid, 0, def())],
    ['a cron instead', () => c.schedule(sid, '* * * * *', 'tick', sid, 0, def())],
    ['other args', () => c.schedule(sid, { every: 60_000 }, 'tick', sid, 1, def())],
    ['another overlap policy', () => c.schedule(sid, { every: 60_000 }, 'tick', sid, 0, c.options({ group }))],
    ['another timezone', () => c.schedule(sid, { every: 60_000 }, 'tick', sid, 0, c.options({ group, overlap: 'skip_if_running', timezone: 'Europe/Berlin' }))],
  ];
  for (const [what, make] of other) {
    await assert.rejects(make(), (err: any) => {
      assert.ok(err instanceof AlreadyExistsError, `${what}: ${err}`);
      assert.equal(err.code, 'ALREADY_EXISTS');
      assert.match(err.message, /already exists/);
      return true;
    });
  }
  await assert.rejects(sql`select * from durably.create_schedule(${sid}, '* * * * *', 'tick', ${JSON.stringify({ group })}::text::jsonb)`,
    (err: any) => err.code === 'DU004');
  assert.deepEqual(await h.get(), r1, 'a refused definition changed nothing');

  const replaced = await c.schedule(sid, { every: 30_000 }, 'tick', sid, 0, c.options({ group, overlap: 'skip_if_running', replace: true }));
  const r3 = await replaced.get();
  const replacedAt = await dbNow(sql);
  assert.equal(r3.every_ms, 30_000);
  assert.equal(r3.created_at.getTime(), r1.created_at.getTime(), 'replaced in place');
  assert.ok(r3.updated_at > r1.updated_at);
  assert.ok(Math.abs(r3.next_run_at!.getTime() - (replacedAt + 30_000)) < 2000, 'next run recomputed from the new definition');
  // replace with the definition it has: a no-op as well
  await c.schedule(sid, { every: 30_000 }, 'tick', sid, 0, c.options({ group, overlap: 'skip_if_running', replace: true }));
  assert.deepEqual(await h.get(), r3);
  assert.deepEqual(await ticksOf(sql, sid), [], 'no tick from any of this');
  assert.equal(await h.delete(), true);

  // deleting stops the ticks; a running tick still finishes and resolves
  const slow = uid('s3-slow');
  const hs = await c.schedule(slow, '* * * * * *', 'tick', slow, 2500, c.options({ group }));
  const [running] = await waitFor(async () => {
    const runs = await runsOf(sql, slow);
    return runs.length ? runs : undefined;
  }, { timeoutMs: 10_000, what: 'the first tick to start' });
  assert.equal(await hs.delete(), true);
  const deletedAt = await dbNow(sql);
  const atDeletion = await ticksOf(sql, slow);
  assert.ok(atDeletion.some((x) => x.id === running.promise_id && x.state === 'pending'), 'deleted while a tick runs');
  const value = await within(c.wait<{ id: string }>(running.promise_id, 10_000), 12_000, 'the running tick to resolve');
  assert.equal(value.id, running.promise_id);
  const ticks = await allSettled(sql, slow);
  const waited = (await dbNow(sql)) - deletedAt;
  assert.ok(waited >= 1500, `watched ${waited} ms after the deletion (more than one interval)`);
  assert.deepEqual(ticks.map((x) => x.id), atDeletion.map((x) => x.id), 'no tick after the deletion');
  assert.ok(ticks.every((x) => x.state === 'resolved'), 'the ticks created before the deletion all finished');
  const [run] = (await runsOf(sql, slow)).filter((r) => r.promise_id === running.promise_id);
  assert.ok(run.ended! > deletedAt, 'the running execution ended after the deletion');
  assert.equal(await hs.delete(), false, 'deleting again: nothing to delete');
  await assert.rejects(hs.get(), NotFoundError);
  await assert.rejects(hs.pause(), NotFoundError);
});

test('concurrent creators of one schedule (every process running its setup at once): all succeed, one row', async (t) => {
  const clients = await Promise.all(Array.from({ length: 8 }, () => client(t, main)));
  await Promise.all(clients.map((c) => c.schedules.list())); // migrated and connected: the creations race each other
  for (let round = 0; round < 3; round++) {
    const sid = uid('s3-setup');
    const group = uid('idle');
    const results = await Promise.allSettled(clients.map((c) =>
      c.schedule(sid, { every: HOUR }, 'tick', sid, c.options({ group }))));
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => String(r.reason));
    assert.deepEqual(failed, [], `round ${round}: every creator succeeds`);
    const rows = await main.sql`select id from durably.schedules where id = ${sid}`;
    assert.equal(rows.length, 1);
    // another definition, concurrently: ALREADY_EXISTS for every creator, not a raw unique violation
    const other = uid('s3-other');
    const conflicting = await Promise.allSettled(clients.map((c, i) =>
      c.schedule(other, { every: HOUR + i }, 'tick', c.options({ group }))));
    const errors = conflicting.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => r.reason);
    assert.equal(errors.length, clients.length - 1, `round ${round}: one creator wins`);
    for (const err of errors) assert.ok(err instanceof AlreadyExistsError, String(err));
    await clients[0].schedules.delete(sid);
    await clients[0].schedules.delete(other);
  }
});

// ---------------------------------------------------------------------------
// 4. Overlap policies

test('overlap policies with a function slower than the interval', async (t) => {
  const { sql } = main;
  const group = uid('g4');
  const children = await Promise.all(['a', 'b'].map((n) => spawnWorker(t, main, `o-${n}`,
    { GROUP: group, CONCURRENCY: '10', LEASE_MS: '3000', HEARTBEAT_MS: '200', POLL_MS: '200' })));
  const c = await client(t, main);
  const ids = { skip: uid('o-skip'), cancel: uid('o-cancel'), always: uid('o-always'), buffer: uid('o-buffer') };
  await c.schedule(ids.skip, { every: 300 }, 'tick', ids.skip, 1000, c.options({ group, overlap: 'skip_if_running' }));
  await c.schedule(ids.cancel, '* * * * * *', 'tick', ids.cancel, 2500, c.options({ group, overlap: 'cancel_and_restart' }));
  await c.schedule(ids.always, { every: 300 }, 'tick', ids.always, 1000, c.options({ group, overlap: 'always_start' }));
  await c.schedule(ids.buffer, { every: 300 }, 'tick', ids.buffer, 1000, c.options({ group, overlap: 'buffer_one' }));

  await waitFor(async () => {
    const ended = async (sid: string) => (await runsOf(sql, sid)).filter((r) => r.ended !== null).length;
    const aborted = (await runsOf(sql, ids.cancel)).filter((r) => r.aborted !== null).length;
    return await ended(ids.skip) >= 3 && await ended(ids.buffer) >= 3 && await ended(ids.always) >= 4 && aborted >= 3;
  }, { timeoutMs: 30_000, intervalMs: 100, what: 'a few executions of each policy' });
  for (const sid of Object.values(ids)) await c.schedules.delete(sid);
  const report: string[] = [];

  // skip_if_running: no overlap; the ticks due meanwhile have no promise
  {
    const ticks = await allSettled(sql, ids.skip);
    const runs = await runsOf(sql, ids.skip);
    assert.deepEqual(runs.map((r) => r.promise_id), ticks.map((x) => x.id), 'skip: each promise executed once, in tick order');
    assert.ok(ticks.every((x) => x.state === 'resolved'));
    for (let i = 1; i < runs.length; i++) {
      assert.ok(runs[i].started >= runs[i - 1].ended!, `skip: run ${i} started before run ${i - 1} ended`);
      assert.ok(ticks[i].created >= ticks[i - 1].settled! - 100,
        `skip: tick ${iso(ticks[i].at)} created while its predecessor was still pending`);
      const gap = ticks[i].at - ticks[i - 1].at;
      assert.ok(gap % 300 === 0 && gap > 0, `skip: ${gap} ms between ticks, not on the schedule's 300 ms grid`);
    }
    // a run takes 1000 ms, so about three of every four due ticks find their predecessor running
    const slots = (ticks.at(-1)!.at - ticks[0].at) / 300 + 1;
    assert.ok(ticks.length <= slots / 2, `skip: ${ticks.length} promises for ${slots} due ticks: the others were skipped`);
    report.push(`skip_if_running: ${ticks.length} promises over ${ticks.at(-1)!.at - ticks[0].at} ms; ` +
      `tick gaps ${ticks.slice(1).map((x, i) => x.at - ticks[i].at).join(' ')}`);
  }

  // cancel_and_restart: each tick cancels the running one (its signal fires) and starts
  {
    const ticks = await allSettled(sql, ids.cancel);
    const runs = await runsOf(sql, ids.cancel);
    assertConsecutive(ticks, SECOND, 'cancel_and_restart: every tick starts');
    assert.ok(ticks.length >= 4);
    assert.equal(ticks.at(-1)!.state, 'resolved', 'cancel: the last tick (nothing canceled it) ran to completion');
    for (let i = 0; i < ticks.length - 1; i++) {
      const [x, nextTick] = [ticks[i], ticks[i + 1]];
      assert.equal(x.state, 'rejected_canceled', `cancel: ${x.id} canceled by the next tick`);
      assert.equal(x.value.name, 'CanceledError');
      assert.match(x.value.message, new RegExp(`canceled by schedule ${ids.cancel}`));
      assert.equal(x.settled, nextTick.created, 'canceled in the transaction that created the next tick');
      const mine = runs.filter((r) => r.promise_id === x.id);
      assert.equal(mine.length, 1, `cancel: ${x.id} executed once`);
      assert.equal(mine[0].abort_code, 'CANCELED', `cancel: the signal of ${x.id} fired`);
      assert.equal(mine[0].ended, null, 'cancel: the canceled execution did not run to its end');
      assert.ok(mine[0].aborted! >= x.settled! && mine[0].aborted! - x.settled! < 1500,
        `cancel: signal fired ${mine[0].aborted! - x.settled!} ms after the cancellation`);
      const started = runs.find((r) => r.promise_id === nextTick.id)!;
      assert.ok(started && started.started >= nextTick.created, 'cancel: the next one started');
    }
    report.push(`cancel_and_restart: ${ticks.length} ticks; signal fired ${runs.filter((r) => r.aborted)
      .map((r) => r.aborted! - ticks.find((x) => x.id === r.promise_id)!.settled!).join(' ')} ms after each cancel`);
  }

  // always_start: executions overlap
  {
    const ticks = await allSettled(sql, ids.always);
    const runs = await runsOf(sql, ids.always);
    assertConsecutive(ticks, 300, 'always_start: every tick starts');
    assert.deepEqual(runs.map((r) => r.promise_id).sort(), ticks.map((x) => x.id).sort(), 'always: each executed once');
    assert.ok(ticks.every((x) => x.state === 'resolved'));
    const overlapping = runs.slice(1).filter((r, i) => r.started < runs[i].ended!).length;
    const most = maxConcurrent(runs);
    assert.ok(overlapping >= (runs.length - 1) / 2, `always: ${overlapping} of ${runs.length - 1} consecutive runs overlap`);
    assert.ok(most >= 3, `always: up to ${most} executions at once`);
    report.push(`always_start: ${runs.length} runs, ${overlapping} consecutive pairs overlap, up to ${most} at once`);
  }

  // buffer_one: no overlap, at most one waits, the next starts as soon as the previous ends
  {
    const ticks = await allSettled(sql, ids.buffer);
    const runs = await runsOf(sql, ids.buffer);
    assert.deepEqual(runs.map((r) => r.promise_id), ticks.map((x) => x.id), 'buffer: each promise executed once, in tick order');
    assert.ok(ticks.every((x) => x.state === 'resolved'));
    const handoffs: number[] = [];
    for (let i = 1; i < runs.length; i++) {
      assert.ok(runs[i].started >= runs[i - 1].ended!, `buffer: run ${i} started before run ${i - 1} ended`);
      handoffs.push(runs[i].started - runs[i - 1].ended!);
      if (i >= 2) {
        assert.ok(ticks[i].created >= runs[i - 1].started - 100,
          `buffer: ${ticks[i].id} was created while ${ticks[i - 1].id} still waited: two waiting`);
      }
    }
    assert.ok(Math.max(...handoffs) < 1000, `buffer: the next one starts right after the previous ends (${handoffs.join(' ')} ms)`);
    assert.equal(maxConcurrent(runs), 1);
    report.push(`buffer_one: ${runs.length} runs, started ${handoffs.join(' ')} ms after the previous ended`);
  }
  for (const line of report) t.diagnostic(line);
  assert.equal(fatal(children), '');
});

test('buffer_one: a predecessor settling while tick() buffers its successor does not strand the successor', async (t) => {
  const db = await testDatabase();
  const q = db.sql;
  const [ticker, settler, blocker] = [connection(t, db.url), connection(t, db.url), connection(t, db.url)];
  await q`select 1 from durably.create_schedule('race', null, 'tick', '{"every_ms":3600000,"overlap":"buffer_one","group":"nobody"}')`;
  await q`select 1 from durably.invoke('race-prev', 'tick', '[]', 'nobody')`;
  const [{ tickId }] = await q<{ tickId: string }[]>`
    update durably.schedules set last_promise_id = 'race-prev', next_run_at = date_trunc('second', now()) - interval '1 minute'
     where id = 'race' returning durably.schedule_promise_id(id_template, id, next_run_at, occurrence) as "tickId"`;
  const pidOf = async (s: Sql) => (await s<{ pid: number }[]>`select pg_backend_pid() as pid`)[0].pid;
  const waitingOnLock = (pid: number) => waitFor(async () => {
    const [r] = await q<{ w: string | null }[]>`select wait_event_type as w from pg_stat_activity where pid = ${pid}`;
    return r?.w === 'Lock';
  }, { timeoutMs: 5000, what: `backend ${pid} to wait on a lock` });
  const [tickerPid, settlerPid] = [await pidOf(ticker), await pidOf(settler)];

  // the blocker holds the tick's promise id, so tick() stops in the middle, between reading the
  // predecessor's state and buffering the new tick behind it
  await blocker`begin`;
  await blocker`insert into durably.promises (id, timeout_at, root_id) values (${tickId}, now() + interval '1 hour', ${tickId})`;
  const ticking = ticker`select created from durably.tick()`.execute();
  await waitingOnLock(tickerPid);
  // meanwhile the predecessor settles: at once, or after the tick (when tick() locked it)
  let settledFirst = false;
  const settling = settler`select state from durably.resolve('race-prev', '1')`.execute().then((r) => { settledFirst = true; return r; });
  await Promise.race([settling, waitingOnLock(settlerPid)]);
  const settledBeforeTick = settledFirst;
  await blocker`rollback`;
  const [[{ created }]] = await within(Promise.all([ticking, settling]), 5000, 'the tick and the settlement');
  t.diagnostic(settledBeforeTick ? 'the settle went first' : 'the settle waited for the tick');
  assert.equal(created, 1);
  const [task] = await q<{ state: string }[]>`select state from durably.tasks where promise_id = ${tickId}`;
  const callbacks = await q`select * from durably.callbacks`;
  assert.equal(task?.state, 'ready', 'the buffered tick can run: its predecessor has settled');
  assert.deepEqual([...callbacks], [], 'no callback on a settled promise');
});

// ---------------------------------------------------------------------------
// 5. {occurrence} ids

test('{occurrence} id template with a fixed delay: job-0, job-1, ... in order; wait() returns an occurrence\'s value', async (t) => {
  const { sql } = main;
  const group = uid('g5');
  const c = await client(t, main, { group, start: true });
  const sid = uid('s5');
  const h = await c.schedule(sid, { every: 200 }, 'tick', sid, 0, c.options({ group, idTemplate: 'job-{occurrence}' }));
  const first = (await h.get()).next_run_at!.getTime();
  const v = await within(c.wait<{ id: string; worker: string }>('job-2', 10_000), 11_000, 'job-2');
  assert.deepEqual(v, { id: 'job-2', worker: `inproc-${group}` });
  await waitFor(async () => (await ticksOf(sql, sid)).length >= 6, { timeoutMs: 10_000, what: '6 ticks' });
  await h.delete();
  const ticks = await allSettled(sql, sid);
  assert.deepEqual(ticks.map((x) => x.id), ticks.map((_, i) => `job-${i}`), 'ids job-0, job-1, ... in tick order');
  assert.equal(ticks[0].at, first);
  assertConsecutive(ticks, 200, 'fixed delay of 200 ms');
  for (const x of ticks) assert.deepEqual(x.value, { id: x.id, worker: `inproc-${group}` });
  await assert.rejects(c.wait('job-never', 300), (err: any) => err.code === 'TIMED_OUT');
});

// ---------------------------------------------------------------------------
// 6. Pause, resume, previews

test('pause stops ticks, resume goes on from now without catching up; next(n) previews match cron-parser', async (t) => {
  const { sql } = main;
  const group = uid('g6');
  const c = await client(t, main, { group, start: true });
  const sid = uid('s6');
  const h = await c.schedule(sid, '* * * * * *', 'tick', sid, 0, c.options({ group }));
  await waitFor(async () => (await ticksOf(sql, sid)).filter((x) => x.state === 'resolved').length >= 2,
    { timeoutMs: 10_000, what: '2 ticks' });
  const paused = await h.pause();
  const pausedAt = await dbNow(sql);
  assert.equal(paused.paused, true);
  assert.equal((await h.get()).paused, true);
  const lastBefore = Math.max(...(await ticksOf(sql, sid)).map((x) => x.at));

  // while paused (2.5 s, two ticks' worth): previews
  const tz = 'America/New_York';
  for (const expr of ['30 9 * * 1-5', '0 0 1 * *', '15 */6 * * *', '0 0 12 * * 1']) {
    const ph = await c.schedule(uid('s6-preview'), expr, 'tick', c.options({ group: uid('idle'), timezone: tz }));
    const from = await dbNow(sql);
    const ours = (await ph.next(3)).map((d) => d.toISOString());
    const theirs = CronExpressionParser.parse(expr, { tz, currentDate: new Date(from) }).take(3).map((d) => d.toDate().toISOString());
    assert.deepEqual(ours, theirs, `next(3) of ${expr} in ${tz}`);
    assert.equal(ours[0], (await ph.get()).next_run_at!.toISOString());
    await ph.delete();
  }
  const fixed = await c.schedule(uid('s6-fixed'), { every: 60_000 }, 'tick', c.options({ group: uid('idle') }));
  const nr = (await fixed.get()).next_run_at!.getTime();
  assert.deepEqual((await fixed.next(3)).map((d) => d.getTime()), [nr, nr + 60_000, nr + 120_000], 'next(3) of a fixed delay');
  await fixed.delete();
  await assert.rejects(h.next(0), InvalidArgumentError);
  await assert.rejects(c.schedules.next(uid('missing'), 3), NotFoundError);
  const waitUntil = pausedAt + 2500 - await dbNow(sql);
  if (waitUntil > 0) await delay(waitUntil);
  const whilePaused = (await ticksOf(sql, sid)).filter((x) => x.created > pausedAt);
  assert.deepEqual(whilePaused.map((x) => x.id), [], 'no tick while paused');

  const resumeAt = await dbNow(sql);
  const resumed = await h.resume();
  assert.equal(resumed.paused, false);
  assert.ok(resumed.next_run_at!.getTime() > resumeAt && resumed.next_run_at!.getTime() <= resumeAt + 1500,
    'resumed: the next run is the first one after now');
  await waitFor(async () => (await ticksOf(sql, sid)).filter((x) => x.at > resumeAt && x.state === 'resolved').length >= 2,
    { timeoutMs: 10_000, what: '2 ticks after resuming' });
  await h.delete();
  const ticks = await allSettled(sql, sid);
  const after = ticks.filter((x) => x.at > lastBefore);
  assert.ok(after[0].at > resumeAt, `the first tick after the pause (${iso(after[0].at)}) is after the resume (${iso(resumeAt)}): nothing caught up`);
  assert.ok(after[0].at - lastBefore >= 2 * SECOND, 'the paused interval has no tick');
  assertConsecutive(ticks.filter((x) => x.at <= lastBefore), SECOND, 'before the pause');
  assertConsecutive(after, SECOND, 'after the resume');
  assert.ok(ticks.every((x) => x.state === 'resolved'));
});

// ---------------------------------------------------------------------------
// 7. A worker crash mid-tick

test('a worker SIGKILLed while running a tick: the survivor re-runs it after the lease, one promise per tick, ticks go on', async (t) => {
  const { sql } = main;
  const group = uid('g7');
  const env = { GROUP: group, CONCURRENCY: '5', LEASE_MS: '1500', HEARTBEAT_MS: '300', POLL_MS: '200' };
  const children = await Promise.all(['a', 'b'].map((n) => spawnWorker(t, main, `k-${n}`, env)));
  const c = await client(t, main);
  const sid = uid('s7');
  const h = await c.schedule(sid, '*/2 * * * * *', 'tick', sid, 1500, c.options({ group }));
  // a tick that started within the last 300 ms: more than a second of it left
  const victimRun = await waitFor(async () => {
    const [run] = await sql<{ promise_id: string; worker: string }[]>`
      select promise_id, worker from sched_runs
       where label = ${sid} and ended_at is null and started_at > clock_timestamp() - interval '300 milliseconds'`;
    return run;
  }, { timeoutMs: 15_000, intervalMs: 20, what: 'a tick to start' });
  const victim = children.find((ch) => ch.name === victimRun.worker)!;
  const survivor = children.find((ch) => ch !== victim)!;
  await kill(victim);
  const killedAt = await dbNow(sql);

  const value = await within(c.wait<{ worker: string }>(victimRun.promise_id, 15_000), 16_000, 'the crashed tick to resolve');
  assert.equal(value.worker, survivor.name, 're-run by the survivor');
  const runs = (await runsOf(sql, sid)).filter((r) => r.promise_id === victimRun.promise_id);
  assert.deepEqual(runs.map((r) => [r.worker, r.attempt]), [[victim.name, 1], [survivor.name, 2]]);
  assert.ok(runs[1].started - runs[0].started >= 1000, 'not re-run while the victim\'s lease held');
  t.diagnostic(`re-run ${runs[1].started - killedAt} ms after the kill (lease 1500 ms)`);

  await waitFor(async () => (await ticksOf(sql, sid)).filter((x) => x.at > killedAt && x.state === 'resolved').length >= 2,
    { timeoutMs: 15_000, what: '2 ticks after the crash' });
  await h.delete();
  const ticks = await allSettled(sql, sid);
  assertConsecutive(ticks, 2 * SECOND, 'every 2 s, through the crash');
  assert.equal(ticks.filter((x) => x.id === victimRun.promise_id).length, 1, 'exactly one promise for the crashed tick');
  assert.equal(new Set(ticks.map((x) => x.tags['durably:tick'])).size, ticks.length, 'one promise per tick time');
  assert.ok(ticks.every((x) => x.state === 'resolved'), 'every tick resolved');
  for (const x of ticks.filter((y) => y.created > killedAt)) assert.equal(x.value.worker, survivor.name);
  assert.equal(fatal([survivor]), '');
});

// ---------------------------------------------------------------------------
// 8. DST through tick()

test('DST: tick() creates the documented instants across the 2026 transitions (New York, Berlin)', async () => {
  const { sql } = await testDatabase();
  const cases: [string, string, string, string[]][] = [
    // [cron, zone, next_run_at set to, the ticks tick(100, 4) creates] -- see sql/cron.sql and test/cron.test.ts
    ['30 2 * * *', 'America/New_York', '2026-03-07T07:30:00Z',
      ['2026-03-07T07:30:00Z', '2026-03-08T07:30:00Z', '2026-03-09T06:30:00Z', '2026-03-10T06:30:00Z']],
    ['30 2 * * *', 'America/New_York', '2026-10-31T06:30:00Z',
      ['2026-10-31T06:30:00Z', '2026-11-01T07:30:00Z', '2026-11-02T07:30:00Z', '2026-11-03T07:30:00Z']],
    ['0 * * * *', 'America/New_York', '2026-03-08T05:00:00Z',
      ['2026-03-08T05:00:00Z', '2026-03-08T06:00:00Z', '2026-03-08T07:00:00Z', '2026-03-08T08:00:00Z']],
    ['0 * * * *', 'America/New_York', '2026-11-01T04:00:00Z', // 01:00 EDT and 01:00 EST both fire
      ['2026-11-01T04:00:00Z', '2026-11-01T05:00:00Z', '2026-11-01T06:00:00Z', '2026-11-01T07:00:00Z']],
    ['30 2 * * *', 'Europe/Berlin', '2026-03-28T01:30:00Z',
      ['2026-03-28T01:30:00Z', '2026-03-29T01:30:00Z', '2026-03-30T00:30:00Z', '2026-03-31T00:30:00Z']],
    ['30 2 * * *', 'Europe/Berlin', '2026-10-24T00:30:00Z', // the repeated 02:30 fires once
      ['2026-10-24T00:30:00Z', '2026-10-25T00:30:00Z', '2026-10-26T01:30:00Z', '2026-10-27T01:30:00Z']],
    ['0 * * * *', 'Europe/Berlin', '2026-03-29T00:00:00Z',
      ['2026-03-29T00:00:00Z', '2026-03-29T01:00:00Z', '2026-03-29T02:00:00Z', '2026-03-29T03:00:00Z']],
    ['0 * * * *', 'Europe/Berlin', '2026-10-25T00:00:00Z',
      ['2026-10-25T00:00:00Z', '2026-10-25T01:00:00Z', '2026-10-25T02:00:00Z', '2026-10-25T03:00:00Z']],
  ];
  const id = (i: number) => `dst-${i}`;
  for (const [i, [cron, timezone, from]] of cases.entries()) {
    await sql`select 1 from durably.create_schedule(${id(i)}, ${cron}, 'tick', ${JSON.stringify({ timezone, group: 'nobody' })}::text::jsonb)`;
    await sql`update durably.schedules set next_run_at = ${from}::timestamptz where id = ${id(i)}`;
  }
  const [{ created }] = await sql<{ created: number }[]>`select created from durably.tick(100, 4)`;
  assert.equal(created, 4 * cases.length);
  const ms = (s: string) => Date.parse(s);
  for (const [i, [cron, timezone, , expected]] of cases.entries()) {
    const what = `${cron} in ${timezone} from ${expected[0]}`;
    const ticks = await ticksOf(sql, id(i));
    assert.deepEqual(ticks.map((x) => x.id), expected.map((e) => `${id(i)}.${iso(ms(e))}`), what);
    assert.deepEqual(ticks.map((x) => x.tags['durably:tick']), expected.map((e) => iso(ms(e))), what);
    const [s] = await sql<{ next_run_at: Date; last_run_at: Date; occurrence: number; last_promise_id: string; fifth: Date }[]>`
      select next_run_at, last_run_at, occurrence, last_promise_id,
             durably.cron_next(${cron}, ${expected[3]}::timestamptz, ${timezone}) as fifth
        from durably.schedules where id = ${id(i)}`;
    assert.equal(s.last_run_at.getTime(), ms(expected[3]), what);
    assert.equal(s.last_promise_id, ticks[3].id);
    assert.equal(Number(s.occurrence), 4);
    assert.equal(s.next_run_at.getTime(), s.fifth.getTime(), `${what}: next_run_at is the run after the last tick`);
  }
  // the New York hourly schedule goes on with 08:00 UTC (03:00 EST); the next call continues without duplicates
  const [{ created: more }] = await sql<{ created: number }[]>`select created from durably.tick(100, 2)`;
  assert.equal(more, 2 * cases.length);
  const nyHourly = await ticksOf(sql, id(3));
  assert.deepEqual(nyHourly.slice(4).map((x) => x.tags['durably:tick']), ['2026-11-01T08:00:00.000Z', '2026-11-01T09:00:00.000Z']);
  for (const i of cases.keys()) {
    const ticks = await ticksOf(sql, id(i));
    assert.equal(ticks.length, 6);
    for (let k = 1; k < ticks.length; k++) assert.ok(ticks[k].at > ticks[k - 1].at, 'increasing, no duplicates');
  }
});

// ---------------------------------------------------------------------------
// 9. Bad input, 11. pg_cron

test('bad input: InvalidArgumentError from TypeScript, DU002 from SQL, nothing written', async (t) => {
  const db = await testDatabase();
  const c = await client(t, db);
  const bad: [string, () => Promise<unknown>][] = [
    ['an invalid cron', () => c.schedule('bad', '61 * * * *', 'tick')],
    ['a cron with too few fields', () => c.schedule('bad', '* * *', 'tick')],
    ['H (rejected by the SQL side only)', () => c.schedule('bad', 'H * * * *', 'tick')],
    ['an unknown timezone', () => c.schedule('bad', '* * * * *', 'tick', c.options({ timezone: 'Mars/Olympus_Mons' }))],
    ['{ every: 0 }', () => c.schedule('bad', { every: 0 }, 'tick')],
    ['{ every: -5 }', () => c.schedule('bad', { every: -5 }, 'tick')],
    ['{ every: NaN }', () => c.schedule('bad', { every: Number.NaN }, 'tick')],
    ['a template without {timestamp} or {occurrence}', () => c.schedule('bad', '* * * * *', 'tick', c.options({ idTemplate: 'job-{schedule}' }))],
    ['an invalid overlap', () => c.schedule('bad', '* * * * *', 'tick', c.options({ overlap: 'sometimes' as any }))],
    ['an invalid catch-up', () => c.schedule('bad', '* * * * *', 'tick', c.options({ catchup: 'maybe' as any }))],
    ['a negative catch-up window', () => c.schedule('bad', '* * * * *', 'tick', c.options({ catchupWindow: -1 }))],
    ['an empty function name', () => c.schedule('bad', '* * * * *', '')],
    ['an invalid group', () => c.schedule('bad', '* * * * *', 'tick', c.options({ group: 'no spaces' }))],
    ['an empty id', () => c.schedule('', '* * * * *', 'tick')],
  ];
  for (const [what, make] of bad) {
    await assert.rejects(make(), (err: any) => {
      assert.ok(err instanceof InvalidArgumentError, `${what}: ${err}`);
      assert.equal(err.code, 'INVALID_ARGUMENT');
      return true;
    }, what);
  }
  const sqlBad: [string, string | null, Record<string, unknown>][] = [
    ['an invalid cron', '61 * * * *', {}],
    ['an unknown timezone', '* * * * *', { timezone: 'Mars/Olympus_Mons' }],
    ['every_ms 0', null, { every_ms: 0 }],
    ['both a cron and every_ms', '* * * * *', { every_ms: 1000 }],
    ['neither', null, {}],
    ['a template without {timestamp} or {occurrence}', '* * * * *', { id_template: 'static' }],
    ['an invalid overlap', '* * * * *', { overlap: 'sometimes' }],
    ['an invalid catch-up', '* * * * *', { catchup: 'maybe' }],
    ['args not an array', '* * * * *', { args: { a: 1 } }],
    ['timeout 0', '* * * * *', { timeout_ms: 0 }],
  ];
  for (const [what, cron, opts] of sqlBad) {
    await assert.rejects(db.sql`select * from durably.create_schedule('bad', ${cron}, 'tick', ${JSON.stringify(opts)}::text::jsonb)`,
      (err: any) => {
        assert.equal(err.code, 'DU002', `${what}: ${err.message}`);
        return true;
      }, what);
  }
  await assert.rejects(db.sql`select * from durably.create_schedule('bad', '* * * * *', '', '{}')`, (err: any) => err.code === 'DU002');
  const [{ schedules, promises }] = await db.sql<{ schedules: number; promises: number }[]>`
    select (select count(*)::int from durably.schedules) as schedules, (select count(*)::int from durably.promises) as promises`;
  assert.deepEqual({ schedules, promises }, { schedules: 0, promises: 0 }, 'nothing written');
  await assert.rejects(c.schedules.pause('bad'), NotFoundError);
  await assert.rejects(db.sql`select * from durably.resume_schedule('bad')`, (err: any) => err.code === 'DU003');
});

test('install_pg_cron() without the pg_cron extension raises DU002 naming pg_cron', async () => {
  const { sql } = catchDb;
  const [{ n }] = await sql<{ n: number }[]>`select count(*)::int as n from pg_extension where extname = 'pg_cron'`;
  assert.equal(n, 0, 'pg_cron is not installed in the test database');
  await assert.rejects(sql`select durably.install_pg_cron()`, (err: any) => {
    assert.equal(err.code, 'DU002');
    assert.match(err.message, /pg_cron/);
    return true;
  });
  await assert.rejects(sql`select durably.install_pg_cron('5 seconds')`, (err: any) => err.code === 'DU002');
});

// ---------------------------------------------------------------------------
// 10. Concurrent tickers

test('8 concurrent tick() callers over 20 every-second schedules with backlogs: no tick twice, none lost', async (t) => {
  const db = await testDatabase();
  const { sql } = db;
  const ids = Array.from({ length: 20 }, (_, i) => `conc-${String(i).padStart(2, '0')}`);
  for (const id of ids) await sql`select 1 from durably.create_schedule(${id}, '* * * * * *', 'tick', '{"group":"nobody"}')`;
  // backlogs of 10 to 29 seconds
  await sql`update durably.schedules set next_run_at = date_trunc('second', now()) - (10 + substr(id, 6)::int) * interval '1 second'`;
  const starts = new Map((await sql<{ id: string; next_run_at: Date }[]>`select id, next_run_at from durably.schedules`)
    .map((r) => [r.id, r.next_run_at.getTime()]));

  const callers = Array.from({ length: 8 }, () => connection(t, db.url));
  let created = 0;
  let calls = 0;
  const until = Date.now() + 3000;
  await Promise.all(callers.map(async (conn) => {
    while (Date.now() < until) {
      // small limits: many calls, each taking a few schedules and a few of their ticks
      const [row] = await conn<{ created: number }[]>`select created from durably.tick(3, 4)`;
      created += row.created;
      calls++;
    }
  }));
  const end = await dbNow(sql);

  const rows = await sql<{ id: string; next_run_at: Date; occurrence: number }[]>`select id, next_run_at, occurrence from durably.schedules order by id`;
  let total = 0;
  for (const s of rows) {
    const ticks = await ticksOf(sql, s.id);
    total += ticks.length;
    assert.equal(ticks[0].at, starts.get(s.id), `${s.id}: starts at its backlog's first tick`);
    assertConsecutive(ticks, SECOND, s.id);
    assert.equal(ticks.at(-1)!.at + SECOND, s.next_run_at.getTime(), `${s.id}: next_run_at follows the last tick`);
    assert.ok(s.next_run_at.getTime() > end - 2 * SECOND, `${s.id}: caught up (next run ${iso(s.next_run_at.getTime())})`);
    assert.equal(Number(s.occurrence), ticks.length);
    assert.equal(new Set(ticks.map((x) => x.at)).size, ticks.length);
  }
  assert.equal(created, total, 'the callers together created each tick once');
  t.diagnostic(`${calls} tick() calls by 8 callers created ${total} ticks over 20 schedules`);
});
