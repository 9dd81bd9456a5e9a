/**
 * 4. Backlog scale: with N pending invocations (10k, 100k, 1M),
 * how fast does one worker (concurrency 50) complete the first K of them, and
 * how long does one claim (claim_tasks, limit 50) take. Also the
 * same with 1M settled promises retained (durably keeps every result).
 * Backlogs are created in SQL (durably.invoke_many over generate_series, in
 * chunks of 50k; graphile-worker addJobs in chunks of 5000), then ANALYZEd
 * (what autovacuum does soon after such a load) and checkpointed.
 * Claim latency is measured on the backlog before the drain, inside
 * transactions that roll back, so the backlog is left as it was.
 */
import postgres from 'postgres';
import { connect, textArray, type Sql } from '../../src/db.js';
import { graphileJobsLeft, graphileUtils, GROUP, type SystemName } from '../lib/systems.js';
import { localDrainer } from '../lib/drain.js';
import { fmt, fmtSummary, percentiles, summarize, table, until, type Percentiles, type Summary } from '../lib/stats.js';
import type { BenchContext, WorkloadResult } from '../lib/context.js';

// invoke_many takes at most 10,000 ids a call.
const CHUNK = 10_000;

export interface BacklogTrial { completedPerSec: number; claim?: Percentiles; ok: boolean; fillMs: number; lostAtStop: number }

export async function fillDurably(sql: Sql, n: number, prefix = 'b-'): Promise<void> {
  for (let lo = 1; lo <= n; lo += CHUNK) {
    const hi = Math.min(n, lo + CHUNK - 1);
    const k = hi - lo + 1;
    await sql`select count(*) from durably.invoke_many(
      array(select ${prefix} || g from generate_series(${lo}::int, ${hi}::int) g),
      array_fill('noop'::text, array[${k}::int]), array_fill('[]'::jsonb, array[${k}::int]), ${GROUP})`;
  }
}

async function retainSettled(sql: Sql, n: number): Promise<void> {
  for (let lo = 1; lo <= n; lo += 250_000) {
    const hi = Math.min(n, lo + 249_999);
    await sql`insert into durably.promises (id, state, kind, func, args, value, timeout_at, root_id, settled_at, created_at)
      select 'old-' || g, 'resolved', 'invoke', 'noop', '[]', 'null', now() + interval '1 day', 'old-' || g,
             now() - interval '1 hour', now() - interval '1 hour'
        from generate_series(${lo}::int, ${hi}::int) g`;
  }
}

/** claim_tasks(limit 50) round trips on the backlog, each in a transaction rolled back. */
export async function claimLatency(url: string, iterations: number): Promise<Percentiles> {
  const sql = postgres(url, { max: 1, onnotice: () => {}, connection: { application_name: 'bench-claim' } });
  const times: number[] = [];
  try {
    for (let i = 0; i < iterations + 3; i++) {
      await sql.begin(async (tx) => {
        await registerClaimer(tx);
        const t = performance.now();
        const rows = await tx`select id from durably.claim_tasks(${CLAIMER}, ${GROUP}, 50, 30000)`;
        const dt = performance.now() - t;
        if (rows.length !== 50) throw new Error(`claim returned ${rows.length} rows`);
        if (i >= 3) times.push(dt);
        throw new Rollback();
      }).catch((e) => { if (!(e instanceof Rollback)) throw e; });
    }
  } finally {
    await sql.end({ timeout: 2 });
  }
  return percentiles(times);
}

class Rollback extends Error {}

/** The worker the claim measurements claim as (registered in their rolled-back transaction): claims take only registered functions. */
const CLAIMER = '00000000-0000-0000-0000-00000000b001';
function registerClaimer(tx: postgres.TransactionSql) {
  return tx`select durably.register_worker(${CLAIMER}, ${GROUP}, 'bench', 0, '{noop}', 30000)`;
}

/**
 * The plan claim_tasks really runs (auto_explain of the nested statement,
 * analyze + buffers): its `picked` subquery, and what the rest of the
 * statement does with it. Falls back to EXPLAIN of the picked subquery alone
 * (a generic plan, as the SQL function plans it) without auto_explain.
 */
export async function explainClaim(url: string): Promise<string> {
  const notices: string[] = [];
  const sql = postgres(url, { max: 1, onnotice: (n) => notices.push(String(n.message)), connection: { application_name: 'bench-explain' } });
  let plan = '';
  try {
    await sql.begin(async (tx) => {
      try {
        await tx.unsafe(`load 'auto_explain'`);
        await tx.unsafe(`set local auto_explain.log_min_duration = 0; set local auto_explain.log_nested_statements = on;
          set local auto_explain.log_analyze = on; set local auto_explain.log_buffers = on; set local auto_explain.log_level = notice;
          set local auto_explain.log_format = text`);
        await registerClaimer(tx);
        await tx`select count(*) from durably.claim_tasks(${CLAIMER}, ${GROUP}, 50, 30000)`;
        const nested = notices.find((n) => /claim|picked/i.test(n) && /Update on tasks|LockRows/.test(n));
        if (nested) {
          plan = nested.slice(nested.search(/\n\S*(Hash Join|Nested Loop|Merge Join|Limit|CTE Scan|Result|Aggregate|Sort|Append|Seq Scan|Index)/) + 1 || 0);
        }
      } catch { /* no auto_explain: fall back below */ }
      throw new Rollback();
    }).catch((e) => { if (!(e instanceof Rollback)) throw e; });
    if (!plan) {
      await sql.begin(async (tx) => {
        await tx.unsafe(`set local plan_cache_mode = force_generic_plan`);
        await tx.unsafe(`prepare bench_picked(text, integer) as
          select t.promise_id, t.state from durably.tasks t
           where t.group_name = $1 and t.available_at <= now()
           order by t.available_at limit $2 for update skip locked`);
        const rows = await tx.unsafe(`explain (analyze, buffers, costs off, summary off) execute bench_picked('${GROUP}', 50)`);
        plan = `(picked subquery only)\n${rows.map((r: any) => r['QUERY PLAN']).join('\n')}`;
        throw new Rollback();
      }).catch((e) => { if (!(e instanceof Rollback)) throw e; });
    }
  } finally {
    await sql.end({ timeout: 2 });
  }
  return plan.trimEnd();
}

/** One backlog trial. */
export async function backlogTrial(ctx: BenchContext, system: SystemName, n: number, retained: number,
  explain: boolean): Promise<BacklogTrial & { plan?: string }> {
  const { dbs, opts } = ctx;
  const k = Math.min(opts.backlogDrain, n);
  const url = await dbs.fresh(system, `bl${n}`);
  const sql = connect(url, { max: 2, name: 'bench-client' });
  const utils = system === 'graphile' ? await graphileUtils(url) : undefined;
  try {
    const tf = performance.now();
    if (system === 'durably') {
      if (retained) await retainSettled(sql, retained);
      await fillDurably(sql, n);
      await sql`analyze durably.tasks`;
      await sql`analyze durably.promises`;
    } else {
      for (let i = 0; i < n; i += 5000) {
        await utils!.addJobs(Array.from({ length: Math.min(5000, n - i) }, (_, j) => ({ identifier: 'noop', payload: { id: `b-${i + j + 1}` } })));
      }
      await sql`analyze graphile_worker._private_jobs`;
    }
    const fillMs = performance.now() - tf;
    let claim: Percentiles | undefined;
    let plan: string | undefined;
    if (system === 'durably') {
      await dbs.checkpoint();
      claim = await claimLatency(url, opts.quick ? 10 : 50);
      if (explain) plan = await explainClaim(url);
    }
    await dbs.checkpoint();
    const resolvedCount = async () => system === 'durably'
      ? Number((await sql`select count(*)::int as n from durably.promises where state = 'resolved' and id like 'b-%'`)[0].n)
      : n - await graphileJobsLeft(utils!);
    // Done when k completions are committed, checked through keys that stay
    // in cache. durably: the backlog was created in one order (sequence
    // numbers 1..n) and is claimed in that order, at most `prefetch` (150)
    // ahead, so the first k completions are among the first k + 1000
    // promises (promises_seq). graphile-worker: the jobs of the runs, by job
    // id. Looking promises up by text id instead would read ~5,000 cold
    // primary key pages of a 1M backlog on every poll.
    const committed = async (jobIds: string[]) => system === 'durably'
      ? Number((await sql`select count(*)::int as n from durably.promises
          where seq <= ${k + 1000} and state = 'resolved'`)[0].n)
      : jobIds.length - Number((await sql`select count(*)::int as n from graphile_worker._private_jobs
          where id = any(${textArray(jobIds)}::bigint[])`)[0].n);
    const drainer = await localDrainer(system, url, opts.backlogConcurrency);
    const t0 = performance.now();
    await drainer.start();
    const ran = await drainer.reach(k, 300_000);
    const jobIds = system === 'graphile' ? drainer.jobIds().slice(0, k) : [];
    const done = ran && await until(async () => (await committed(jobIds)) >= k, 60_000, 2);
    const ms = performance.now() - t0;
    const check = await drainer.stop(null);
    // After stop: every run completed once. durably: a claim still in flight
    // when stop() is called runs its tasks after stop() released the worker's
    // leases, and their settlements are lost when the pool closes; those tasks
    // stay claimed until the lease expires and then run again. Counted
    // separately (lostAtStop): it is a finding about stop(), not about the drain.
    const completed = await resolvedCount();
    const lostAtStop = system === 'durably'
      ? Number((await sql`select count(*)::int as n from durably.tasks where state = 'claimed'`)[0].n) : 0;
    const ok = done && check.duplicates === 0 && completed + lostAtStop === check.ran;
    if (!ok || lostAtStop) ctx.log(`backlog ${system} n=${n}: done=${done} duplicates=${check.duplicates} completed=${completed} ran=${check.ran} lostAtStop=${lostAtStop}`);
    return { completedPerSec: (k / ms) * 1000, claim, ok, fillMs, plan, lostAtStop };
  } finally {
    await sql.end({ timeout: 2 });
    await utils?.release();
    await dbs.drop(url);
  }
}

export async function backlog(ctx: BenchContext): Promise<WorkloadResult> {
  const { opts, log } = ctx;
  const cases: { label: string; n: number; retained: number; systems: SystemName[] }[] = opts.backlogSizes.map((n) => ({
    label: `${n.toLocaleString('en-US')} pending`, n, retained: 0, systems: ['durably', 'graphile'] as SystemName[],
  }));
  if (opts.retainedSettled > 0) {
    const n = opts.backlogSizes[0];
    cases.push({ label: `${n.toLocaleString('en-US')} pending + ${opts.retainedSettled.toLocaleString('en-US')} settled retained`,
      n, retained: opts.retainedSettled, systems: ['durably'] });
  }
  const res = new Map<string, Record<SystemName, BacklogTrial[]>>();
  const plans: Record<string, string> = {};
  for (let rep = 0; rep < opts.reps; rep++) {
    for (const c of cases) {
      const order = rep % 2 === 0 ? c.systems : [...c.systems].reverse();
      for (const system of order) {
        const explain = rep === 0 && system === 'durably';
        const r = await backlogTrial(ctx, system, c.n, c.retained, explain);
        if (r.plan) plans[c.label] = r.plan;
        const entry = res.get(c.label) ?? { durably: [], graphile: [] };
        entry[system].push(r);
        res.set(c.label, entry);
        log(`backlog rep ${rep + 1} ${c.label} ${system}: fill ${(r.fillMs / 1000).toFixed(1)} s, completed ${r.completedPerSec.toFixed(0)}/s` +
          (r.claim ? `, claim p50 ${r.claim.p50.toFixed(2)} ms p99 ${r.claim.p99.toFixed(2)} ms` : '') + (r.ok ? '' : ' NOT EXACTLY ONCE'));
      }
    }
  }
  const rows: string[][] = [];
  const data: Record<string, unknown> = { drain: opts.backlogDrain, concurrency: opts.backlogConcurrency, cases: {} };
  const base = summarize(res.get(cases[0].label)!.durably.map((t) => t.completedPerSec)).median;
  for (const c of cases) {
    const r = res.get(c.label)!;
    const d = summarize(r.durably.map((t) => t.completedPerSec));
    const g: Summary | undefined = r.graphile.length ? summarize(r.graphile.map((t) => t.completedPerSec)) : undefined;
    const p50 = summarize(r.durably.map((t) => t.claim!.p50));
    const p99 = summarize(r.durably.map((t) => t.claim!.p99));
    rows.push([c.label, fmtSummary(d), g ? fmtSummary(g) : 'n/a', g ? `${(d.median / g.median).toFixed(2)}×` : '',
      `${((d.median / base) * 100).toFixed(0)} %`, fmt(p50.median, 2), fmt(p99.median, 2),
      r.durably.map((t) => t.lostAtStop).join('/'),
      [...r.durably, ...r.graphile].every((t) => t.ok) ? 'yes' : 'NO']);
    (data.cases as Record<string, unknown>)[c.label] = { n: c.n, retained: c.retained, durably: d, graphile: g,
      ratio: g ? d.median / g.median : null, vsFirst: d.median / base, claimP50Ms: p50, claimP99Ms: p99,
      lostAtStop: r.durably.map((t) => t.lostAtStop) };
  }
  data.explain = plans;
  const explainText = Object.entries(plans).map(([label, plan]) => `\nclaim_tasks as executed (auto_explain: analyze, buffers), ${label}:\n${plan}`).join('\n');
  return {
    name: 'backlog',
    tables: [table(`4. Backlog scale: complete the first ${opts.backlogDrain.toLocaleString('en-US')} of N pending, concurrency ${opts.backlogConcurrency}; claim = one claim_tasks(limit 50) round trip — median (min–max) of ${opts.reps}`,
      ['backlog', 'durably completed /s', 'graphile completed /s', 'ratio', 'durably vs first row', 'claim p50 ms', 'claim p99 ms', 'durably lost at stop', 'exactly once'], rows) +
      '\n("lost at stop": tasks a durably claim in flight at stop() ran after stop and stayed claimed until lease expiry; expected 0)' +
      '\n' + explainText],
    data,
    violations: [...res.values()].some((r) => [...r.durably, ...r.graphile].some((t) => !t.ok)) ? ['backlog: a run was not exactly once'] : [],
  };
}
