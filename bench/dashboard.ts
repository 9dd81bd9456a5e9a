/**
 * Dashboard page times on a database with 1M promises:
 *   npx tsx bench/dashboard.ts [--promises 1000000] [--reps 5]
 * Makes its own database (DATABASE_URL's server, or an embedded PostgreSQL),
 * fills it in bulk (roots settled, failed and pending with their tasks, the
 * ticks of a schedule, workflows with steps), then asks every page over HTTP
 * and prints the median and worst of `reps` answers. Exits 1 when a page's
 * median is over 300 ms. Not part of `npm test`: filling takes about 15 s.
 */
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import { connect } from '../src/db.js';
import { migrate } from '../src/migrate.js';
import { startEmbedded } from '../src/embedded.js';
import { serveDashboard } from '../src/dashboard/index.js';
import { databaseUrl } from './lib/db.js';

const { values } = parseArgs({ options: { promises: { type: 'string', default: '1000000' }, reps: { type: 'string', default: '5' } } });
const N = Number(values.promises);
const REPS = Number(values.reps);
const TARGET_MS = 300;

const embedded = process.env.DATABASE_URL ? undefined : await startEmbedded(`.durably/bench-dashboard-${process.pid}`, { persistent: false });
const adminUrl = process.env.DATABASE_URL ?? embedded!.url;
const name = `bench_dashboard_${randomBytes(4).toString('hex')}`;
const admin = connect(adminUrl, { max: 1 });
await admin.unsafe(`create database ${name}`);
const url = databaseUrl(adminUrl, name);
const sql = connect(url, { max: 2 });
try {
  await migrate(sql);
  const t0 = Date.now();
  // Roots created over the last 2 hours: 90 % resolved, 5 % rejected, 5 % pending with a ready task.
  await sql.unsafe(`
    insert into durably.promises (id, state, kind, func, args, value, timeout_at, tags, root_id, created_at, settled_at)
    select 'job-' || i, s.state, 'invoke', 'f' || (i % 20), jsonb_build_array(i),
           case s.state when 'resolved' then to_jsonb(i) when 'rejected' then '{"name":"Error","message":"failed"}'::jsonb end,
           now() + interval '1 day', jsonb_build_object('shop', 'shop-' || (i % 100)), 'job-' || i, c.at,
           case when s.state <> 'pending' then c.at + interval '50 ms' end
      from generate_series(1, ${N}) i
      cross join lateral (select now() - (${N} - i) * (interval '2 hours' / ${N}) as at) c
      cross join lateral (select case when i % 20 = 0 then 'pending' when i % 20 = 1 then 'rejected' else 'resolved' end as state) s`);
  await sql.unsafe(`
    insert into durably.tasks (promise_id, promise_seq, group_name, func, available_at)
    select p.id, p.seq, 'g' || (p.seq % 3), p.func, p.created_at from durably.promises p where p.state = 'pending'`);
  await sql.unsafe(`insert into durably.deadlines (promise_seq, timeout_at) select seq, timeout_at from durably.promises where state = 'pending'`);
  await sql`select durably.create_schedule('nightly', '0 2 * * *', 'report')`;
  await sql.unsafe(`
    insert into durably.promises (id, state, kind, func, args, value, timeout_at, tags, root_id, created_at, settled_at)
    select 'nightly.' || i, 'resolved', 'invoke', 'report', '[]', 'null', now(), jsonb_build_object('durably:schedule', 'nightly', 'durably:tick', i::text),
           'nightly.' || i, now() - i * interval '1 minute', now() - i * interval '1 minute' + interval '1 s'
      from generate_series(1, 1000) i`);
  // A workflow with 200 steps.
  await sql.unsafe(`
    insert into durably.promises (id, state, kind, func, args, value, timeout_at, parent_id, root_id, created_at, settled_at)
    select 'wf.' || i, 'resolved', 'step', 'step' || i, null, to_jsonb(i), now(), 'wf', 'wf', now() - interval '1 min' + i * interval '100 ms', now() - interval '1 min' + i * interval '100 ms'
      from generate_series(0, 199) i`);
  await sql.unsafe(`
    insert into durably.promises (id, state, kind, func, args, value, timeout_at, root_id, created_at, settled_at)
    values ('wf', 'resolved', 'invoke', 'workflow', '[]', '1', now(), 'wf', now() - interval '61 s', now() - interval '30 s')`);
  await sql.unsafe('vacuum analyze durably.promises');
  await sql.unsafe('vacuum analyze durably.tasks');
  const [{ n }] = await sql<{ n: number }[]>`select count(*)::int as n from durably.promises`;
  console.log(`filled ${n} promises in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  const served = await serveDashboard({ url, port: 0 });
  const [{ mid }] = await sql<{ mid: number }[]>`select (max(seq) / 2)::bigint as mid from durably.promises`;
  const hourAgo = new Date(Date.now() - 3_600_000).toISOString();
  const pages = [
    '', 'promises', 'promises?state=rejected', 'promises?state=pending&func=f0', 'promises?pattern=job-99*',
    'promises?tag=shop%3Dshop-7', `promises?from=${hourAgo}&to=${new Date(Date.now() - 1_800_000).toISOString()}`,
    `promises?before=${mid}`, 'promises?state=rejected_timedout', 'promises?all=1&kind=step', 'promises/job-500000', 'promises/wf',
    'bulk-cancel?func=f0', 'bulk-cancel?func=nope', 'schedules', 'schedules/nightly', 'workers', 'tasks',
  ];
  const rows: [string, number, number][] = [];
  for (const page of pages) {
    const times: number[] = [];
    for (let i = 0; i <= REPS; i++) {
      const start = performance.now();
      const r = await fetch(`${served.url}${page}`);
      await r.text();
      if (r.status !== 200) throw new Error(`/${page} answered ${r.status}`);
      if (i > 0) times.push(performance.now() - start); // the first answer warms the cache
    }
    times.sort((a, b) => a - b);
    rows.push([`/${page}`, times[Math.floor(times.length / 2)], times[times.length - 1]]);
  }
  await served.close();
  const width = Math.max(...rows.map((r) => r[0].length));
  console.log(`${'page'.padEnd(width)}  median ms  worst ms`);
  for (const [page, median, worst] of rows) {
    console.log(`${page.padEnd(width)}  ${median.toFixed(1).padStart(9)}  ${worst.toFixed(1).padStart(8)}${median > TARGET_MS ? '  over target' : ''}`);
  }
  process.exitCode = rows.some((r) => r[1] > TARGET_MS) ? 1 : 0;
} finally {
  await sql.end();
  await admin.unsafe(`drop database if exists ${name} with (force)`);
  await admin.end();
  await embedded?.stop();
}
