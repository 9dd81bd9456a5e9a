/**
 * 5. Cron: durably.cron_next evaluations per second in SQL (one query over
 * generate_series, one evaluation per row, a different `after` each), for a
 * few expressions and zones; and the catch-up of an every-second schedule
 * whose next_run_at is T seconds in the past: `select * from durably.tick(1, 2T)`
 * creates T (+1) missed ticks (promise + task each) in one transaction.
 */
import { connect } from '../../src/db.js';
import { GROUP } from '../lib/systems.js';
import { fmt, fmtSummary, summarize, table } from '../lib/stats.js';
import type { BenchContext, WorkloadResult } from '../lib/context.js';

const EXPRESSIONS: [string, string][] = [
  ['*/5 * * * *', 'UTC'],
  ['0 30 9-17 * * MON-FRI', 'UTC'],
  ['0 2 * * *', 'Europe/Berlin'],
  ['0 0 L * *', 'America/New_York'],
];

export async function cron(ctx: BenchContext): Promise<WorkloadResult> {
  const { dbs, opts, log } = ctx;
  const n = opts.cronEvaluations;
  const evals: Record<string, number[]> = {};
  const ticks: { ms: number; created: number; perSec: number; ok: boolean }[] = [];
  for (let rep = 0; rep < opts.reps; rep++) {
    const url = await dbs.fresh('durably', 'cron');
    const sql = connect(url, { max: 1, name: 'bench-client' });
    try {
      await dbs.checkpoint();
      for (const [expr, tz] of EXPRESSIONS) {
        const key = `${expr} (${tz})`;
        // warm (plan, catalog caches)
        await sql`select count(durably.cron_next(${expr}, t, ${tz})) from generate_series(now(), now() + interval '99 minutes', interval '1 minute') t`;
        const t0 = performance.now();
        const [{ c }] = await sql`select count(durably.cron_next(${expr}, t, ${tz}))::int as c
          from generate_series(timestamptz '2026-01-01 00:00:00+00', timestamptz '2026-01-01 00:00:00+00' + (${n - 1}::int * interval '7 minutes 13 seconds'),
                               interval '7 minutes 13 seconds') t`;
        const ms = performance.now() - t0;
        if (c !== n) throw new Error(`cron_next returned ${c} of ${n}`);
        (evals[key] ??= []).push((n / ms) * 1000);
        log(`cron rep ${rep + 1} ${key}: ${((n / ms) * 1000).toFixed(0)} evaluations/s`);
      }

      const T = opts.cronTicks;
      await sql`select * from durably.create_schedule('catchup', '* * * * * *', 'noop', ${JSON.stringify({ group: GROUP })}::text::jsonb)`;
      await sql`update durably.schedules set next_run_at = date_trunc('second', now()) - ${T}::int * interval '1 second' where id = 'catchup'`;
      await dbs.checkpoint();
      const t0 = performance.now();
      const [{ created }] = await sql`select created from durably.tick(1, ${2 * T}::int)`;
      const ms = performance.now() - t0;
      const [{ p, t }] = await sql`select (select count(*)::int from durably.promises) as p, (select count(*)::int from durably.tasks) as t`;
      // T missed ticks plus the ones due while tick() ran (at most a few)
      const ok = created >= T && created <= T + 5 && p === created && t === created;
      ticks.push({ ms, created, perSec: (created / ms) * 1000, ok });
      log(`cron rep ${rep + 1} catch-up: ${created} ticks in ${ms.toFixed(0)} ms${ok ? '' : ' MISMATCH'} (promises ${p}, tasks ${t})`);
    } finally {
      await sql.end({ timeout: 2 });
      await dbs.drop(url);
    }
  }
  const rows = EXPRESSIONS.map(([e, tz]) => {
    const key = `${e} (${tz})`;
    return [`cron_next('${e}', t, '${tz}')`, fmtSummary(summarize(evals[key]))];
  });
  const tickMs = summarize(ticks.map((t) => t.ms));
  const tickRate = summarize(ticks.map((t) => t.perSec));
  return {
    name: 'cron',
    tables: [
      table(`5a. Cron: cron_next evaluations in one SQL query over ${n.toLocaleString('en-US')} rows — median (min–max) of ${opts.reps}`,
        ['expression', 'evaluations /s'], rows),
      table(`5b. Cron catch-up: tick() creating ${opts.cronTicks.toLocaleString('en-US')} missed every-second ticks in one call — median (min–max) of ${opts.reps}`,
        ['measure', 'value'], [
          ['time for tick(1, 2T), ms', fmtSummary(tickMs)],
          ['ticks created /s', fmtSummary(tickRate)],
          ['ticks created (each run)', ticks.map((t) => fmt(t.created, 0)).join(', ')],
        ]),
    ],
    data: { evaluations: n, perExpression: Object.fromEntries(Object.entries(evals).map(([k, v]) => [k, summarize(v)])),
      catchup: { ticks: opts.cronTicks, ms: tickMs, perSec: tickRate, created: ticks.map((t) => t.created) } },
    violations: ticks.some((t) => !t.ok) ? ['cron: catch-up did not create exactly the missed ticks'] : [],
  };
}
