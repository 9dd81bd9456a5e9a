/**
 * 2. Latency: an idle worker (concurrency 10); N invocations enqueued one at
 * a time by a client in the same process, one every gapMs (fixed cadence);
 * latency = enqueue call issued -> handler starts.
 * durably: client.beginRpc on a separate Durably instance (not started);
 * graphile-worker: workerUtils.addJob. Both wake their worker by NOTIFY.
 * Twice: with the worker idle, and at half load: a background stream of
 * no-op invocations (batches every BACKGROUND_TICK_MS, through a connection of
 * its own) at half the c10 capacity measured first (the lower of the two
 * systems' drain rates, so both carry the same stream).
 */
import type { Durably } from '../../src/durably.js';
import type { Runner, WorkerUtils } from 'graphile-worker';
import { connect } from '../../src/db.js';
import { invokeMany } from '../lib/db.js';
import { GROUP, graphileUtils, makeDurably, startGraphile, warmDurably, type SystemName } from '../lib/systems.js';
import { fmt, percentiles, RunCounter, sleep, summarize, table, type Percentiles } from '../lib/stats.js';
import type { BenchContext, WorkloadResult } from '../lib/context.js';
import { throughputTrial } from './throughput.js';

const CONCURRENCY = 10;
const BACKGROUND_TICK_MS = 10;
const BACKGROUND_PREFIX = 'bg-';

/**
 * Enqueues `perSec` no-op invocations a second until stopped, in a batch
 * every BACKGROUND_TICK_MS (as many as are due by then). Returns stop().
 */
function backgroundStream(system: SystemName, url: string, utils: WorkerUtils | undefined, perSec: number): () => Promise<void> {
  const sql = system === 'durably' ? connect(url, { max: 1, name: 'bench-background' }) : undefined;
  let stopped = false;
  const run = (async () => {
    const t0 = performance.now();
    let sent = 0;
    while (!stopped) {
      const due = Math.floor(((performance.now() - t0) / 1000) * perSec) - sent;
      if (due > 0) {
        const ids = Array.from({ length: due }, (_, i) => `${BACKGROUND_PREFIX}${sent + i}`);
        if (sql) await invokeMany(sql, ids, 'noop', () => [], GROUP);
        else await utils!.addJobs(ids.map((id) => ({ identifier: 'noop', payload: { id } })));
        sent += due;
      }
      await sleep(BACKGROUND_TICK_MS);
    }
  })();
  return async () => {
    stopped = true;
    await run;
    await sql?.end({ timeout: 2 });
  };
}

async function latencyTrial(ctx: BenchContext, system: SystemName, backgroundPerSec: number): Promise<{ p: Percentiles; ok: boolean }> {
  const { dbs, opts } = ctx;
  const n = opts.latencyN;
  const url = await dbs.fresh(system, 'lat');
  const issued = new Map<string, number>();
  const latencies: number[] = [];
  const counter = new RunCounter();
  const started = (id: string) => {
    if (id.startsWith(BACKGROUND_PREFIX)) return;
    const t = issued.get(id);
    counter.hit(id);
    if (t !== undefined) latencies.push(performance.now() - t);
  };
  let worker: Durably | undefined;
  let client: Durably | undefined;
  let runner: Runner | undefined;
  let utils: WorkerUtils | undefined;
  let stopBackground: (() => Promise<void>) | undefined;
  try {
    let enqueue: (id: string) => Promise<unknown>;
    if (system === 'durably') {
      worker = makeDurably(url, CONCURRENCY, { noop: async (c) => { started(c.id); return null; } });
      await worker.start();
      client = makeDurably(url, 1);
      await warmDurably(client);
      enqueue = (id) => client!.beginRpc(id, 'noop');
    } else {
      runner = await startGraphile(url, CONCURRENCY, { noop: async (payload: any) => { started(payload.id); } });
      utils = await graphileUtils(url);
      enqueue = (id) => utils!.addJob('noop', { id });
    }
    // warm-up (connections, prepared statements), not measured
    for (let i = 0; i < 5; i++) await enqueue(`warm-${i}`);
    await counter.reach(5, 10_000);
    await dbs.checkpoint();
    if (backgroundPerSec > 0) stopBackground = backgroundStream(system, url, utils, backgroundPerSec);
    await sleep(300); // idle, or the background stream settles in

    const t0 = performance.now();
    for (let i = 0; i < n; i++) {
      const at = t0 + i * opts.latencyGapMs;
      const wait = at - performance.now();
      if (wait > 0) await sleep(wait);
      const id = `l-${i}`;
      issued.set(id, performance.now());
      await enqueue(id);
    }
    const ok = await counter.reach(n + 5, 30_000);
    const ids = [...Array.from({ length: 5 }, (_, i) => `warm-${i}`), ...Array.from({ length: n }, (_, i) => `l-${i}`)];
    return { p: percentiles(latencies), ok: ok && counter.check(ids).ok };
  } finally {
    await stopBackground?.();
    await worker?.stop();
    await client?.stop();
    await runner?.stop();
    await utils?.release();
    await dbs.drop(url);
  }
}

/** Half the lower of the two systems' c10 drain rates (tuned), per second. */
async function halfCapacity(ctx: BenchContext): Promise<number> {
  const rates: number[] = [];
  for (const system of ['durably', 'graphile'] as SystemName[]) {
    rates.push((await throughputTrial(ctx, system, ctx.opts.throughputN, CONCURRENCY, 'latcap')).completedPerSec);
  }
  return Math.floor(Math.min(...rates) / 2);
}

type Runs = Record<SystemName, { p: Percentiles; ok: boolean }[]>;
const KEYS = ['p50', 'p90', 'p99', 'max'] as const;

async function measure(ctx: BenchContext, load: string, backgroundPerSec: number): Promise<Runs> {
  const res: Runs = { durably: [], graphile: [] };
  for (let rep = 0; rep < ctx.opts.reps; rep++) {
    for (const system of (rep % 2 === 0 ? ['durably', 'graphile'] : ['graphile', 'durably']) as SystemName[]) {
      const r = await latencyTrial(ctx, system, backgroundPerSec);
      res[system].push(r);
      ctx.log(`latency ${load} rep ${rep + 1} ${system}: p50 ${r.p.p50.toFixed(2)} p90 ${r.p.p90.toFixed(2)} p99 ${r.p.p99.toFixed(2)} max ${r.p.max.toFixed(2)} ms${r.ok ? '' : ' NOT EXACTLY ONCE'}`);
    }
  }
  return res;
}

function report(res: Runs, title: string) {
  const sum = (sys: SystemName) => Object.fromEntries(KEYS.map((k) => [k, summarize(res[sys].map((r) => r.p[k]))]));
  const d = sum('durably');
  const g = sum('graphile');
  const rows = [
    ['durably', ...KEYS.map((k) => fmt(d[k].median, 2)), res.durably.every((r) => r.ok) ? 'yes' : 'NO'],
    ['graphile-worker', ...KEYS.map((k) => fmt(g[k].median, 2)), res.graphile.every((r) => r.ok) ? 'yes' : 'NO'],
    ['ratio durably÷graphile (target ≤ 1.0 at p50 and p99)', ...KEYS.map((k) => `${(d[k].median / g[k].median).toFixed(2)}×`), ''],
  ];
  const ranges = ['durably', 'graphile'].map((sys) => {
    const s = sys === 'durably' ? d : g;
    return `${sys}: ${KEYS.map((k) => `${k} ${fmt(s[k].min, 2)}–${fmt(s[k].max, 2)}`).join(', ')}`;
  });
  return {
    table: table(title, ['system', 'p50', 'p90', 'p99', 'max', 'exactly once'], rows) + `\n(min–max over runs: ${ranges.join('; ')})`,
    data: { durably: d, graphile: g, ratio: Object.fromEntries(KEYS.map((k) => [k, d[k].median / g[k].median])) },
    ok: [...res.durably, ...res.graphile].every((r) => r.ok),
  };
}

export async function latency(ctx: BenchContext): Promise<WorkloadResult> {
  const { opts, log } = ctx;
  const what = `${opts.latencyN} single enqueues ${opts.latencyGapMs} ms apart, enqueue call -> handler start, ms — median of ${opts.reps} runs' percentiles`;
  const idle = report(await measure(ctx, 'idle', 0), `2. Latency: idle worker (concurrency ${CONCURRENCY}), ${what}`);
  const background = await halfCapacity(ctx);
  log(`latency: half load is ${background} background invocations/s`);
  const half = report(await measure(ctx, 'half load', background),
    `2b. Latency at half load: ${background} no-op invocations/s in the background (half the c10 capacity), concurrency ${CONCURRENCY}, ${what}`);
  return {
    name: 'latency',
    tables: [idle.table, half.table],
    data: { n: opts.latencyN, gapMs: opts.latencyGapMs, concurrency: CONCURRENCY, ...idle.data,
      halfLoad: { backgroundPerSec: background, ...half.data } },
    violations: idle.ok && half.ok ? [] : ['latency: an invocation did not run exactly once'],
  };
}
