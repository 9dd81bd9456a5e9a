/**
 * 6. Fan-in: M callers in one process, all awaiting `result()` on one
 * Durably client (one LISTEN connection, one Settlements map); the promises
 * are settled from another connection and each caller's wake-up is timed
 * from the moment its settle call was issued, and from the moment it
 * returned (committed; 0 for a caller woken before its settler heard back),
 * which leaves out the settlement's own commit: target p99 ≤ 10 ms.
 *   a) individual: durably.resolve(id) one per transaction, 10 settlers at once
 *   b) burst: one durably.settle_many of all M ids in one statement
 */
import { connect, textArray } from '../../src/db.js';
import { makeDurably } from '../lib/systems.js';
import { fmt, percentiles, sleep, summarize, table, until, type Percentiles } from '../lib/stats.js';
import type { BenchContext, WorkloadResult } from '../lib/context.js';

/** Settle committed -> caller wakes, p99 (ms). */
const TARGET_P99_MS = 10;

type Trial = { p: Percentiles; committed: Percentiles; settleMs: number; ok: boolean };

async function fanInTrial(ctx: BenchContext, mode: 'individual' | 'burst'): Promise<Trial> {
  const { dbs, opts } = ctx;
  const m = opts.fanInCallers;
  const url = await dbs.fresh('durably', `fan${mode}`);
  const client = makeDurably(url, 10);
  const settler = connect(url, { max: 10, name: 'bench-settler' });
  try {
    const ids = Array.from({ length: m }, (_, i) => `f-${i}`);
    await settler`select count(*) from unnest(${textArray(ids)}::text[]) i, durably.create_promise(i, 'external', null, p_timeout_ms => 3600000)`;
    const issued = new Map<string, number>();
    const returned = new Map<string, number>();
    const woken = new Map<string, number>();
    const latencies: number[] = [];
    let woke = 0;
    let failed = 0;
    const waits = ids.map(async (id) => {
      try {
        const h = await client.get(id);
        const v = await h.result();
        woken.set(id, performance.now());
        latencies.push(woken.get(id)! - issued.get(id)!);
        if (v !== 1) failed++;
      } catch {
        failed++;
      }
      woke++;
    });
    // every caller has its handle and is waiting (get() and the read in result() done)
    await sleep(500);
    await until(async () => {
      const [{ n }] = await settler`select count(*)::int as n from pg_stat_activity where datname = current_database() and state = 'active' and application_name like 'durably%' and query not ilike 'listen%'`;
      return n === 0;
    }, 10_000, 50);
    await sleep(200);
    await dbs.checkpoint();
    const t0 = performance.now();
    if (mode === 'individual') {
      let next = 0;
      await Promise.all(Array.from({ length: 10 }, async () => {
        while (next < m) {
          const id = ids[next++];
          issued.set(id, performance.now());
          await settler`select 1 from durably.resolve(${id}, '1')`;
          returned.set(id, performance.now());
        }
      }));
    } else {
      const t = performance.now();
      for (const id of ids) issued.set(id, t);
      await settler`select count(*) from durably.settle_many(${textArray(ids)}::text[],
        array_fill('resolved'::text, array[${m}::int]), array_fill('1'::jsonb, array[${m}::int]))`;
      const r = performance.now();
      for (const id of ids) returned.set(id, r);
    }
    const settleMs = performance.now() - t0;
    await Promise.race([Promise.all(waits), sleep(30_000)]);
    const afterCommit = [...woken].map(([id, t]) => Math.max(0, t - returned.get(id)!));
    return { p: percentiles(latencies), committed: percentiles(afterCommit), settleMs, ok: woke === m && failed === 0 };
  } finally {
    await client.stop();
    await settler.end({ timeout: 2 });
    await dbs.drop(url);
  }
}

export async function fanIn(ctx: BenchContext): Promise<WorkloadResult> {
  const { opts, log } = ctx;
  const res: Record<'individual' | 'burst', Trial[]> = { individual: [], burst: [] };
  for (let rep = 0; rep < opts.reps; rep++) {
    for (const mode of ['individual', 'burst'] as const) {
      const r = await fanInTrial(ctx, mode);
      res[mode].push(r);
      log(`fan-in rep ${rep + 1} ${mode}: settle ${r.settleMs.toFixed(0)} ms, wake p50 ${r.p.p50.toFixed(2)} p99 ${r.p.p99.toFixed(2)} max ${r.p.max.toFixed(2)} ms; `
        + `after commit p50 ${r.committed.p50.toFixed(2)} p99 ${r.committed.p99.toFixed(2)} ms (target p99 ≤ ${TARGET_P99_MS} ms)${r.ok ? '' : ' NOT ALL WOKE'}`);
    }
  }
  const keys = ['p50', 'p90', 'p99', 'max'] as const;
  const data: Record<string, unknown> = { callers: opts.fanInCallers, targetP99Ms: TARGET_P99_MS };
  const rows = (['individual', 'burst'] as const).map((mode) => {
    const s = Object.fromEntries(keys.map((k) => [k, summarize(res[mode].map((r) => r.p[k]))]));
    const settle = summarize(res[mode].map((r) => r.settleMs));
    const committed = Object.fromEntries(keys.map((k) => [k, summarize(res[mode].map((r) => r.committed[k]))]));
    data[mode] = { ...s, settleMs: settle, afterCommit: committed };
    return [mode === 'individual' ? `${opts.fanInCallers} × resolve(), 10 settlers` : `1 × settle_many(${opts.fanInCallers})`,
      fmt(settle.median, 0), ...keys.map((k) => fmt(s[k].median, 2)), fmt(committed.p50.median, 2), fmt(committed.p99.median, 2),
      res[mode].every((r) => r.ok) ? 'yes' : 'NO'];
  });
  return {
    name: 'fanin',
    tables: [table(`6. Fan-in: ${opts.fanInCallers} callers awaiting result() on one client; settle call issued -> caller wakes, ms — median of ${opts.reps}`,
      ['settled by', 'all settled ms', 'p50', 'p90', 'p99', 'max', 'after commit p50', `after commit p99 (target ≤ ${TARGET_P99_MS})`, 'all woke'], rows)],
    data,
    violations: [...res.individual, ...res.burst].some((r) => !r.ok) ? ['fan-in: a caller did not wake with the value'] : [],
  };
}
