/**
 * 10. Loop-shaped workflows: one workflow of N sequential `ctx.run` steps
 * against N one-step invocations on the same worker at concurrency 1
 * (target: the workflow takes at most 1.5× as long), and a workflow of M
 * steps that each suspend (`ctx.sleep(1)` with in-process sleeps off: every
 * step is a claim and a replay). Each is timed per quarter of its steps: one
 * whose steps cost the same early and late is linear in its length; a last
 * quarter much slower than the second is the sign of a cost per step that
 * grows with the history.
 */
import { connect } from '../../src/db.js';
import { Durably } from '../../src/durably.js';
import type { Context } from '../../src/context.js';
import { invokeMany } from '../lib/db.js';
import { GROUP, POLL_MS } from '../lib/systems.js';
import { fmt, summarize, table, until, type Summary } from '../lib/stats.js';
import type { BenchContext, WorkloadResult } from '../lib/context.js';

const CONCURRENCY = 1;
const TARGET = 1.5;

interface Trial {
  ms: number;
  /** Time of the last quarter of the steps over that of the second. */
  lastOverSecond: number;
  ok: boolean;
}

function worker(url: string, inProcessSleepMs = 5000): Durably {
  return new Durably({ url, group: GROUP, concurrency: CONCURRENCY, pollMs: POLL_MS, inProcessSleepMs, log: () => {} });
}

/** When each step was first passed: how its cost changes along the workflow. */
class StepClock {
  private readonly at: number[] = [];
  tick(): void { this.at.push(performance.now()); }
  get count(): number { return this.at.length; }
  /** Time of the last quarter of the steps over that of the second (the first warms up: connections, JIT, plans). */
  lastOverSecond(): number {
    const q = Math.floor(this.at.length / 4);
    const span = (quarter: number) => this.at[(quarter + 1) * q - 1] - this.at[quarter * q - 1];
    return span(3) / span(1);
  }
}

/** Runs `d` until promise `ids` settled; returns the time from start. */
async function drain(url: string, d: Durably, ids: string[], expectSteps: number): Promise<{ ms: number; ok: boolean }> {
  const sql = connect(url, { max: 1, name: 'bench-client' });
  try {
    await invokeMany(sql, ids, ids.length === 1 ? 'workflow' : 'one', () => [], GROUP);
    await d.promises.search('__warmup__', { limit: 1 });
    const t0 = performance.now();
    await d.start();
    const settled = async () => {
      const [{ n }] = await sql`select count(*)::int as n from durably.promises where id = any(${`{${ids.join(',')}}`}::text[]) and state = 'resolved'`;
      return n === ids.length;
    };
    const done = await until(settled, 600_000, 2);
    const ms = performance.now() - t0;
    const [{ steps }] = await sql`select count(*)::int as steps from durably.promises where kind <> 'invoke'`;
    return { ms, ok: done && steps === expectSteps };
  } finally {
    await d.stop();
    await sql.end({ timeout: 2 });
  }
}

async function invocations(ctx: BenchContext, n: number): Promise<Trial> {
  const url = await ctx.dbs.fresh('durably', 'longflow');
  const clock = new StepClock();
  try {
    const d = worker(url);
    d.register('one', async (c: Context) => c.run(async function step() { clock.tick(); return 1; }));
    const { ms, ok } = await drain(url, d, Array.from({ length: n }, (_, i) => `one-${i}`), n);
    return { ms, ok: ok && clock.count === n, lastOverSecond: clock.lastOverSecond() };
  } finally {
    await ctx.dbs.drop(url);
  }
}

async function loop(ctx: BenchContext, n: number, kind: 'run' | 'sleep'): Promise<Trial> {
  const url = await ctx.dbs.fresh('durably', 'longflow');
  const clock = new StepClock();
  try {
    const d = worker(url, kind === 'sleep' ? 0 : 5000);
    d.register('workflow', async (c: Context) => {
      for (let k = 0; k < n; k++) {
        if (kind === 'run') await c.run(async function step() { return k; });
        else await c.sleep(1);
        // A replay passes the steps before its own again: each is timed when first passed.
        if (k === clock.count) clock.tick();
      }
      return n;
    });
    const { ms, ok } = await drain(url, d, ['loop'], n);
    return { ms, ok: ok && clock.count === n, lastOverSecond: clock.lastOverSecond() };
  } finally {
    await ctx.dbs.drop(url);
  }
}

export async function longflow(ctx: BenchContext): Promise<WorkloadResult> {
  const { opts, log } = ctx;
  const n = opts.longflowSteps;
  const m = opts.longflowSuspends;
  const res = { invocations: [] as Trial[], loop: [] as Trial[], sleeps: [] as Trial[] };
  for (let rep = 0; rep < opts.reps; rep++) {
    res.invocations.push(await invocations(ctx, n));
    res.loop.push(await loop(ctx, n, 'run'));
    res.sleeps.push(await loop(ctx, m, 'sleep'));
    const [a, b, s] = [res.invocations, res.loop, res.sleeps].map((r) => r.at(-1)!);
    log(`longflow rep ${rep + 1}: ${n} invocations ${a.ms.toFixed(0)} ms, a ${n}-step workflow ${b.ms.toFixed(0)} ms ` +
      `(${(b.ms / a.ms).toFixed(2)}×, last quarter ${b.lastOverSecond.toFixed(2)}× the second), ` +
      `${m} suspending steps ${s.ms.toFixed(0)} ms (last quarter ${s.lastOverSecond.toFixed(2)}× the second)${[a, b, s].every((t) => t.ok) ? '' : ' NOT ALL STEPS STORED'}`);
  }
  const ms = (k: keyof typeof res): Summary => summarize(res[k].map((t) => t.ms));
  const ratios = res.loop.map((t, i) => t.ms / res.invocations[i].ms);
  const ratio = summarize(ratios).median;
  const rows = [
    [`${n.toLocaleString('en-US')} one-step invocations`, fmt(ms('invocations').median), fmt(ms('invocations').median / n, 2),
      `${summarize(res.invocations.map((t) => t.lastOverSecond)).median.toFixed(2)}×`],
    [`one workflow of ${n.toLocaleString('en-US')} ctx.run steps`, fmt(ms('loop').median), fmt(ms('loop').median / n, 2),
      `${summarize(res.loop.map((t) => t.lastOverSecond)).median.toFixed(2)}×`],
    [`one workflow of ${m} suspending ctx.sleep(1) steps`, fmt(ms('sleeps').median), fmt(ms('sleeps').median / m, 2),
      `${summarize(res.sleeps.map((t) => t.lastOverSecond)).median.toFixed(2)}×`],
    ['workflow ÷ invocations', `${ratio.toFixed(2)}×`, '', `target ≤ ${TARGET}×`],
  ];
  return {
    name: 'longflow',
    tables: [table(`10. Loop-shaped workflows, concurrency ${CONCURRENCY} — median of ${opts.reps}`,
      ['what', 'ms', 'ms per step', 'last quarter ÷ second'], rows)],
    data: {
      steps: n, suspends: m, concurrency: CONCURRENCY,
      invocationsMs: ms('invocations'), loopMs: ms('loop'), sleepsMs: ms('sleeps'), ratio, target: TARGET,
    },
    violations: Object.values(res).flat().some((t) => !t.ok) ? ['longflow: a step was not stored'] : [],
  };
}
