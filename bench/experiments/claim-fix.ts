/**
 * Experiment (not part of `npm run bench`): durably as shipped against durably
 * with the proposed claim_tasks of claim_tasks_fix.sql, applied only inside
 * the bench's own fresh databases. Same workloads as bench/run.ts (throughput,
 * backlog), alternating, median of --reps (default 3).
 *
 *   npx tsx bench/experiments/claim-fix.ts [--reps N] [--quick] [--big]
 */
import { readFileSync } from 'node:fs';
import { BenchDatabases } from '../lib/db.js';
import type { BenchContext, BenchOptions } from '../lib/context.js';
import { throughputTrial } from '../workloads/throughput.js';
import { backlogTrial } from '../workloads/backlog.js';
import { fmt, fmtSummary, summarize, table } from '../lib/stats.js';

const argv = process.argv.slice(2);
const quick = argv.includes('--quick');
const big = argv.includes('--big');
const repsAt = argv.indexOf('--reps');
const reps = repsAt >= 0 ? Number(argv[repsAt + 1]) : quick ? 1 : 3;
const fix = readFileSync(new URL('./claim_tasks_fix.sql', import.meta.url), 'utf8');

const opts = {
  reps, quick, big, workerProcess: false, backlogDrain: quick ? 1000 : 5_000, backlogConcurrency: 50,
} as BenchOptions;
const dbs = new BenchDatabases(process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test');
const started = Date.now();
const ctx: BenchContext = { dbs, opts, log: (m) => console.error(`[claim-fix ${((Date.now() - started) / 1000).toFixed(0).padStart(4)} s] ${m}`) };
const variants = { shipped: undefined, fixed: fix } as const;
type V = keyof typeof variants;

try {
  const tpN = quick ? 2000 : 20_000;
  const tp: Record<string, Record<V, number[]>> = {};
  for (let rep = 0; rep < reps; rep++) {
    for (const c of [10, 50]) {
      for (const v of (rep % 2 ? ['fixed', 'shipped'] : ['shipped', 'fixed']) as V[]) {
        const r = await throughputTrial(ctx, 'durably', tpN, c, `x${v}`, variants[v]);
        ((tp[c] ??= { shipped: [], fixed: [] })[v]).push(r.completedPerSec);
        ctx.log(`throughput c=${c} ${v}: ${r.completedPerSec.toFixed(0)}/s${r.ok ? '' : ' NOT EXACTLY ONCE'}`);
      }
    }
  }
  const sizes = quick ? [1000, 10_000] : big ? [10_000, 100_000, 1_000_000] : [10_000, 100_000];
  const bl: Record<string, Record<V, { rate: number; p50: number; p99: number }[]>> = {};
  for (let rep = 0; rep < reps; rep++) {
    for (const n of sizes) {
      for (const v of (rep % 2 ? ['fixed', 'shipped'] : ['shipped', 'fixed']) as V[]) {
        const r = await backlogTrial(ctx, 'durably', n, 0, false, variants[v]);
        ((bl[n] ??= { shipped: [], fixed: [] })[v]).push({ rate: r.completedPerSec, p50: r.claim!.p50, p99: r.claim!.p99 });
        ctx.log(`backlog ${n} ${v}: ${r.completedPerSec.toFixed(0)}/s, claim p50 ${r.claim!.p50.toFixed(2)} ms`);
      }
    }
  }
  const rows: string[][] = [];
  for (const [c, r] of Object.entries(tp)) {
    const s = summarize(r.shipped);
    const f = summarize(r.fixed);
    rows.push([`throughput ${tpN.toLocaleString('en-US')}, c=${c}: completed /s`, fmtSummary(s), fmtSummary(f), `${(f.median / s.median).toFixed(2)}×`]);
  }
  for (const [n, r] of Object.entries(bl)) {
    const s = summarize(r.shipped.map((x) => x.rate));
    const f = summarize(r.fixed.map((x) => x.rate));
    rows.push([`backlog ${Number(n).toLocaleString('en-US')}: completed /s`, fmtSummary(s), fmtSummary(f), `${(f.median / s.median).toFixed(2)}×`]);
    const sp = summarize(r.shipped.map((x) => x.p50));
    const fp = summarize(r.fixed.map((x) => x.p50));
    rows.push([`backlog ${Number(n).toLocaleString('en-US')}: claim p50 ms`, fmt(sp.median, 2), fmt(fp.median, 2), `${(sp.median / fp.median).toFixed(1)}× faster`]);
  }
  console.log(table(`claim_tasks as shipped vs claim_tasks_fix.sql — median (min–max) of ${reps}`, ['measure', 'shipped', 'fixed', 'gain'], rows));
} finally {
  await dbs.dropAll();
}
