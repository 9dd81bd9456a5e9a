/**
 * Schedules under faults (sql/schedules.sql): a schedule whose ticks cannot
 * be created must not stop the others, and buffer_one must buffer behind a
 * tick that suspends on its own timer.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { Durably, InvalidArgumentError, type Context } from '../src/index.js';
import type { Sql } from '../src/db.js';
import { testDatabase } from './helpers/db.js';
import { waitFor } from './helpers/wait.js';

const db = await testDatabase();
const sql = db.sql;
const quiet = () => {};

function durably(t: TestContext, config: ConstructorParameters<typeof Durably>[0] = {}, url = db.url): Durably {
  const d = new Durably({ url, pollMs: 100, graceMs: 200, log: quiet, ...config });
  t.after(() => d.stop());
  return d;
}

async function scheduleRow(q: Sql, id: string) {
  const [row] = await q<{ next_run_at: Date; last_error: { code: string; message: string; failures: number } | null;
    retry_at: Date | null; db_now: Date; retry_due: boolean }[]>`
    select next_run_at, last_error, retry_at, now() as db_now, retry_at <= now() as retry_due
      from durably.schedule_list where id = ${id}`;
  return row;
}

test('defect: one bad schedule stops every schedule', async (t) => {
  // Creation checks the longest id the template can produce: DU002, nothing written.
  const longId = 'x'.repeat(490);
  const codeOf = (err: unknown) => (err as { code?: string }).code;
  await assert.rejects(sql`select * from durably.create_schedule(${longId}, null, 'f', '{"every_ms": 1000}')`,
    (err) => codeOf(err) === 'DU002' && /longer than 512/.test((err as Error).message));
  await assert.rejects(sql`select * from durably.create_schedule('s', null, 'f',
      ${JSON.stringify({ every_ms: 1000, id_template: `${'y'.repeat(480)}-{occurrence}-{timestamp}` })}::text::jsonb)`,
    (err) => codeOf(err) === 'DU002' && /id template/.test((err as Error).message));
  await assert.rejects(sql`select * from durably.create_schedule('s', null, 'f',
      ${JSON.stringify({ every_ms: 1000, id_template: 'a\n{timestamp}' })}::text::jsonb)`,
    (err) => codeOf(err) === 'DU002' && /control characters/.test((err as Error).message));
  const d = durably(t, { group: 'defect-4' });
  await assert.rejects(d.schedule(longId, { every: 1000 }, 'f'), InvalidArgumentError);
  const [{ n }] = await sql`select count(*)::int as n from durably.schedules`;
  assert.equal(n, 0, 'nothing written');

  // A schedule whose ticks cannot be created (one stored before the check
  // existed), next to a good one, both due.
  for (const id of ['bad', 'good']) {
    await sql`select 1 from durably.create_schedule(${id}, null, 'f', '{"every_ms": 3600000, "group": "nobody"}')`;
  }
  await sql`update durably.schedules set next_run_at = now() - interval '1 second'`;
  await sql`update durably.schedules set id_template = ${`${longId}{timestamp}`} where id = 'bad'`;
  const due = (await scheduleRow(sql, 'bad')).next_run_at;

  const [first] = await sql<{ created: number; next_run_at: Date }[]>`select * from durably.tick()`;
  assert.equal(first.created, 1, 'the good schedule ticked');
  const [good] = await sql`select id from durably.promises where tags->>'durably:schedule' = 'good'`;
  assert.ok(good, 'the good tick exists');
  let bad = await scheduleRow(sql, 'bad');
  assert.equal(bad.last_error?.code, 'DU001');
  assert.match(bad.last_error!.message, /invalid promise id/);
  assert.equal(bad.last_error!.failures, 1);
  assert.equal(bad.next_run_at.getTime(), due.getTime(), 'the failed tick is not skipped: it is tried again');
  assert.ok(bad.retry_at! > bad.db_now, 'tried again later, not on every call');
  assert.ok(first.next_run_at > bad.db_now, 'tick() reports a next run in the future: a ticker does not spin');
  const [again] = await sql<{ created: number }[]>`select * from durably.tick()`;
  assert.equal(again.created, 0, 'nothing due until the retry time');

  // After its backoff the bad schedule is tried again, and fails again.
  await waitFor(async () => (await scheduleRow(sql, 'bad')).retry_due,
    { what: 'the retry time', timeoutMs: 5000 });
  await sql`select * from durably.tick()`;
  bad = await scheduleRow(sql, 'bad');
  assert.equal(bad.last_error!.failures, 2);

  // Fixed (its template replaced): the error is gone and it ticks.
  await sql`update durably.schedules set id_template = '{schedule}.{timestamp}' where id = 'bad'`;
  await waitFor(async () => (await scheduleRow(sql, 'bad')).retry_due,
    { what: 'the retry time', timeoutMs: 5000 });
  const [fixed] = await sql<{ created: number }[]>`select * from durably.tick()`;
  assert.equal(fixed.created, 1, 'the missed tick is created (catch-up all)');
  bad = await scheduleRow(sql, 'bad');
  assert.equal(bad.last_error, null);
  assert.equal(bad.retry_at, null);
  const [tick] = await sql<{ id: string }[]>`select id from durably.promises where tags->>'durably:schedule' = 'bad'`;
  assert.equal(tick.id, `bad.${due.toISOString()}`, 'with its original tick time');
});

test('defect: buffer_one skips ticks when the running tick suspends', async (t) => {
  const SLEEP = 2000;
  const own = await testDatabase(); // its ticker must not meet the other test's schedules
  const d = durably(t, { group: 'defect-8', inProcessSleepMs: 20 }, own.url);
  d.register('napper', async (ctx: Context) => {
    await ctx.sleep(SLEEP); // longer than inProcessSleepMs: the tick suspends on its timer
    return ctx.id;
  });
  await d.start();
  await d.schedule('napping', { every: 300 }, 'napper', d.options({ overlap: 'buffer_one' }));

  const ticks = await waitFor(async () => {
    const rows = await own.sql<{ id: string; state: string; created_at: Date; settled_at: Date | null }[]>`
      select id, state, created_at, settled_at from durably.promises
       where tags->>'durably:schedule' = 'napping' order by created_at`;
    return rows.filter((r) => r.settled_at).length >= 4 ? rows : undefined;
  }, { timeoutMs: 30_000, intervalMs: 100, what: 'four ticks to settle' });
  await d.schedules.delete('napping');
  const settled = ticks.filter((x) => x.settled_at);
  for (let i = 1; i < settled.length; i++) {
    const [prev, x] = [settled[i - 1].settled_at!.getTime(), settled[i]];
    t.diagnostic(`tick ${i}: created ${prev - x.created_at.getTime()} ms before its predecessor settled, ` +
      `settled ${x.settled_at!.getTime() - prev} ms after it`);
  }
  for (let i = 1; i < settled.length; i++) {
    const [prev, x] = [settled[i - 1], settled[i]];
    assert.equal(x.state, 'resolved');
    assert.ok(x.created_at < prev.settled_at!,
      `${x.id} was created after ${prev.id} settled: the ticks due while ${prev.id} slept were skipped, not buffered`);
    assert.ok(x.settled_at!.getTime() - prev.settled_at!.getTime() >= SLEEP - 50,
      `${x.id} ran while ${prev.id} still ran`);
    if (i >= 2) assert.ok(x.created_at >= settled[i - 2].settled_at!, `${x.id}: two ticks waited at once`);
  }
});

test('tick() refuses batch arguments out of range (DU002)', async () => {
  const du002 = (pattern: RegExp) => (err: unknown) =>
    (err as { code?: string }).code === 'DU002' && pattern.test((err as Error).message);
  await assert.rejects(sql`select * from durably.tick(0)`, du002(/invalid limit/));
  await assert.rejects(sql`select * from durably.tick(1001)`, du002(/invalid limit/));
  await assert.rejects(sql`select * from durably.tick(null)`, du002(/invalid limit/));
  await assert.rejects(sql`select * from durably.tick(50, 0)`, du002(/invalid max ticks/));
  await assert.rejects(sql`select * from durably.tick(50, 100001)`, du002(/invalid max ticks/));
});
