/**
 * 3. Workflow steps: F functions of S `ctx.run` steps each (no-op steps) at
 * concurrency 10, enqueued up front (not timed); time = worker start -> every
 * function settled. graphile-worker has no steps: its comparison is a chain
 * of S jobs per function, each job adding the next (helpers.addJob). DBOS
 * 5.3 runs the same workflows (S `DBOS.runStep` each) called directly by 10
 * concurrent callers, PEERS.md's "direct calls" configuration; Absurd is not
 * run here (bench/README.md says why).
 */
import { connect } from '../../src/db.js';
import type { Context } from '../../src/context.js';
import type { Durably } from '../../src/durably.js';
import type { Runner, WorkerUtils } from 'graphile-worker';
import { invokeMany } from '../lib/db.js';
import { GROUP, graphileJobsLeft, graphileUtils, makeDurably, startGraphile, warmDurably, type SystemName } from '../lib/systems.js';
import { fmtSummary, RunCounter, summarize, table, until } from '../lib/stats.js';
import type { BenchContext, WorkloadResult } from '../lib/context.js';

const CONCURRENCY = 10;

/**
 * Absurd is not run here: it is estimated from DBOS in this run by their
 * ratio in PEERS.md (Absurd 0.5: 1,058 steps/s, DBOS 5.3 direct calls: 934),
 * since absolute figures move with the machine's load and ratios hold.
 */
const ABSURD_PER_DBOS = 1058 / 934;

type Trial = { functionsPerSec: number; stepsPerSec: number; ok: boolean };
type StepsSystem = SystemName | 'dbos';

/** DBOS keeps one instance per process: its workflow is registered once, before the first launch; each trial counts its own steps. */
let dbosWorkflow: ((id: number, steps: number) => Promise<number>) | undefined;
let dbosSteps = new RunCounter();

async function dbosTrial(ctx: BenchContext): Promise<Trial> {
  const { DBOS } = await import('@dbos-inc/dbos-sdk');
  const F = ctx.opts.stepsFunctions;
  const S = ctx.opts.stepsPerFunction;
  const steps = dbosSteps = new RunCounter();
  dbosWorkflow ??= DBOS.registerWorkflow(async (id: number, n: number) => {
    let sum = 0;
    for (let k = 0; k < n; k++) sum += await DBOS.runStep(async () => { dbosSteps.hit(`${id}.${k}`); return k; }, { name: `step${k}` });
    return sum;
  }, { name: 'workflow' });
  const url = await ctx.dbs.empty('dbos');
  try {
    DBOS.setConfig({ name: 'bench', systemDatabaseUrl: url, logLevel: 'error' });
    await DBOS.launch();
    await ctx.dbs.checkpoint();
    const t0 = performance.now();
    let next = 0;
    await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
      while (next < F) await dbosWorkflow!(next++, S);
    }));
    const ms = performance.now() - t0;
    await DBOS.shutdown();
    return { functionsPerSec: (F / ms) * 1000, stepsPerSec: ((F * S) / ms) * 1000, ok: steps.total === F * S && steps.counts.size === F * S };
  } finally {
    await ctx.dbs.drop(url);
  }
}

async function stepsTrial(ctx: BenchContext, system: SystemName): Promise<Trial> {
  const { dbs, opts } = ctx;
  const F = opts.stepsFunctions;
  const S = opts.stepsPerFunction;
  const url = await dbs.fresh(system, 'steps');
  const steps = new RunCounter();
  const sql = connect(url, { max: 2, name: 'bench-client' });
  let worker: Durably | undefined;
  let runner: Runner | undefined;
  let utils: WorkerUtils | undefined;
  const expectedSteps: string[] = [];
  for (let f = 0; f < F; f++) for (let s = 0; s < S; s++) expectedSteps.push(`w-${f}.${s}`);
  try {
    const ids = Array.from({ length: F }, (_, i) => `w-${i}`);
    let left: () => Promise<number>;
    let start: () => Promise<void>;
    if (system === 'durably') {
      // the step body counts itself: `step` runs once per checkpoint written
      const step = async (c: Context, k: number) => { steps.hit(c.id); return k; };
      worker = makeDurably(url, CONCURRENCY, {
        workflow: async (c: Context) => {
          let sum = 0;
          for (let k = 0; k < S; k++) sum += await c.run(step, k);
          return sum;
        },
      });
      await warmDurably(worker);
      await invokeMany(sql, ids, 'workflow', () => [], GROUP, 1000);
      left = async () => Number((await sql`select count(*)::int as n from durably.tasks`)[0].n);
      start = () => worker!.start();
    } else {
      utils = await graphileUtils(url);
      for (let i = 0; i < F; i += 1000) {
        await utils.addJobs(ids.slice(i, i + 1000).map((id) => ({ identifier: 'chain', payload: { id, k: 0 } })));
      }
      left = () => graphileJobsLeft(utils!);
      start = async () => {
        runner = await startGraphile(url, CONCURRENCY, {
          chain: async (payload: any, helpers) => {
            steps.hit(`${payload.id}.${payload.k}`);
            if (payload.k + 1 < S) await helpers.addJob('chain', { id: payload.id, k: payload.k + 1 });
          },
        });
      };
    }
    await dbs.checkpoint();
    const t0 = performance.now();
    await start();
    const ran = await steps.reach(F * S, 600_000);
    const done = ran && await until(async () => (await left()) === 0, 60_000, 2);
    const ms = performance.now() - t0;
    await worker?.stop();
    await runner?.stop();
    worker = undefined;
    runner = undefined;
    let dbOk = true;
    if (system === 'durably') {
      const [r] = await sql`select count(*) filter (where kind = 'invoke' and state = 'resolved')::int as fns,
        count(*) filter (where kind = 'step')::int as steps from durably.promises`;
      dbOk = r.fns === F && r.steps === F * S;
    }
    const ok = done && dbOk && steps.check(expectedSteps).ok;
    return { functionsPerSec: (F / ms) * 1000, stepsPerSec: ((F * S) / ms) * 1000, ok };
  } finally {
    await worker?.stop();
    await runner?.stop();
    await utils?.release();
    await sql.end({ timeout: 2 });
    await dbs.drop(url);
  }
}

export async function steps(ctx: BenchContext): Promise<WorkloadResult> {
  const { opts, log } = ctx;
  const res: Record<StepsSystem, Trial[]> = { durably: [], graphile: [], dbos: [] };
  const order: StepsSystem[] = ['durably', 'dbos', 'graphile'];
  for (let rep = 0; rep < opts.reps; rep++) {
    for (const system of rep % 2 === 0 ? order : [...order].reverse()) {
      const r = system === 'dbos' ? await dbosTrial(ctx) : await stepsTrial(ctx, system);
      res[system].push(r);
      log(`steps rep ${rep + 1} ${system}: ${r.functionsPerSec.toFixed(0)} functions/s, ${r.stepsPerSec.toFixed(0)} steps/s${r.ok ? '' : ' NOT EXACTLY ONCE'}`);
    }
  }
  const s = (sys: StepsSystem, k: 'functionsPerSec' | 'stepsPerSec') => summarize(res[sys].map((r) => r[k]));
  const ratio = s('durably', 'stepsPerSec').median / s('graphile', 'stepsPerSec').median;
  const vsDbos = s('durably', 'stepsPerSec').median / s('dbos', 'stepsPerSec').median;
  const absurd = s('dbos', 'stepsPerSec').median * ABSURD_PER_DBOS;
  const vsAbsurd = s('durably', 'stepsPerSec').median / absurd;
  const once = (sys: StepsSystem) => (res[sys].every((r) => r.ok) ? 'yes' : 'NO');
  const rows = [
    ['durably (ctx.run steps)', fmtSummary(s('durably', 'functionsPerSec')), fmtSummary(s('durably', 'stepsPerSec')), once('durably')],
    ['DBOS 5.3 (DBOS.runStep, direct calls)', fmtSummary(s('dbos', 'functionsPerSec')), fmtSummary(s('dbos', 'stepsPerSec')), once('dbos')],
    ['graphile-worker (job chains)', fmtSummary(s('graphile', 'functionsPerSec')), fmtSummary(s('graphile', 'stepsPerSec')), once('graphile')],
    ['ratio durably÷graphile', `${ratio.toFixed(2)}×`, `${ratio.toFixed(2)}×`, ''],
    ['ratio durably÷DBOS (this run)', '', `${vsDbos.toFixed(2)}×`, ''],
    [`ratio durably÷Absurd (estimated: DBOS here × ${ABSURD_PER_DBOS.toFixed(2)}, PEERS.md)`, '', `${vsAbsurd.toFixed(2)}×`, ''],
  ];
  return {
    name: 'steps',
    tables: [table(`3. Workflow steps: ${opts.stepsFunctions.toLocaleString('en-US')} functions × ${opts.stepsPerFunction} steps, concurrency ${CONCURRENCY} — median (min–max) of ${opts.reps}`,
      ['system', 'functions /s', 'steps /s', 'exactly once'], rows)],
    data: {
      functions: opts.stepsFunctions, stepsPerFunction: opts.stepsPerFunction, concurrency: CONCURRENCY,
      durably: { functionsPerSec: s('durably', 'functionsPerSec'), stepsPerSec: s('durably', 'stepsPerSec') },
      dbos: { functionsPerSec: s('dbos', 'functionsPerSec'), stepsPerSec: s('dbos', 'stepsPerSec') },
      graphile: { functionsPerSec: s('graphile', 'functionsPerSec'), stepsPerSec: s('graphile', 'stepsPerSec') },
      ratio, vsDbos, absurdEstimate: absurd, vsAbsurd,
    },
    violations: Object.values(res).flat().some((r) => !r.ok) ? ['steps: a step did not run exactly once'] : [],
  };
}
