/**
 * 1. Throughput: N no-op invocations enqueued in bulk (chunks of 1000: durably
 * invoke_many, graphile-worker addJobs), then drained by one worker at
 * concurrency C. enqueue/s = N / enqueue time; completed/s = N / (worker
 * start -> every job's completion committed, confirmed in the database).
 * durably runs twice: tuned (graphile-worker's local queue size claimed
 * ahead) and with its defaults (only concurrency given), each compared with
 * graphile-worker tuned; the defaults' target is ≥ 1.0×. CPU per completed
 * job over the drain: the PostgreSQL instance's (when it runs on this
 * machine, bench/lib/cpu.ts) and this process's (the worker runs here unless
 * --worker-process); durably's targets are below graphile-worker's.
 */
import { connect } from '../../src/db.js';
import { invokeMany } from '../lib/db.js';
import { childDrainer, localDrainer } from '../lib/drain.js';
import { GROUP, graphileJobsLeft, graphileUtils, type DurablySetup, type SystemName } from '../lib/systems.js';
import { fmtSummary, summarize, table, until } from '../lib/stats.js';
import { processCpuSeconds, ServerCpu } from '../lib/cpu.js';
import type { BenchContext, WorkloadResult } from '../lib/context.js';

export interface ThroughputTrial {
  enqueuePerSec: number;
  completedPerSec: number;
  drainMs: number;
  ok: boolean;
  /** CPU µs per completed job over the drain: the server's, this process's (NaN: not measured). */
  serverCpuUs: number;
  nodeCpuUs: number;
}

let serverCpu: Promise<ServerCpu | undefined> | undefined;

/** One throughput trial. */
export async function throughputTrial(ctx: BenchContext, system: SystemName, n: number, concurrency: number,
  label = 'tp', setup: DurablySetup = 'tuned'): Promise<ThroughputTrial & { violation?: string }> {
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
    const drainer = await (opts.workerProcess ? childDrainer : localDrainer)(system, url, concurrency, setup);
    const server = await (serverCpu ??= ServerCpu.locate(sql));
    const server0 = server?.seconds() ?? NaN;
    const node0 = processCpuSeconds();
    const t1 = performance.now();
    await drainer.start();
    const ran = await drainer.reach(n, 300_000);
    const left = system === 'durably'
      ? async () => Number((await sql`select count(*)::int as n from durably.tasks`)[0].n)
      : () => graphileJobsLeft(utils!);
    const done = ran && await until(async () => (await left()) === 0, 60_000, 2);
    const drainMs = performance.now() - t1;
    const perJobUs = (seconds: number) => (seconds / n) * 1e6;
    const serverCpuUs = perJobUs((server?.seconds() ?? NaN) - server0);
    const nodeCpuUs = opts.workerProcess ? NaN : perJobUs(processCpuSeconds() - node0);
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
      serverCpuUs,
      nodeCpuUs,
      violation: ok ? undefined
        : `${system} (${setup}) throughput c=${concurrency}: done=${done} duplicates=${check.duplicates} missing=${check.missing} dbOk=${dbOk}`,
    };
  } finally {
    await sql.end({ timeout: 2 });
    await utils?.release();
    await dbs.drop(url);
  }
}

/** The configurations measured: durably tuned and with its defaults, graphile-worker tuned. */
type Variant = 'durably' | 'durably defaults' | 'graphile';
const VARIANTS: { name: Variant; system: SystemName; setup: DurablySetup }[] = [
  { name: 'durably', system: 'durably', setup: 'tuned' },
  { name: 'durably defaults', system: 'durably', setup: 'defaults' },
  { name: 'graphile', system: 'graphile', setup: 'tuned' },
];

export async function throughput(ctx: BenchContext): Promise<WorkloadResult> {
  const { opts, log } = ctx;
  const n = opts.throughputN;
  const results: Record<string, Record<Variant, ThroughputTrial[]>> = {};
  const violations: string[] = [];
  for (let rep = 0; rep < opts.reps; rep++) {
    for (const c of opts.throughputConcurrency) {
      const order = rep % 2 === 0 ? VARIANTS : [...VARIANTS].reverse();
      for (const v of order) {
        const r = await throughputTrial(ctx, v.system, n, c, v.setup === 'tuned' ? 'tp' : 'tpd', v.setup);
        ((results[c] ??= { durably: [], 'durably defaults': [], graphile: [] })[v.name]).push(r);
        if (r.violation) violations.push(r.violation);
        log(`throughput rep ${rep + 1} c=${c} ${v.name}: enqueue ${r.enqueuePerSec.toFixed(0)}/s, completed ${r.completedPerSec.toFixed(0)}/s, CPU µs/job PostgreSQL ${r.serverCpuUs.toFixed(1)} Node ${r.nodeCpuUs.toFixed(1)}${r.ok ? '' : ' NOT EXACTLY ONCE'}`);
      }
    }
  }
  const rows: string[][] = [];
  const data: Record<string, unknown> = { n, workerProcess: opts.workerProcess, byConcurrency: {} };
  for (const c of opts.throughputConcurrency) {
    const r = results[c];
    type Measure = 'enqueuePerSec' | 'completedPerSec' | 'serverCpuUs' | 'nodeCpuUs';
    const s = (v: Variant, k: Measure) => summarize(r[v].map((t) => t[k]));
    const ratio = (v: Variant, k: Measure) => s(v, k).median / s('graphile', k).median;
    const times = (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)}×` : '—');
    for (const v of VARIANTS) {
      rows.push([`${v.name} c=${c}`, fmtSummary(s(v.name, 'enqueuePerSec')), fmtSummary(s(v.name, 'completedPerSec')),
        fmtSummary(s(v.name, 'serverCpuUs'), 1), fmtSummary(s(v.name, 'nodeCpuUs'), 1), r[v.name].every((t) => t.ok) ? 'yes' : 'NO']);
    }
    rows.push([`ratio durably÷graphile c=${c}`, times(ratio('durably', 'enqueuePerSec')), times(ratio('durably', 'completedPerSec')),
      times(ratio('durably', 'serverCpuUs')), times(ratio('durably', 'nodeCpuUs')), '']);
    const defaults = ratio('durably defaults', 'completedPerSec');
    rows.push([`ratio durably defaults÷graphile tuned c=${c} (target ≥ 1.0 /s, < 1.0 CPU)`, '', `${defaults.toFixed(2)}×${defaults >= 1 ? '' : ' (below target)'}`,
      times(ratio('durably defaults', 'serverCpuUs')), times(ratio('durably defaults', 'nodeCpuUs')), '']);
    const summary = (v: Variant) => ({ enqueuePerSec: s(v, 'enqueuePerSec'), completedPerSec: s(v, 'completedPerSec'),
      serverCpuUs: s(v, 'serverCpuUs'), nodeCpuUs: s(v, 'nodeCpuUs'), ok: r[v].every((t) => t.ok) });
    (data.byConcurrency as Record<string, unknown>)[c] = {
      durably: summary('durably'),
      durablyDefaults: summary('durably defaults'),
      graphile: summary('graphile'),
      ratio: {
        enqueue: ratio('durably', 'enqueuePerSec'), completed: ratio('durably', 'completedPerSec'), defaultsCompleted: defaults,
        serverCpu: ratio('durably', 'serverCpuUs'), nodeCpu: ratio('durably', 'nodeCpuUs'),
        defaultsServerCpu: ratio('durably defaults', 'serverCpuUs'), defaultsNodeCpu: ratio('durably defaults', 'nodeCpuUs'),
      },
    };
  }
  return {
    name: 'throughput',
    tables: [table(`1. Throughput: ${n.toLocaleString('en-US')} no-op invocations, bulk enqueue (chunks of 1000) then one worker drains${opts.workerProcess ? ' (worker in a child process)' : ''} — median (min–max) of ${opts.reps}`,
      ['system', 'enqueue /s', 'completed /s', 'PostgreSQL CPU µs/job', 'Node CPU µs/job', 'exactly once'], rows)],
    data,
    violations,
  };
}
