/**
 * 9. Flow control: N no-op invocations drained by one worker at concurrency
 * 50, with no limit set, and with each invocation under one of 1,000
 * concurrency keys limited to 1 at a time (keys interleaved in creation
 * order, as customers' work arrives; both enqueued one invocation a call). completed/s = N / (worker start ->
 * every completion committed). durably only: graphile-worker has no
 * comparable limit.
 */
import { connect } from '../../src/db.js';
import { localDrainer } from '../lib/drain.js';
import { GROUP } from '../lib/systems.js';
import { fmtSummary, summarize, table, until } from '../lib/stats.js';
import type { BenchContext, WorkloadResult } from '../lib/context.js';

const KEYS = 1000;
const CONCURRENCY = 50;
type Mode = 'none' | 'keys';

async function trial(ctx: BenchContext, mode: Mode, n: number): Promise<{ completedPerSec: number; ok: boolean }> {
  const url = await ctx.dbs.fresh('durably', `fc${mode}`);
  const sql = connect(url, { max: 10, name: 'bench-client' });
  try {
    if (mode === 'keys') {
      await sql`select durably.set_limit('customer:' || i, 1, null, null) from generate_series(0, ${KEYS - 1}) i`;
    }
    // One invocation a call (a key is an option of the call), in rounds over the keys.
    for (let i = 0; i < n; i += KEYS) {
      await Promise.all(Array.from({ length: Math.min(KEYS, n - i) }, (_, k) => {
        const opts = mode === 'keys' ? { concurrency_key: `customer:${k}` } : {};
        return sql`select 1 from durably.invoke(${`t-${i + k}`}, 'noop', '[]', ${GROUP}, ${JSON.stringify(opts)}::text::jsonb)`;
      }));
    }
    await ctx.dbs.checkpoint();
    const drainer = await localDrainer('durably', url, CONCURRENCY);
    const t0 = performance.now();
    await drainer.start();
    const ran = await drainer.reach(n, 300_000);
    const done = ran && await until(async () => Number((await sql`select count(*)::int as n from durably.tasks`)[0].n) === 0, 60_000, 2);
    const drainMs = performance.now() - t0;
    const check = await drainer.stop(Array.from({ length: n }, (_, i) => `t-${i}`));
    const [r] = await sql`select count(*) filter (where state = 'resolved')::int as resolved from durably.promises`;
    return { completedPerSec: (n / drainMs) * 1000, ok: done && check.ok && r.resolved === n };
  } finally {
    await sql.end({ timeout: 2 });
    await ctx.dbs.drop(url);
  }
}

export async function flowControl(ctx: BenchContext): Promise<WorkloadResult> {
  const { opts, log } = ctx;
  const n = opts.throughputN;
  const runs: Record<Mode, { completedPerSec: number; ok: boolean }[]> = { none: [], keys: [] };
  const violations: string[] = [];
  for (let rep = 0; rep < opts.reps; rep++) {
    const order: Mode[] = rep % 2 === 0 ? ['none', 'keys'] : ['keys', 'none'];
    for (const mode of order) {
      const r = await trial(ctx, mode, n);
      runs[mode].push(r);
      if (!r.ok) violations.push(`flow control ${mode}: not every invocation ran exactly once`);
      log(`flowcontrol rep ${rep + 1} ${mode}: completed ${r.completedPerSec.toFixed(0)}/s${r.ok ? '' : ' NOT EXACTLY ONCE'}`);
    }
  }
  const none = summarize(runs.none.map((r) => r.completedPerSec));
  const keys = summarize(runs.keys.map((r) => r.completedPerSec));
  return {
    name: 'flowcontrol',
    tables: [table(`9. Flow control: ${n.toLocaleString('en-US')} no-op invocations, one worker at concurrency ${CONCURRENCY} — median (min–max) of ${opts.reps}`,
      ['limits', 'completed /s', 'exactly once'], [
        ['none set', fmtSummary(none), runs.none.every((r) => r.ok) ? 'yes' : 'NO'],
        [`${KEYS.toLocaleString('en-US')} keys at concurrency 1`, fmtSummary(keys), runs.keys.every((r) => r.ok) ? 'yes' : 'NO'],
        ['ratio keys÷none', `${(keys.median / none.median).toFixed(2)}×`, ''],
      ])],
    data: { n, concurrency: CONCURRENCY, keys: KEYS, none, limited: keys, ratio: keys.median / none.median },
    violations,
  };
}
