/**
 * `npm run bench [-- options]`: durably against graphile-worker 0.18 (its best
 * documented configuration) on the same Postgres, in fresh databases that are
 * dropped at the end. See bench/README.md.
 *
 *   --reps N            repetitions per workload (default 3; --quick: 1)
 *   --quick             tiny sizes, 1 rep (development; a minute or so)
 *   --worker-process    throughput: drain in a child process instead of the bench process
 *   --only a,b          workloads: ceiling,throughput,latency,steps,backlog,cron,fanin,tracing,flowcontrol,longflow,resume
 *   --out FILE          JSON results (default bench/results.json)
 *
 * DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test) names the
 * server; only its credentials and host are used, databases are bench_*.
 */
import { writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { fileURLToPath } from 'node:url';
import { BenchDatabases } from './lib/db.js';
import type { BenchContext, BenchOptions, WorkloadResult } from './lib/context.js';
import { ceiling, type Ceiling } from './workloads/ceiling.js';
import { throughput } from './workloads/throughput.js';
import { latency } from './workloads/latency.js';
import { steps } from './workloads/steps.js';
import { backlog } from './workloads/backlog.js';
import { cron } from './workloads/cron.js';
import { fanIn } from './workloads/fanin.js';
import { tracing } from './workloads/tracing.js';
import { flowControl } from './workloads/flowcontrol.js';
import { longflow } from './workloads/longflow.js';
import { resume } from './workloads/resume.js';

const ALL = ['ceiling', 'throughput', 'latency', 'steps', 'backlog', 'cron', 'fanin', 'tracing', 'flowcontrol', 'longflow', 'resume'] as const;
type Name = (typeof ALL)[number];

function parseArgs(argv: string[]) {
  const flags = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const [k, v] = a.slice(2).split('=', 2);
    if (v !== undefined) flags.set(k, v);
    else if (argv[i + 1] !== undefined && !argv[i + 1].startsWith('--') && ['reps', 'only', 'out'].includes(k)) flags.set(k, argv[++i]);
    else flags.set(k, true);
  }
  for (const k of flags.keys()) {
    if (!['reps', 'quick', 'worker-process', 'only', 'out', 'help'].includes(k)) throw new Error(`unknown option --${k}`);
  }
  return flags;
}

function options(flags: Map<string, string | true>): BenchOptions {
  const quick = flags.has('quick');
  const o: BenchOptions = quick
    ? {
      reps: 1, quick, workerProcess: false,
      throughputN: 1000, throughputConcurrency: [10, 50],
      latencyN: 50, latencyGapMs: 20,
      stepsFunctions: 100, stepsPerFunction: 10, longflowSteps: 200, longflowSuspends: 50,
      resumeBacklog: 10_000, resumeWorkflows: 200,
      backlogSizes: [1000, 10_000, 100_000], backlogDrain: 1000, backlogConcurrency: 50, retainedSettled: 100_000,
      cronEvaluations: 2000, cronTicks: 1000, fanInCallers: 200, ceilingSeconds: 1,
    }
    : {
      reps: 3, quick, workerProcess: false,
      throughputN: 20_000, throughputConcurrency: [10, 50],
      latencyN: 500, latencyGapMs: 20,
      stepsFunctions: 1000, stepsPerFunction: 10, longflowSteps: 1000, longflowSuspends: 200,
      resumeBacklog: 100_000, resumeWorkflows: 200,
      backlogSizes: [10_000, 100_000, 1_000_000], backlogDrain: 5_000, backlogConcurrency: 50, retainedSettled: 1_000_000,
      cronEvaluations: 20_000, cronTicks: 10_000, fanInCallers: 1000, ceilingSeconds: 3,
    };
  if (flags.has('reps')) o.reps = Math.max(1, Number(flags.get('reps')));
  o.workerProcess = flags.has('worker-process');
  return o;
}

async function main() {
  const flags = parseArgs(process.argv.slice(2));
  if (flags.has('help')) {
    console.log((await import('node:fs')).readFileSync(fileURLToPath(import.meta.url), 'utf8').split('*/')[0]);
    return;
  }
  const opts = options(flags);
  const only = flags.has('only') ? String(flags.get('only')).split(',').map((s) => s.trim()) as Name[] : [...ALL];
  for (const n of only) if (!ALL.includes(n)) throw new Error(`unknown workload ${n} (${ALL.join(', ')})`);
  const out = flags.has('out') ? String(flags.get('out')) : fileURLToPath(new URL('./results.json', import.meta.url));
  const url = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test';
  const started = Date.now();
  const dbs = new BenchDatabases(url);
  const log = (m: string) => console.error(`[bench ${((Date.now() - started) / 1000).toFixed(0).padStart(4)} s] ${m}`);
  const ctx: BenchContext = { dbs, opts, log };
  const results: WorkloadResult[] = [];
  let ceil: Ceiling | undefined;
  const server = await dbs.serverInfo();
  const cpu = cpus()[0]?.model ?? 'unknown';
  const header = [
    `durably bench — ${new Date().toISOString()}`,
    `CPU: ${cpu} × ${cpus().length}; Node ${process.version}`,
    `Postgres: ${server.version}; synchronous_commit=${server.synchronousCommit}`,
    `reps ${opts.reps}${opts.quick ? ', --quick sizes' : ''}${opts.workerProcess ? ', --worker-process' : ''}`,
  ].join('\n');
  console.log(header);
  const interrupted = () => { log('interrupted: dropping bench databases'); void dbs.dropAll().finally(() => process.exit(130)); };
  // A pool left idle on a database the bench drops (drop ... with force) may
  // emit the termination as an unhandled 'error' event: not a bench failure.
  process.on('uncaughtException', (err) => {
    if ((err as { code?: string }).code === '57P01') { log(`ignored: ${err.message} (idle pool on a dropped bench database)`); return; }
    console.error(err);
    void dbs.dropAll().finally(() => process.exit(1));
  });
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  try {
    const run: Record<Name, () => Promise<WorkloadResult>> = {
      ceiling: async () => { const r = await ceiling(ctx); ceil = r.ceiling; return r; },
      throughput: () => throughput(ctx),
      latency: () => latency(ctx),
      steps: () => steps(ctx),
      backlog: () => backlog(ctx),
      cron: () => cron(ctx),
      fanin: () => fanIn(ctx),
      tracing: () => tracing(ctx),
      flowcontrol: () => flowControl(ctx),
      longflow: () => longflow(ctx),
      resume: () => resume(ctx),
    };
    for (const name of only) {
      const t = Date.now();
      const r = await run[name]();
      results.push(r);
      for (const tbl of r.tables) console.log(tbl);
      log(`${name} took ${((Date.now() - t) / 1000).toFixed(0)} s`);
    }
  } finally {
    await dbs.dropAll();
  }

  const summary = summarizeTargets(results, ceil);
  console.log(summary.text);
  const violations = results.flatMap((r) => r.violations);
  console.log(violations.length ? `\nEXACTLY-ONCE VIOLATIONS:\n${violations.join('\n')}` : '\nEvery job ran exactly once (handler counts and database checked).');
  console.log(`\ntotal ${((Date.now() - started) / 1000).toFixed(0)} s; results in ${out}`);
  writeFileSync(out, JSON.stringify({
    date: new Date(started).toISOString(), cpu, cpus: cpus().length, node: process.version, postgres: server.version,
    synchronousCommit: server.synchronousCommit, options: opts, durationSec: (Date.now() - started) / 1000,
    ceiling: ceil ?? null, workloads: Object.fromEntries(results.map((r) => [r.name, r.data])), targets: summary.targets, violations,
  }, null, 2));
  if (violations.length) process.exitCode = 1;
}

function summarizeTargets(results: WorkloadResult[], ceil: Ceiling | undefined) {
  const by = Object.fromEntries(results.map((r) => [r.name, r.data])) as Record<string, any>;
  const targets: { target: string; measured: string; met: boolean | null }[] = [];
  const fractions: string[][] = [];
  const c10 = ceil?.c10.median;
  const c1 = ceil?.c1.median;
  const frac = (v: number, base?: number) => (base ? `${((v / base) * 100).toFixed(0)} %` : 'n/a (run ceiling)');
  if (by.throughput) {
    const bc = by.throughput.byConcurrency;
    const top = bc[50] ?? bc[Object.keys(bc).at(-1)!];
    targets.push({ target: 'completed/s ≥ 1.5× graphile-worker at concurrency 50',
      measured: `${top.ratio.completed.toFixed(2)}× (${top.durably.completedPerSec.median.toFixed(0)} vs ${top.graphile.completedPerSec.median.toFixed(0)} /s)`,
      met: top.ratio.completed >= 1.5 });
    for (const [c, v] of Object.entries<any>(bc)) {
      for (const [what, key, defaultsKey] of [['PostgreSQL', 'serverCpu', 'defaultsServerCpu'], ['Node', 'nodeCpu', 'defaultsNodeCpu']]) {
        const worst = Math.max(v.ratio[key], v.ratio[defaultsKey]);
        targets.push({ target: `${what} CPU per completed job below graphile-worker's at concurrency ${c} (tuned and defaults)`,
          measured: Number.isFinite(worst) ? `${v.ratio[key].toFixed(2)}× / ${v.ratio[defaultsKey].toFixed(2)}×` : 'not measured',
          met: Number.isFinite(worst) ? worst < 1 : null });
      }
      fractions.push([`throughput completed/s c=${c}`, v.durably.completedPerSec.median.toFixed(0), frac(v.durably.completedPerSec.median, c10)]);
    }
  }
  if (by.latency) {
    const l = by.latency;
    targets.push({ target: 'enqueue→start p50 ≤ graphile-worker\'s',
      measured: `${l.durably.p50.median.toFixed(2)} vs ${l.graphile.p50.median.toFixed(2)} ms (${l.ratio.p50.toFixed(2)}×)`, met: l.ratio.p50 <= 1 });
    targets.push({ target: 'enqueue→start p99 < 25 ms', measured: `${l.durably.p99.median.toFixed(2)} ms`, met: l.durably.p99.median < 25 });
    if (c1) fractions.push(['latency p50 (ms) in single-commit times', l.durably.p50.median.toFixed(2), `${(l.durably.p50.median / (1000 / c1)).toFixed(1)} commits`]);
  }
  if (by.steps) {
    const s = by.steps.durably.stepsPerSec.median;
    const best = Math.max(by.steps.dbos.stepsPerSec.median, by.steps.absurdEstimate);
    targets.push({ target: 'steps/s ≥ 5× the best durable peer (DBOS in this run; Absurd estimated from it by PEERS.md)',
      measured: `${s.toFixed(0)} steps/s = ${(s / best).toFixed(2)}× (DBOS ${by.steps.dbos.stepsPerSec.median.toFixed(0)}, Absurd ≈ ${by.steps.absurdEstimate.toFixed(0)})`,
      met: s >= 5 * best });
    fractions.push(['steps/s', s.toFixed(0), frac(s, c10)]);
  }
  if (by.backlog) {
    const cases = Object.values<any>(by.backlog.cases);
    const first = cases[0];
    for (const c of cases.slice(1)) {
      const what = c.retained
        ? `${c.retained.toLocaleString('en-US')} settled retained`
        : `${c.n.toLocaleString('en-US')} pending`;
      // 1M pending: at least 90 %; the others within 20 %
      const bar = !c.retained && c.n >= 1_000_000 ? 0.9 : 0.8;
      targets.push({ target: `backlog completed/s with ${what} ≥ ${bar * 100} % of ${first.n.toLocaleString('en-US')} pending`,
        measured: `${(c.vsFirst * 100).toFixed(0)} % (${c.durably.median.toFixed(0)} vs ${first.durably.median.toFixed(0)} /s)`, met: c.vsFirst >= bar });
    }
    for (const c of cases) fractions.push([`backlog completed/s, ${c.n.toLocaleString('en-US')} pending${c.retained ? ' + retained' : ''}`, c.durably.median.toFixed(0), frac(c.durably.median, c10)]);
  }
  if (by.tracing) {
    const t = by.tracing;
    targets.push({ target: 'completed/s with an OpenTelemetry SDK (no-op exporter) ≥ 90 % of without',
      measured: `${(t.ratio * 100).toFixed(0)} % (${t.sdk.median.toFixed(0)} vs ${t.none.median.toFixed(0)} /s)`, met: t.ratio >= 0.9 });
  }
  if (by.flowcontrol) {
    const f = by.flowcontrol;
    targets.push({ target: 'completed/s with 1,000 keys at concurrency 1 ≥ 50 % of no limit',
      measured: `${(f.ratio * 100).toFixed(0)} % (${f.limited.median.toFixed(0)} vs ${f.none.median.toFixed(0)} /s)`, met: f.ratio >= 0.5 });
  }
  if (by.longflow) {
    const l = by.longflow;
    targets.push({ target: `a ${l.steps}-step workflow ≤ ${l.target}× the time of ${l.steps} one-step invocations`,
      measured: `${l.ratio.toFixed(2)}× (${l.loopMs.median.toFixed(0)} vs ${l.invocationsMs.median.toFixed(0)} ms)`, met: l.ratio <= l.target });
  }
  const lines = ['\n### Targets'];
  for (const t of targets) lines.push(`- [${t.met === null ? '?' : t.met ? 'MET' : 'MISSED'}] ${t.target}: ${t.measured}`);
  if (fractions.length) {
    lines.push(`\n### durably as a fraction of the ceiling (${c10 ? `${c10.toFixed(0)} commits/s with 10 connections` : 'not measured'}${c1 ? `, ${(1000 / c1).toFixed(3)} ms per commit with 1` : ''})`);
    for (const [what, v, f] of fractions) lines.push(`- ${what}: ${v} → ${f}`);
  }
  return { text: lines.join('\n'), targets };
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
