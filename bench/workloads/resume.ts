/**
 * Resume delay under a backlog: one group, one worker (concurrency 10)
 * draining a backlog of ready no-op invocations that a feeder keeps at its
 * size (resumeBacklog: 100,000) while resumeWorkflows workflows of the same
 * group, started before the backlog arrived, suspend and resume: half sleep
 * (durable timers: inProcessSleepMs 0, so every sleep suspends), half await
 * an external promise that the bench resolves. Each waits twice: once until
 * a moment of its own (2 s + 20 ms x its number after it first ran: the
 * resumptions come at a steady rate, not all at once, and after the first
 * runs of all the workflows, which hold every slot for about a second), then
 * 50 ms. Resume delay = from the timer's deadline (as stored when the sleep
 * began) or the resolve's commit to the workflow running again after its
 * await (see ResumeTrial; the delay from the resolve being sent is printed
 * too). Target: p99 ≤ 50 ms. durably only: graphile-worker has no suspended jobs.
 */
import { Durably } from '../../src/durably.js';
import { connect } from '../../src/db.js';
import type { Context } from '../../src/context.js';
import { invokeMany } from '../lib/db.js';
import { GROUP, POLL_MS } from '../lib/systems.js';
import { fmt, percentiles, sleep, table, type Percentiles } from '../lib/stats.js';
import type { BenchContext, WorkloadResult } from '../lib/context.js';

const CONCURRENCY = 10;
const WAIT_MS = 50;
const SPREAD_FIRST_MS = 2000;
const SPREAD_EVERY_MS = 20;
const FEED_EVERY_MS = 20;

/**
 * timer: from the deadline; external: from the resolve's commit (its call
 * returned; 0 when the workflow ran on before that); externalSent: from the
 * resolve being sent, which adds the settling transaction's own time; all:
 * timer and external, the figure of the target.
 */
interface ResumeTrial {
  timer: Percentiles; external: Percentiles; externalSent: Percentiles; all: Percentiles;
  drainedPerSec: number; readyAtEnd: number; ok: boolean;
}

async function resumeTrial(ctx: BenchContext): Promise<ResumeTrial> {
  const { dbs, opts } = ctx;
  const url = await dbs.fresh('durably', 'resume');
  const sql = connect(url, { max: 2, name: 'bench-resume' });
  // the resolves' own pool: not queued behind the feeder's inserts
  const resolver = connect(url, { max: 4, name: 'bench-resolve' });
  const timerDelays: number[] = [];
  const resolves = new Map<string, { sent: number; committed: number; passed: number }>();
  let jobsStarted = 0;
  let finished = 0;
  const worker = new Durably({
    // prefetch at its default (2 x concurrency): a woken execution is claimed when the
    // local queue runs low, so it waits for what a larger prefetch claimed ahead
    url, group: GROUP, concurrency: CONCURRENCY, pollMs: POLL_MS,
    inProcessSleepMs: 0, log: () => {},
  });
  worker.register('noop', async () => { jobsStarted++; return null; });
  // Workflow i waits twice: first until SPREAD_FIRST_MS + i * SPREAD_EVERY_MS after it first ran, so
  // that wake-ups come at a steady rate and not all at once, then WAIT_MS.
  const waits = (i: number) => [SPREAD_FIRST_MS + i * SPREAD_EVERY_MS, WAIT_MS];
  // A wait is measured when the workflow first gets past it: later replays pass it again at once.
  const passed = new Set<string>();
  worker.register('sleeper', async (c: Context, i: number) => {
    for (const [n, ms] of waits(i).entries()) {
      await c.sleep(ms);
      const key = `${c.id}:${n}`;
      if (passed.has(key)) continue;
      const at = Date.now();
      passed.add(key);
      // due when the timer's deadline, stored as the sleep began, passed
      const timers = await sql<{ timeout_at: Date }[]>`
        select timeout_at from durably.promises where parent_id = ${c.id} and kind = 'sleep' order by seq`;
      timerDelays.push(at - timers[n].timeout_at.getTime());
    }
    finished++;
    return null;
  });
  worker.register('awaiter', async (c: Context, i: number) => {
    for (const ms of waits(i)) {
      const ext = await c.promise<null>();
      // Resolved once, ms after it was first made (a replay makes it again),
      // timed from when the resolve is sent and from when its commit returned.
      if (!resolves.has(ext.id)) {
        const r = { sent: Infinity, committed: Infinity, passed: Infinity };
        resolves.set(ext.id, r);
        setTimeout(() => {
          r.sent = Date.now();
          void resolver`select from durably.resolve(${ext.id})`.then(() => { r.committed = Date.now(); });
        }, ms);
      }
      await ext.result();
      const r = resolves.get(ext.id)!;
      if (r.passed === Infinity) r.passed = Date.now();
    }
    finished++;
    return null;
  });
  let feeding = true;
  try {
    const half = opts.resumeWorkflows / 2;
    // Migrated and warm before the workflows are made.
    await worker.promises.search('__warmup__', { limit: 1 });
    await invokeMany(sql, Array.from({ length: half }, (_, i) => `s-${i}`), 'sleeper', (i) => [i], GROUP);
    await invokeMany(sql, Array.from({ length: half }, (_, i) => `a-${i}`), 'awaiter', (i) => [i], GROUP);
    await invokeMany(sql, Array.from({ length: opts.resumeBacklog }, (_, i) => `b-${i}`), 'noop', () => [], GROUP, 10_000);
    await sql`analyze durably.tasks`;
    await dbs.checkpoint();

    // Keeps the backlog at its size: as many new no-ops as were started.
    let fedFor = 0;
    let tick = 0;
    const feeder = (async () => {
      while (feeding) {
        const n = jobsStarted - fedFor;
        if (n > 0) {
          fedFor += n;
          await invokeMany(sql, Array.from({ length: n }, (_, i) => `f-${tick}-${i}`), 'noop', () => [], GROUP, 5000);
          tick++;
        }
        await sleep(FEED_EVERY_MS);
      }
    })();
    const t0 = performance.now();
    await worker.start();
    const deadline = Date.now() + 120_000;
    while (finished < opts.resumeWorkflows && Date.now() < deadline) await sleep(20);
    const seconds = (performance.now() - t0) / 1000;
    feeding = false;
    await feeder;
    const [{ ready }] = await sql<{ ready: number }[]>`select count(*)::int as ready from durably.tasks where state = 'ready'`;
    const external = [...resolves.values()].map((r) => Math.max(0, r.passed - r.committed));
    const externalSent = [...resolves.values()].map((r) => r.passed - r.sent);
    return {
      timer: percentiles(timerDelays), external: percentiles(external), externalSent: percentiles(externalSent),
      all: percentiles([...timerDelays, ...external]),
      drainedPerSec: jobsStarted / seconds, readyAtEnd: ready, ok: finished === opts.resumeWorkflows,
    };
  } finally {
    feeding = false;
    await worker.stop();
    await sql.end({ timeout: 2 });
    await resolver.end({ timeout: 2 });
    await dbs.drop(url);
  }
}

export async function resume(ctx: BenchContext): Promise<WorkloadResult> {
  const { opts } = ctx;
  ctx.log(`resume: backlog ${opts.resumeBacklog}, ${opts.resumeWorkflows} workflows`);
  const trials: ResumeTrial[] = [];
  for (let r = 0; r < opts.reps; r++) trials.push(await resumeTrial(ctx));
  const row = (label: string, p: Percentiles) => [label, String(p.n), fmt(p.p50, 1), fmt(p.p90, 1), fmt(p.p99, 1), fmt(p.max, 1)];
  const rows = trials.flatMap((t, i) => [
    row(`rep ${i + 1} timer (from its deadline)`, t.timer), row(`rep ${i + 1} external (from the resolve's commit)`, t.external),
    row(`rep ${i + 1} all (timer + external)`, t.all), row(`rep ${i + 1} external, from the resolve sent`, t.externalSent),
  ]);
  const worst = Math.max(...trials.map((t) => t.all.p99));
  return {
    name: 'resume',
    tables: [
      table(`Resume delay (ms) with ${opts.resumeBacklog} ready tasks in the same group (target p99 ≤ 50 ms)`,
        ['', 'n', 'p50', 'p90', 'p99', 'max'], rows),
      table('Backlog while resuming', ['rep', 'no-ops drained/s', 'ready at end'],
        trials.map((t, i) => [String(i + 1), fmt(t.drainedPerSec, 0), String(t.readyAtEnd)])),
    ],
    data: { trials, worstP99Ms: worst },
    violations: trials.filter((t) => !t.ok).map(() => 'resume: not every workflow finished within 120 s'),
  };
}
