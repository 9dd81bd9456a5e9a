/**
 * 1. Throughput: N no-op invocations enqueued in bulk (chunks of 1000: durably
 * invoke_many, graphile-worker addJobs), then drained by one worker at
 * concurrency C. enqueue/s = N / enqueue time; completed/s = N / (worker
 * start -> every job's completion committed, confirmed in the database).
 */
import { connect } from '../../src/db.js';
import { invokeMany } from '../lib/db.js';
import { childDrainer, localDrainer } from '../lib/drain.js';
import { GROUP, graphileJobsLeft, graphileUtils, type SystemName } from '../lib/systems.js';
import { fmtSummary, summarize, table, until } from '../lib/stats.js';
import type { BenchContext, WorkloadResult } from '../lib/context.js';

export interface ThroughputTrial { enqueuePerSec: number; completedPerSec: number; drainMs: number; ok: boolean }

/** One throughput trial. */
export async function throughputTrial(ctx: BenchContext, system: SystemName, n: number, concurrency: number,
  label = 'tp'): Promise<ThroughputTrial & { violation?: string }> {
  const { dbs, opts } = ctx;
  const url = await dbs.fresh(system, `${label}${concurrency}`);
  const ids = Array.from({ length: n }, (_, i) => `t-${i}`);
  const sql = connect(url, { max: 2, name: 'bench-client' });
  const utils = system === 'graphile' ? await graphileUtils(url) : undefined;
  try {
    await dbs.checkpoint();
    // enqueue
    const t0 = performance.now();
    if (system === 'durably') {
      const created = await invokeMany(sql, ids, 'noop', () => [], GROUP, 1000);
      if (created !== n) throw new Error(`durably created ${created} of ${n}`);
    } else {
      for (let i = 0; i < n; i += 1000) {
        await utils!.addJobs(ids.slice(i, i + 1000).map((id) => ({ identifier: 'noop', payload: { id } })));
      }
    }
    const enqueueMs = performance.now() - t0;

    // drain
    const drainer = await (opts.workerProcess ? childDrainer : localDrainer)(system, url, concurrency);
    const t1 = performance.now();
    await drainer.start();
    const ran = await drainer.reach(n, 300_000);
    const left = system === 'durably'
      ? async () => Number((await sql`select count(*)::int as n from durably.tasks`)[0].n)
      : () => graphileJobsLeft(utils!);
    const done = ran && await until(async () => (await left()) === 0, 60_000, 2);
    const drainMs = performance.now() - t1;
    const check = await drainer.stop(ids);

    // verify in the database: every invocation completed, once
    let dbOk = true;
    if (system === 'durably') {
      const [r] = await sql`select count(*) filter (where state = 'resolved')::int as resolved, count(*)::int as total,
        (select count(*)::int from durably.tasks) as tasks from durably.promises`;
      dbOk = r.resolved === n && r.total === n && r.tasks === 0;
    } else {
      dbOk = (await graphileJobsLeft(utils!)) === 0;
    }
    const ok = done && check.ok && dbOk;
    return {
      enqueuePerSec: (n / enqueueMs) * 1000,
      completedPerSec: (n / drainMs) * 1000,
      drainMs,
      ok,
      violation: ok ? undefined
        : `${system} throughput c=${concurrency}: done=${done} duplicates=${check.duplicates} missing=${check.missing} dbOk=${dbOk}`,
    };
  } finally {
    await sql.end({ timeout: 2 });
    await utils?.release();
    await dbs.drop(url);
  }
}

export async function throughput(ctx: BenchContext): Promise<WorkloadResult> {
  const { opts, log } = ctx;
  const n = opts.throughputN;
  const results: Record<string, Record<SystemName, ThroughputTrial[]>> = {};
  const violations: string[] = [];
  for (let rep = 0; rep < opts.reps; rep++) {
    for (const c of opts.throughputConcurrency) {
      const order: SystemName[] = rep % 2 === 0 ? ['durably', 'graphile'] : ['graphile', 'durably'];
      for (const system of order) {
        const r = await throughputTrial(ctx, system, n, c);
        ((results[c] ??= { durably: [], graphile: [] })[system]).push(r);
        if (r.violation) violations.push(r.violation);
        log(`throughput rep ${rep + 1} c=${c} ${system}: enqueue ${r.enqueuePerSec.toFixed(0)}/s, completed ${r.completedPerSec.toFixed(0)}/s${r.ok ? '' : ' NOT EXACTLY ONCE'}`);
      }
    }
  }
  const rows: string[][] = [];
  const data: Record<string, unknown> = { n, workerProcess: opts.workerProcess, byConcurrency: {} };
  for (const c of opts.throughputConcurrency) {
    const r = results[c];
    const s = (sys: SystemName, k: 'enqueuePerSec' | 'completedPerSec') => summarize(r[sys].map((t) => t[k]));
    const ratio = (k: 'enqueuePerSec' | 'completedPerSec') => s('durably', k).median / s('graphile', k).median;
    for (const sys of ['durably', 'graphile'] as SystemName[]) {
      rows.push([`${sys} c=${c}`, fmtSummary(s(sys, 'enqueuePerSec')), fmtSummary(s(sys, 'completedPerSec')),
        r[sys].every((t) => t.ok) ? 'yes' : 'NO']);
    }
    rows.push([`ratio durably÷graphile c=${c}`, `${ratio('enqueuePerSec').toFixed(2)}×`, `${ratio('completedPerSec').toFixed(2)}×`, '']);
    (data.byConcurrency as Record<string, unknown>)[c] = {
      durably: { enqueuePerSec: s('durably', 'enqueuePerSec'), completedPerSec: s('durably', 'completedPerSec'), ok: r.durably.every((t) => t.ok) },
      graphile: { enqueuePerSec: s('graphile', 'enqueuePerSec'), completedPerSec: s('graphile', 'completedPerSec'), ok: r.graphile.every((t) => t.ok) },
      ratio: { enqueue: ratio('enqueuePerSec'), completed: ratio('completedPerSec') },
    };
  }
  return {
    name: 'throughput',
    tables: [table(`1. Throughput: ${n.toLocaleString('en-US')} no-op invocations, bulk enqueue (chunks of 1000) then one worker drains${opts.workerProcess ? ' (worker in a child process)' : ''} — median (min–max) of ${opts.reps}`,
      ['system', 'enqueue /s', 'completed /s', 'exactly once'], rows)],
    data,
    violations,
  };
}
