/**
 * durably.cron_next and friends (sql/cron.sql): syntax, day rules,
 * calendars, DST, errors, and a seeded property test against cron-parser v5.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CronExpressionParser } from 'cron-parser';
import { testDatabase } from './helpers/db.js';

const db = await testDatabase();
const { sql } = db;

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

/** `{"a","b"}`: arrays go to the server as literals (the pools fetch no array types). */
function arrayLiteral(xs: readonly string[]): string {
  return `{${xs.map((x) => `"${x.replace(/[\\"]/g, (c) => `\\${c}`)}"`).join(',')}}`;
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString().replace('.000Z', 'Z'));

async function next(expr: string, after: string, tz = 'UTC'): Promise<string | null> {
  const [row] = await sql<{ r: number | null }[]>`
    select extract(epoch from durably.cron_next(${expr}, ${after}::timestamptz, ${tz}))::float8 as r`;
  return row.r === null ? null : iso(row.r * 1000);
}

async function nextN(expr: string, after: string, tz: string, n: number): Promise<string[]> {
  const rows = await sql<{ r: number }[]>`
    select extract(epoch from t)::float8 as r from durably.cron_next_n(${expr}, ${after}::timestamptz, ${tz}, ${n}) t`;
  return rows.map((x) => iso(x.r * 1000)!);
}

async function rejects(expr: string, tz: string, pattern: RegExp): Promise<void> {
  await assert.rejects(next(expr, '2026-01-01T00:00:00Z', tz), (err: any) => {
    assert.equal(err.code, 'DU002', `${expr} in ${tz}: ${err.message}`);
    assert.match(err.message, pattern);
    return true;
  });
}

// ---------------------------------------------------------------------------
// Syntax

test('basic fields, steps, ranges, lists', async () => {
  const at = '2026-01-15T10:07:30Z'; // a Thursday
  const cases: [string, string][] = [
    ['* * * * *', '2026-01-15T10:08:00Z'],
    ['*/5 * * * *', '2026-01-15T10:10:00Z'],
    ['7 * * * *', '2026-01-15T11:07:00Z'], // strictly after: 10:07:30 -> next hour
    ['0 12 * * *', '2026-01-15T12:00:00Z'],
    ['0 9 * * *', '2026-01-16T09:00:00Z'],
    ['15-20 10 * * *', '2026-01-15T10:15:00Z'],
    ['10-40/15 * * * *', '2026-01-15T10:10:00Z'],
    ['50/3 * * * *', '2026-01-15T10:50:00Z'], // 50,53,56,59
    ['1,3,59 * * * *', '2026-01-15T10:59:00Z'],
    ['0 0 1 * *', '2026-02-01T00:00:00Z'],
    ['0 0 * 3 *', '2026-03-01T00:00:00Z'],
    ['0 0 20-25 * *', '2026-01-20T00:00:00Z'],
    ['0 8-17/4 * * *', '2026-01-15T12:00:00Z'], // 8,12,16
    ['? * * * *', '2026-01-15T10:08:00Z'],
    ['0 0 ? * ?', '2026-01-16T00:00:00Z'],
    ['*/2,7 * * * *', '2026-01-15T10:08:00Z'],
    ['0 0 31 * *', '2026-01-31T00:00:00Z'],
    ['05 09 * * *', '2026-01-16T09:05:00Z'], // leading zeros
  ];
  for (const [expr, want] of cases) assert.equal(await next(expr, at), want, expr);
});

test('names, case-insensitive, and day of week 0-7', async () => {
  const at = '2026-01-15T10:07:30Z'; // Thursday
  const cases: [string, string][] = [
    ['0 0 * * SUN', '2026-01-18T00:00:00Z'],
    ['0 0 * * 0', '2026-01-18T00:00:00Z'],
    ['0 0 * * 7', '2026-01-18T00:00:00Z'],
    ['0 0 * * mon-fri', '2026-01-16T00:00:00Z'],
    ['0 0 * * Sat,Sun', '2026-01-17T00:00:00Z'],
    ['0 0 * * 5-7', '2026-01-16T00:00:00Z'],
    ['0 0 * * 6-7', '2026-01-17T00:00:00Z'],
    ['0 0 1 jan *', '2027-01-01T00:00:00Z'],
    ['0 0 1 FEB-APR *', '2026-02-01T00:00:00Z'],
    ['0 0 1 jul,DEC *', '2026-07-01T00:00:00Z'],
    ['0 0 1 jan/5 *', '2026-06-01T00:00:00Z'], // 1,6,11
    ['0 0 * * */3', '2026-01-17T00:00:00Z'], // 0,3,6: Sat
  ];
  for (const [expr, want] of cases) assert.equal(await next(expr, at), want, expr);
});

test('macros', async () => {
  const at = '2026-05-13T10:07:30Z'; // Wednesday
  const cases: [string, string][] = [
    ['@yearly', '2027-01-01T00:00:00Z'],
    ['@annually', '2027-01-01T00:00:00Z'],
    ['@monthly', '2026-06-01T00:00:00Z'],
    ['@weekly', '2026-05-17T00:00:00Z'],
    ['@daily', '2026-05-14T00:00:00Z'],
    ['@midnight', '2026-05-14T00:00:00Z'],
    ['@hourly', '2026-05-13T11:00:00Z'],
    ['@minutely', '2026-05-13T10:08:00Z'],
    ['@secondly', '2026-05-13T10:07:31Z'],
    ['@weekdays', '2026-05-14T00:00:00Z'],
    ['@weekends', '2026-05-16T00:00:00Z'],
    ['  @DAILY ', '2026-05-14T00:00:00Z'],
  ];
  for (const [expr, want] of cases) assert.equal(await next(expr, at), want, expr);
});

test('6-field expressions: seconds', async () => {
  const at = '2026-01-15T10:07:30.250Z';
  assert.equal(await next('* * * * * *', at), '2026-01-15T10:07:31Z');
  assert.equal(await next('*/15 * * * * *', at), '2026-01-15T10:07:45Z');
  assert.equal(await next('10 * * * * *', at), '2026-01-15T10:08:10Z');
  assert.equal(await next('0 0 * * * *', at), '2026-01-15T11:00:00Z');
  assert.equal(await next('30 7 10 * * *', '2026-01-15T10:07:29.999Z'), '2026-01-15T10:07:30Z');
  assert.equal(await next('30 7 10 * * *', '2026-01-15T10:07:30Z'), '2026-01-16T10:07:30Z');
  assert.equal(await next('59 59 23 31 12 *', '2026-06-01T00:00:00Z'), '2026-12-31T23:59:59Z');
  assert.deepEqual(await nextN('*/20 * * * * *', '2026-01-15T10:07:30Z', 'UTC', 4),
    ['2026-01-15T10:07:40Z', '2026-01-15T10:08:00Z', '2026-01-15T10:08:20Z', '2026-01-15T10:08:40Z']);
  // fractional seconds: strictly after, never the same second again
  assert.equal(await next('* * * * * *', '2026-01-15T10:07:30.999Z'), '2026-01-15T10:07:31Z');
});

test('day of month / day of week: OR when both restricted, otherwise only the restricted one', async () => {
  const at = '2026-02-01T00:00:00Z'; // Sunday
  // Friday the 13th style: every 13th OR every Friday
  assert.deepEqual(await nextN('0 0 13 * 5', at, 'UTC', 4),
    ['2026-02-06T00:00:00Z', '2026-02-13T00:00:00Z', '2026-02-20T00:00:00Z', '2026-02-27T00:00:00Z']);
  assert.deepEqual(await nextN('0 0 10 * 1', at, 'UTC', 3),
    ['2026-02-02T00:00:00Z', '2026-02-09T00:00:00Z', '2026-02-10T00:00:00Z']);
  // dom only
  assert.deepEqual(await nextN('0 0 10 * *', at, 'UTC', 2), ['2026-02-10T00:00:00Z', '2026-03-10T00:00:00Z']);
  // dow only
  assert.deepEqual(await nextN('0 0 * * 1', at, 'UTC', 2), ['2026-02-02T00:00:00Z', '2026-02-09T00:00:00Z']);
  // ? is * for this rule; */1 is restricted (as in cron-parser): 1-31 OR Monday = every day
  assert.deepEqual(await nextN('0 0 ? * 1', at, 'UTC', 2), ['2026-02-02T00:00:00Z', '2026-02-09T00:00:00Z']);
  assert.deepEqual(await nextN('0 0 */1 * 1', at, 'UTC', 2), ['2026-02-02T00:00:00Z', '2026-02-03T00:00:00Z']);
  // restricted dom that covers all days, with dow *: every day
  assert.deepEqual(await nextN('0 0 1-31 * *', at, 'UTC', 2), ['2026-02-02T00:00:00Z', '2026-02-03T00:00:00Z']);
});

test('L and #', async () => {
  const at = '2026-01-15T00:00:00Z';
  assert.deepEqual(await nextN('0 0 L * *', at, 'UTC', 4),
    ['2026-01-31T00:00:00Z', '2026-02-28T00:00:00Z', '2026-03-31T00:00:00Z', '2026-04-30T00:00:00Z']);
  assert.deepEqual(await nextN('0 0 L 2 *', '2027-06-01T00:00:00Z', 'UTC', 2), ['2028-02-29T00:00:00Z', '2029-02-28T00:00:00Z']);
  assert.deepEqual(await nextN('0 0 * * 5L', at, 'UTC', 3),
    ['2026-01-30T00:00:00Z', '2026-02-27T00:00:00Z', '2026-03-27T00:00:00Z']);
  assert.deepEqual(await nextN('0 0 * * MON#1', at, 'UTC', 3),
    ['2026-02-02T00:00:00Z', '2026-03-02T00:00:00Z', '2026-04-06T00:00:00Z']);
  // third Thursday; strictly after Jan 15 (itself one)
  assert.deepEqual(await nextN('0 0 * * 4#3', at, 'UTC', 2), ['2026-02-19T00:00:00Z', '2026-03-19T00:00:00Z']);
  // 1st of month OR last Friday
  assert.deepEqual(await nextN('0 0 1 * FRIL', at, 'UTC', 3),
    ['2026-01-30T00:00:00Z', '2026-02-01T00:00:00Z', '2026-02-27T00:00:00Z']);
});

test('calendar: leap years, month ends, year rollover', async () => {
  assert.deepEqual(await nextN('0 0 29 2 *', '2026-01-01T00:00:00Z', 'UTC', 3),
    ['2028-02-29T00:00:00Z', '2032-02-29T00:00:00Z', '2036-02-29T00:00:00Z']);
  // 2100 is not a leap year
  assert.deepEqual(await nextN('0 0 29 2 *', '2096-03-01T00:00:00Z', 'UTC', 1), ['2104-02-29T00:00:00Z']);
  assert.deepEqual(await nextN('0 0 29 2 *', '1999-03-01T00:00:00Z', 'UTC', 1), ['2000-02-29T00:00:00Z']);
  // the 31st only in months that have one
  assert.deepEqual(await nextN('0 0 31 * *', '2026-01-31T00:00:00Z', 'UTC', 3),
    ['2026-03-31T00:00:00Z', '2026-05-31T00:00:00Z', '2026-07-31T00:00:00Z']);
  assert.deepEqual(await nextN('0 0 30 * *', '2026-01-30T00:00:00Z', 'UTC', 2), ['2026-03-30T00:00:00Z', '2026-04-30T00:00:00Z']);
  // year rollover
  assert.equal(await next('59 23 31 12 *', '2026-12-31T23:59:00Z'), '2027-12-31T23:59:00Z');
  assert.equal(await next('* * * * *', '2026-12-31T23:59:00Z'), '2027-01-01T00:00:00Z');
  assert.equal(await next('0 0 1 1 *', '2026-12-31T23:59:59.5Z'), '2027-01-01T00:00:00Z');
  assert.equal(await next('0 0 * * *', '2026-12-31T12:00:00Z', 'Asia/Kolkata'), '2026-12-31T18:30:00Z');
  // month field skips ahead over a year
  assert.equal(await next('0 0 1 3 *', '2026-03-01T00:00:00Z'), '2027-03-01T00:00:00Z');
});

test('cron_parse exposes the expanded fields; cron_validate; cron_next_n', async () => {
  const [p] = await sql<any[]>`select * from durably.cron_parse('*/20 9-17 * JAN,jul MON-FRI')`;
  assert.deepEqual(p.seconds, [0]);
  assert.deepEqual(p.minutes, [0, 20, 40]);
  assert.deepEqual(p.hours, [9, 10, 11, 12, 13, 14, 15, 16, 17]);
  assert.deepEqual(p.months, [1, 7]);
  assert.deepEqual(p.days_of_week, [1, 2, 3, 4, 5]);
  assert.equal(p.dom_restricted, false);
  assert.equal(p.dow_restricted, true);
  const [v] = await sql`select durably.cron_validate('0 9 * * *', 'Europe/Berlin') as ok`;
  assert.equal(v.ok, true);
  assert.deepEqual(await nextN('0 9 * * *', '2026-01-01T00:00:00Z', 'Europe/Berlin', 0), []);
  // a constant expression is compiled once per query (cron_next is inlined)
  const rows = await sql`select durably.cron_next('0 9 * * *', t) from generate_series(timestamptz '2026-01-01', timestamptz '2026-01-02', interval '1 hour') t`;
  assert.equal(rows.length, 25);
  const [nul] = await sql`select durably.cron_next(null, now()) as a, durably.cron_next('* * * * *', null) as b, durably.cron_next('* * * * *', 'infinity') as c`;
  assert.deepEqual([nul.a, nul.b, nul.c], [null, null, null]);
});

// ---------------------------------------------------------------------------
// DST: the documented behaviour (see the header of sql/cron.sql)

test('DST America/New_York 2026: 30 2 * * * and 0 * * * *', async () => {
  const tz = 'America/New_York';
  // Spring forward Sun 2026-03-08 02:00 EST -> 03:00 EDT: 02:30 does not exist
  // and fires at 03:30 EDT (read with the old offset), once.
  assert.deepEqual(await nextN('30 2 * * *', '2026-03-06T12:00:00Z', tz, 4),
    ['2026-03-07T07:30:00Z', '2026-03-08T07:30:00Z', '2026-03-09T06:30:00Z', '2026-03-10T06:30:00Z']);
  // Fall back Sun 2026-11-01 02:00 EDT -> 01:00 EST: 02:30 exists once.
  assert.deepEqual(await nextN('30 2 * * *', '2026-10-30T12:00:00Z', tz, 4),
    ['2026-10-31T06:30:00Z', '2026-11-01T07:30:00Z', '2026-11-02T07:30:00Z', '2026-11-03T07:30:00Z']);
  // Hourly: every real hour, 02:00 skipped in spring, 01:00 twice in autumn.
  assert.deepEqual(await nextN('0 * * * *', '2026-03-08T04:30:00Z', tz, 4),
    ['2026-03-08T05:00:00Z', '2026-03-08T06:00:00Z', '2026-03-08T07:00:00Z', '2026-03-08T08:00:00Z']);
  assert.deepEqual(await nextN('0 * * * *', '2026-11-01T03:30:00Z', tz, 5),
    ['2026-11-01T04:00:00Z', '2026-11-01T05:00:00Z', '2026-11-01T06:00:00Z', '2026-11-01T07:00:00Z', '2026-11-01T08:00:00Z']);
  // from inside the repeated hour, the hourly schedule goes on with the second 01:00
  assert.equal(await next('0 * * * *', '2026-11-01T05:30:00Z', tz), '2026-11-01T06:00:00Z');
  assert.equal(await next('*/30 * * * *', '2026-11-01T05:45:00Z', tz), '2026-11-01T06:00:00Z');
});

test('DST Europe/Berlin 2026: 30 2 * * * and 0 * * * *', async () => {
  const tz = 'Europe/Berlin';
  // Spring forward Sun 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 fires at 03:30 CEST.
  assert.deepEqual(await nextN('30 2 * * *', '2026-03-27T12:00:00Z', tz, 4),
    ['2026-03-28T01:30:00Z', '2026-03-29T01:30:00Z', '2026-03-30T00:30:00Z', '2026-03-31T00:30:00Z']);
  // Fall back Sun 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 happens twice and
  // fires once, at the first (CEST) occurrence.
  assert.deepEqual(await nextN('30 2 * * *', '2026-10-23T12:00:00Z', tz, 4),
    ['2026-10-24T00:30:00Z', '2026-10-25T00:30:00Z', '2026-10-26T01:30:00Z', '2026-10-27T01:30:00Z']);
  // ... also when asked from inside the repeated hour: it already fired
  assert.equal(await next('30 2 * * *', '2026-10-25T01:10:00Z', tz), '2026-10-26T01:30:00Z');
  assert.deepEqual(await nextN('0 * * * *', '2026-03-28T23:30:00Z', tz, 3),
    ['2026-03-29T00:00:00Z', '2026-03-29T01:00:00Z', '2026-03-29T02:00:00Z']);
  assert.deepEqual(await nextN('0 * * * *', '2026-10-24T23:30:00Z', tz, 4),
    ['2026-10-25T00:00:00Z', '2026-10-25T01:00:00Z', '2026-10-25T02:00:00Z', '2026-10-25T03:00:00Z']);
});

test('DST: more gap and repeat cases', async () => {
  const ny = 'America/New_York';
  // both skipped times fire, shifted by the gap
  assert.deepEqual(await nextN('0,30 2 * * *', '2026-03-08T00:00:00Z', ny, 3),
    ['2026-03-08T07:00:00Z', '2026-03-08T07:30:00Z', '2026-03-09T06:00:00Z']);
  // a shifted time that coincides with a real one fires once
  assert.deepEqual(await nextN('30 2,3 * * *', '2026-03-08T00:00:00Z', ny, 3),
    ['2026-03-08T07:30:00Z', '2026-03-09T06:30:00Z', '2026-03-09T07:30:00Z']);
  // repeated times fire at their first occurrence only (hour not every hour)
  assert.deepEqual(await nextN('*/20 1 * * *', '2026-10-31T12:00:00Z', ny, 4),
    ['2026-11-01T05:00:00Z', '2026-11-01T05:20:00Z', '2026-11-01T05:40:00Z', '2026-11-02T06:00:00Z']);
  assert.equal(await next('30 1 * * *', '2026-11-01T06:10:00Z', ny), '2026-11-02T06:30:00Z');
  // 0-23 counts as every hour (as in cron-parser)
  assert.deepEqual(await nextN('30 0-23 * * *', '2026-11-01T05:00:00Z', ny, 2), ['2026-11-01T05:30:00Z', '2026-11-01T06:30:00Z']);
  // Lord Howe: 30-minute DST. Spring 2026-10-04 02:00 -> 02:30 (+10:30 -> +11).
  const lh = 'Australia/Lord_Howe';
  assert.deepEqual(await nextN('15,30 2 * * *', '2026-10-03T12:00:00Z', lh, 3),
    ['2026-10-03T15:30:00Z' /* 02:30 +11, real */, '2026-10-03T15:45:00Z' /* 02:15 shifted to 02:45 */, '2026-10-04T15:15:00Z']);
  // Midnight gaps (Asia/Tehran 2021-03-22 00:00 -> 01:00 until 2022): @daily fires at 01:00
  assert.equal(await next('@daily', '2021-03-21T12:00:00Z', 'Asia/Tehran'), '2021-03-21T20:30:00Z');
});

// ---------------------------------------------------------------------------
// Errors

test('invalid expressions and time zones raise DU002', async () => {
  await rejects('61 * * * *', 'UTC', /invalid cron expression "61 \* \* \* \*": minute 61 out of range 0-59/);
  await rejects('* 24 * * *', 'UTC', /hour 24 out of range 0-23/);
  await rejects('0 0 0 * *', 'UTC', /day of month 0 out of range 1-31/);
  await rejects('0 0 32 * *', 'UTC', /day of month 32 out of range 1-31/);
  await rejects('0 0 * 13 *', 'UTC', /month 13 out of range 1-12/);
  await rejects('0 0 * * 8', 'UTC', /day of week 8 out of range 0-7/);
  await rejects('60 * * * * *', 'UTC', /second 60 out of range 0-59/);
  await rejects('0 10-70 * * *', 'UTC', /hour 70 out of range/);
  await rejects('0 5-2 * * *', 'UTC', /range 5-2 goes backwards/);
  await rejects('*/0 * * * *', 'UTC', /step must be at least 1/);
  await rejects('* * * *', 'UTC', /expected 5 or 6 fields, got 4/);
  await rejects('* * * * * * *', 'UTC', /expected 5 or 6 fields, got 7/);
  await rejects('', 'UTC', /expected 5 or 6 fields, got 0/);
  await rejects('hello world', 'UTC', /expected 5 or 6 fields/);
  await rejects('a b c d e', 'UTC', /invalid cron expression/);
  await rejects('0 0 * FOO *', 'UTC', /unknown name "FOO" in month/);
  await rejects('0 0 * * MONDAY', 'UTC', /unknown name/);
  await rejects('1,,2 * * * *', 'UTC', /empty list item/);
  await rejects('*-5 * * * *', 'UTC', /invalid minute "\*-5"/);
  await rejects('1.5 * * * *', 'UTC', /invalid minute/);
  await rejects('H * * * *', 'UTC', /H \(hashed values\) is not supported/);
  await rejects('0 0 15W * *', 'UTC', /W \(nearest weekday\) is not supported/);
  await rejects('0 0 * * L', 'UTC', /L is not allowed there/);
  await rejects('0 0 * * 1#6', 'UTC', /# needs one weekday and an occurrence 1-5/);
  await rejects('0 0 * * 1-2#2', 'UTC', /# needs/);
  await rejects('@reboot', 'UTC', /unknown macro/);
  await rejects('0 0 30 2 *', 'UTC', /never fires/);
  await rejects('0 0 31 4,6 *', 'UTC', /never fires/);
  await rejects('0 99999999999 * * *', 'UTC', /out of range/);
  await rejects('0 0 * * *', 'Mars/Base', /^unknown timezone "Mars\/Base"$/);
  await rejects('0 0 * * *', '', /unknown timezone ""/);
  await rejects('0 0 * * *', 'UTC+5', /unknown timezone "UTC\+5"/);
  await assert.rejects(sql`select durably.cron_validate('0 0 * * *', 'Nowhere/City')`, { code: 'DU002' });
  await assert.rejects(sql`select durably.cron_parse('0 0 * * 9')`, { code: 'DU002' });
  await assert.rejects(sql`select * from durably.cron_next_n('0 0 * * *', now(), 'Mars/Base', 0)`, { code: 'DU002' });
});

// ---------------------------------------------------------------------------
// Property test against cron-parser v5

/** Small seeded PRNG (mulberry32), so failures reproduce with CRON_SEED. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ZONES = ['UTC', 'America/New_York', 'Europe/Berlin', 'Australia/Lord_Howe', 'Asia/Kolkata',
  'America/Sao_Paulo', 'Pacific/Chatham', 'Asia/Tehran'];
const MONTHS = ['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'];
const DAYS = ['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];

function generator(rand: () => number) {
  const int = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)];
  const name = (v: number, names?: readonly string[], base = 0) =>
    names && v - base < names.length && rand() < 0.4
      ? (rand() < 0.5 ? names[v - base] : names[v - base].toLowerCase()) : String(v);
  function field(lo: number, hi: number, star: number, names?: readonly string[], base = 0): string {
    const r = rand();
    if (r < star) return '*';
    const kind = int(0, 7);
    switch (kind) {
      case 0: return name(int(lo, hi), names, base);
      case 1: {
        const n = int(2, 3);
        const vs = new Set<number>();
        while (vs.size < n) vs.add(int(lo, hi));
        return [...vs].sort((a, b) => a - b).map((v) => name(v, names, base)).join(',');
      }
      case 2: {
        const a = int(lo, hi - 1);
        return `${name(a, names, base)}-${name(int(a + 1, hi), names, base)}`;
      }
      case 3: return `*/${int(2, Math.max(2, Math.floor((hi - lo) / 2)))}`;
      case 4: {
        const a = int(lo, hi - 1);
        return `${a}-${int(a + 1, hi)}/${int(2, 5)}`;
      }
      case 5: return `${int(lo, hi)}/${int(2, 10)}`;
      case 6: {
        // a range plus a single value outside it
        const a = int(lo, hi - 2);
        const b = int(a + 1, hi - 1);
        return `${a}-${b},${int(b + 1, hi)}`;
      }
      default: return '*';
    }
  }
  return function expression(): string {
    const six = rand() < 0.3;
    const sec = rand() < 0.5 ? String(int(0, 59)) : field(0, 59, 0.1);
    const min = rand() < 0.3 ? String(int(0, 59)) : field(0, 59, 0.3);
    const hour = rand() < 0.1 ? pick(['0-23', '*/1']) : field(0, 23, 0.45);
    let dom = field(1, 31, 0.65);
    let mon = field(1, 12, 0.65, MONTHS, 1);
    let dow = field(0, 7, 0.65, DAYS);
    if (rand() < 0.05) dom = 'L';
    if (rand() < 0.04) dow = `${pick(DAYS)}L`;
    else if (rand() < 0.04) dow = `${pick(DAYS)}#${int(1, 4)}`;
    if (rand() < 0.05) dom = '?';
    if (rand() < 0.05) dow = '?';
    if (rand() < 0.05) mon = pick(['*', `${pick(MONTHS)}-DEC`]);
    return `${six ? sec + ' ' : ''}${min} ${hour} ${dom} ${mon} ${dow}`;
  };
}

// UTC offsets (minutes) from the platform's ICU time zone data.
const offsetFormats = new Map<string, Intl.DateTimeFormat>();
function offsetMinutes(tz: string, ms: number): number {
  let f = offsetFormats.get(tz);
  if (!f) offsetFormats.set(tz, (f = new Intl.DateTimeFormat('en-US', { timeZone: tz, timeZoneName: 'longOffset' })));
  const name = f.formatToParts(new Date(ms)).find((p) => p.type === 'timeZoneName')!.value;
  const m = /^GMT(?:([+-])(\d\d):(\d\d))?$/.exec(name);
  if (!m) throw new Error(`offset ${name}`);
  return m[1] ? (m[1] === '-' ? -1 : 1) * (Number(m[2]) * 60 + Number(m[3])) : 0;
}

/** Instants (ms) where the zone's offset changes, from..to. */
function transitions(tz: string, from: number, to: number): number[] {
  const out: number[] = [];
  let prev = offsetMinutes(tz, from);
  for (let t = from + DAY; t <= to; t += DAY) {
    const off = offsetMinutes(tz, t);
    if (off !== prev) {
      let lo = t - DAY;
      let hi = t;
      while (hi - lo > 1000) {
        const mid = lo + Math.floor((hi - lo) / 2000) * 1000;
        if (offsetMinutes(tz, mid) === prev) lo = mid;
        else hi = mid;
      }
      out.push(hi);
      prev = off;
    }
  }
  return out;
}

type Fields = ReturnType<typeof CronExpressionParser.parse>['fields'];

/** Does the wall-clock day match (cron-parser's field values, the documented day rule)? */
function dayMatches(f: Fields, y: number, mo: number, d: number): boolean {
  const dim = new Date(Date.UTC(y, mo, 0)).getUTCDate();
  const dow = new Date(Date.UTC(y, mo - 1, d)).getUTCDay();
  const domValues = f.dayOfMonth.values as (number | string)[];
  const dowValues = f.dayOfWeek.values as (number | string)[];
  const nth = f.dayOfWeek.nthDay;
  const mDom = domValues.includes(d) || (domValues.includes('L') && d === dim);
  const mDow = (dowValues.some((v) => typeof v === 'number' && v % 7 === dow) && (nth <= 0 || Math.ceil(d / 7) === nth))
    || (dowValues.some((v) => typeof v === 'string' && v.endsWith('L') && parseInt(v, 10) % 7 === dow) && d > dim - 7);
  const domStar = f.dayOfMonth.isWildcard;
  const dowStar = f.dayOfWeek.isWildcard;
  if (!domStar && !dowStar) return mDom || mDow;
  if (dowStar) return mDom;
  return mDow;
}

/**
 * The documented semantics, by brute force over wall-clock times in a window:
 * the first firing instant after `after`, looking at wall times up to `until`.
 * Independent of the SQL (shares only cron-parser's parsing of the fields).
 */
function reference(f: Fields, tz: string, after: number, until: number): number | null {
  const allHours = (f.hour.values as number[]).length === 24;
  const off = (ms: number) => offsetMinutes(tz, ms) * 60_000;
  const wallStart = after + off(after) - 3 * HOUR;
  const wallEnd = until + off(until) + 3 * HOUR;
  let best: number | null = null;
  let work = 0;
  const months = f.month.values as number[];
  for (let day = Math.floor(wallStart / DAY) * DAY; day <= wallEnd; day += DAY) {
    const dt = new Date(day);
    const y = dt.getUTCFullYear();
    const mo = dt.getUTCMonth() + 1;
    const d = dt.getUTCDate();
    if (!months.includes(mo) || !dayMatches(f, y, mo, d)) continue;
    for (const h of f.hour.values as number[]) {
      for (const mi of f.minute.values as number[]) {
        for (const s of f.second.values as number[]) {
          const w = day + h * HOUR + mi * 60_000 + s * 1000;
          if (w < wallStart || w > wallEnd) continue;
          if (++work > 2_000_000) throw new Error('reference window too large');
          // instants whose wall time is w: try the offsets in force a day either side
          const before = off(w - 26 * HOUR);
          const afterOff = off(w + 26 * HOUR);
          const real = [...new Set([w - before, w - afterOff])].filter((x) => x + off(x) === w).sort((a, b) => a - b);
          // skipped: read with the earlier offset; repeated: first, both if every hour fires
          const fires = real.length === 0 ? [w - before] : real.length === 1 ? real : allHours ? real : [real[0]];
          for (const x of fires) if (x > after && (best === null || x < best)) best = x;
        }
      }
    }
  }
  return best;
}

test('property: agrees with cron-parser v5 except documented DST differences', async () => {
  const seed = Number(process.env.CRON_SEED ?? 20260101);
  const count = Number(process.env.CRON_SAMPLES ?? 4000);
  const rand = prng(seed);
  const expression = generator(rand);
  const from = Date.UTC(2015, 0, 1);
  const to = Date.UTC(2031, 0, 1);
  const zoneTransitions = new Map(ZONES.map((tz) => [tz, transitions(tz, from - 40 * DAY, to + 400 * DAY)]));

  interface Sample { expr: string; tz: string; after: number; cp: number; fields: Fields }
  const samples: Sample[] = [];
  let skipped = 0;
  while (samples.length < count) {
    const expr = expression();
    const tz = ZONES[Math.floor(rand() * ZONES.length)];
    const ts = zoneTransitions.get(tz)!;
    let after: number;
    if (ts.length && rand() < 0.4) {
      // near a transition, where DST rules matter
      after = ts[Math.floor(rand() * ts.length)] + Math.floor((rand() * 2 - 1) * 26 * HOUR / 1000) * 1000;
      if (rand() < 0.5) after -= Math.floor(rand() * 3) * DAY; // a daily schedule then crosses it
    } else {
      after = from + Math.floor(rand() * (to - from) / 1000) * 1000;
    }
    if (rand() < 0.2) after += Math.floor(rand() * 1000); // fractional seconds
    try {
      const it = CronExpressionParser.parse(expr, { tz, currentDate: new Date(after) });
      samples.push({ expr, tz, after, cp: it.next().getTime(), fields: it.fields });
    } catch {
      skipped++; // cron-parser rejects it (e.g. repeated values) or cannot find a next date
    }
  }

  // ours, in batches of one query each
  const ours: (number | null)[] = [];
  const BATCH = 1000;
  let rate = 0;
  for (let i = 0; i < samples.length; i += BATCH) {
    const batch = samples.slice(i, i + BATCH);
    const started = performance.now();
    const rows = await sql<{ r: number | null }[]>`
      select extract(epoch from durably.cron_next(u.e, u.a, u.tz))::float8 as r
      from unnest(${arrayLiteral(batch.map((s) => s.expr))}::text[],
                  ${arrayLiteral(batch.map((s) => new Date(s.after).toISOString()))}::timestamptz[],
                  ${arrayLiteral(batch.map((s) => s.tz))}::text[]) with ordinality as u(e, a, tz, i)
      order by u.i`;
    const seconds = (performance.now() - started) / 1000;
    if (i === BATCH) rate = batch.length / seconds; // the second batch: warm caches
    ours.push(...rows.map((r) => (r.r === null ? null : r.r * 1000)));
  }

  const near = (tz: string, xs: number[]) =>
    zoneTransitions.get(tz)!.some((t) => xs.some((x) => Math.abs(x - t) <= 3 * HOUR));
  const kinds = new Map<string, { count: number; example: string }>();
  const failures: string[] = [];
  let checkedNear = 0;
  for (let i = 0; i < samples.length; i++) {
    const s = samples[i];
    const mine = ours[i];
    const describe = `${JSON.stringify(s.expr)} in ${s.tz} after ${iso(s.after)}: ours ${iso(mine)}, cron-parser ${iso(s.cp)}`;
    if (mine === s.cp) {
      // agreeing near a transition: still check the documented rule
      if (near(s.tz, [s.after, mine])) {
        checkedNear++;
        const ref = reference(s.fields, s.tz, s.after, mine);
        if (ref !== mine) failures.push(`both differ from the documented rule (expected ${iso(ref)}): ${describe}`);
      }
      continue;
    }
    if (mine === null || !near(s.tz, [s.after, mine, s.cp])) {
      failures.push(`not near a DST transition: ${describe}`);
      continue;
    }
    const ref = reference(s.fields, s.tz, s.after, Math.max(mine, s.cp));
    if (ref !== mine) {
      failures.push(`not the documented rule (expected ${iso(ref)}): ${describe}`);
      continue;
    }
    // Which documented difference is it?
    const off = (ms: number) => offsetMinutes(s.tz, ms);
    const wallCp = s.cp + off(s.cp) * 60_000;
    const cpRepeat = (s.fields.hour.values as number[]).length < 24
      && [s.cp - 2 * HOUR, s.cp - HOUR, s.cp - 30 * 60_000].some((x) => x < s.cp && x + off(x) * 60_000 === wallCp);
    // ours is a skipped wall time read with the offset before a spring-forward
    // that was already behind `after`
    const gapBehind = zoneTransitions.get(s.tz)!.some((t) => t <= s.after && mine >= t && mine < t + 3 * HOUR
      && off(t) > off(t - 1000) && mine - (off(t) - off(t - 1000)) * 60_000 < t);
    const oddZone = ['Australia/Lord_Howe', 'Pacific/Chatham'].includes(s.tz);
    const kind = s.cp <= s.after
      ? 'cron-parser returns an instant that is not after currentDate (its bug, around a fall-back)'
      : cpRepeat
        ? 'cron-parser fires a repeated wall time again at its second occurrence (ours: first occurrence only)'
        : gapBehind && mine < s.cp
          ? 'skipped wall time, shifted past the gap, asked for after the transition: cron-parser forgets it'
          : oddZone
            ? `cron-parser's hour-by-hour stepping mishandles a transition that is not a whole hour on the hour (${s.tz})`
            : null;
    if (!kind) {
      failures.push(`undocumented kind of difference: ${describe}`);
      continue;
    }
    const k = kinds.get(kind) ?? { count: 0, example: describe };
    k.count++;
    kinds.set(kind, k);
  }

  console.log(`# cron property test: seed ${seed}, ${samples.length} samples (${skipped} rejected by cron-parser), `
    + `${samples.length - failures.length - [...kinds.values()].reduce((a, k) => a + k.count, 0)} identical `
    + `(${checkedNear} of them near a DST transition, checked against the documented rule too)`);
  for (const [kind, k] of kinds) console.log(`# documented difference x${k.count}: ${kind}\n#   e.g. ${k.example}`);
  console.log(`# cron_next throughput: ${Math.round(rate)} evaluations/s (one batch of ${BATCH} mixed random expressions, one query)`);
  assert.deepEqual(failures.slice(0, 20), [], `${failures.length} unexplained differences`);
});

test('throughput of typical expressions (printed, not asserted)', async () => {
  const typical = ['*/5 * * * *', '0 9 * * 1-5', '30 2 * * *', '0 0 1 * *', '15,45 8-18 * * MON-FRI', '0 */2 * * *', '@hourly', '0 0 * * SUN'];
  const zones = ['UTC', 'America/New_York', 'Europe/Berlin', 'Asia/Kolkata'];
  const n = 20000;
  const started = performance.now();
  const [row] = await sql`
    select count(durably.cron_next(
      (${arrayLiteral(typical)}::text[])[1 + g % ${typical.length}],
      timestamptz '2026-01-01' + g * interval '37 minutes 13 seconds',
      (${arrayLiteral(zones)}::text[])[1 + g % ${zones.length}])) as n
    from generate_series(1, ${n}) g`;
  const seconds = (performance.now() - started) / 1000;
  assert.equal(Number(row.n), n);
  console.log(`# cron_next throughput: ${Math.round(n / seconds)} evaluations/s (${n} typical expressions, varying per row, one session)`);
});
