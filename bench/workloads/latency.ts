/**
 * 2. Latency: an idle worker (concurrency 10); N invocations enqueued one at
 * a time by a client in the same process, one every gapMs (fixed cadence);
 * latency = enqueue call issued -> handler starts.
 * durably: client.beginRpc on a separate Durably instance (not started);
 * graphile-worker: workerUtils.addJob. Both wake their worker by NOTIFY.
 */
import type { Durably } from '../../src/durably.js';
import type { Runner, WorkerUtils } from 'graphile-worker';
import { graphileUtils, makeDurably, startGraphile, warmDurably, type SystemName } from '../lib/systems.js';
import { fmt, percentiles, RunCounter, sleep, summarize, table, type Percentiles } from '../lib/stats.js';
import type { BenchContext, WorkloadResult } from '../lib/context.js';

const CONCURRENCY = 10;

async function latencyTrial(ctx: BenchContext, system: SystemName): Promise<{ p: Percentiles; ok: boolean }> {
  const { dbs, opts } = ctx;
  const n = opts.latencyN;
  const url = await dbs.fresh(system, 'lat');
  const issued = new Map<string, number>();
  const latencies: number[] = [];
  const counter = new RunCounter();
  const started = (id: string) => {
    const t = issued.get(id);
    counter.hit(id);
    if (t !== undefined) latencies.push(performance.now() - t);
  };
  let worker: Durably | undefined;
  let client: Durably | undefined;
  let runner: Runner | undefined;
  let utils: WorkerUtils | undefined;
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
    await sleep(300); // idle

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
    await worker?.stop();
    await client?.stop();
    await runner?.stop();
    await utils?.release();
    await dbs.drop(url);
  }
}

export async function latency(ctx: BenchContext): Promise<WorkloadResult> {
  const { opts, log } = ctx;
  const res: Record<SystemName, { p: Percentiles; ok: boolean }[]> = { durably: [], graphile: [] };
  for (let rep = 0; rep < opts.reps; rep++) {
    for (const system of (rep % 2 === 0 ? ['durably', 'graphile'] : ['graphile', 'durably']) as SystemName[]) {
      const r = await latencyTrial(ctx, system);
      res[system].push(r);
      log(`latency rep ${rep + 1} ${system}: p50 ${r.p.p50.toFixed(2)} p90 ${r.p.p90.toFixed(2)} p99 ${r.p.p99.toFixed(2)} max ${r.p.max.toFixed(2)} ms${r.ok ? '' : ' NOT EXACTLY ONCE'}`);
    }
  }
  const keys = ['p50', 'p90', 'p99', 'max'] as const;
  const sum = (sys: SystemName) => Object.fromEntries(keys.map((k) => [k, summarize(res[sys].map((r) => r.p[k]))]));
  const d = sum('durably');
  const g = sum('graphile');
  const rows = [
    ['durably', ...keys.map((k) => fmt(d[k].median, 2)), res.durably.every((r) => r.ok) ? 'yes' : 'NO'],
    ['graphile-worker', ...keys.map((k) => fmt(g[k].median, 2)), res.graphile.every((r) => r.ok) ? 'yes' : 'NO'],
    ['ratio durably÷graphile', ...keys.map((k) => `${(d[k].median / g[k].median).toFixed(2)}×`), ''],
  ];
  const ranges = ['durably', 'graphile'].map((sys) => {
    const s = sys === 'durably' ? d : g;
    return `${sys}: ${keys.map((k) => `${k} ${fmt(s[k].min, 2)}–${fmt(s[k].max, 2)}`).join(', ')}`;
  });
  return {
    name: 'latency',
    tables: [table(`2. Latency: idle worker (concurrency ${CONCURRENCY}), ${opts.latencyN} single enqueues ${opts.latencyGapMs} ms apart, enqueue call -> handler start, ms — median of ${opts.reps} runs' percentiles`,
      ['system', 'p50', 'p90', 'p99', 'max', 'exactly once'], rows) + `\n(min–max over runs: ${ranges.join('; ')})`],
    data: { n: opts.latencyN, gapMs: opts.latencyGapMs, concurrency: CONCURRENCY, durably: d, graphile: g,
      ratio: Object.fromEntries(keys.map((k) => [k, d[k].median / g[k].median])) },
    violations: [...res.durably, ...res.graphile].some((r) => !r.ok) ? ['latency: an invocation did not run exactly once'] : [],
  };
}
