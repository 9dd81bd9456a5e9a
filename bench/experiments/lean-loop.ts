/**
 * Experiment (not part of `npm run bench`): how fast can durably's own SQL
 * (claim_tasks + settle_many) drain N no-op invocations when the Node loop
 * does not serialize them? A minimal worker loop, the shape graphile-worker's
 * localQueue has: a claimer keeps up to 2C tasks claimed ahead, C runners take
 * from that local queue, finished runs free their slot at once, and one
 * settler writes whatever finished since its last call in one settle_many
 * (never more than one in flight). Compared, in the same run, with the real
 * Worker (src/worker.ts), each with claim_tasks as shipped and as in
 * claim_tasks_fix.sql. No retries, no heartbeats: an upper bound for the loop,
 * not a replacement for it.
 *
 *   npx tsx bench/experiments/lean-loop.ts [--reps N] [--n N] [--quick]
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connect, textArray } from '../../src/db.js';
import { BenchDatabases, invokeMany } from '../lib/db.js';
import { localDrainer } from '../lib/drain.js';
import { GROUP } from '../lib/systems.js';
import { fmtSummary, summarize, table, until } from '../lib/stats.js';

const argv = process.argv.slice(2);
const quick = argv.includes('--quick');
const arg = (name: string, dflt: number) => { const i = argv.indexOf(name); return i >= 0 ? Number(argv[i + 1]) : dflt; };
const reps = arg('--reps', quick ? 1 : 3);
const N = arg('--n', quick ? 2000 : 20_000);
const fix = readFileSync(new URL('./claim_tasks_fix.sql', import.meta.url), 'utf8');
const dbs = new BenchDatabases(process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test');

async function leanDrain(url: string, c: number): Promise<number> {
  const sql = connect(url, { max: 3, name: 'durably:lean' });
  const worker = randomUUID();
  const queue: { id: string }[] = [];
  const finished: string[] = [];
  let claimed = 0; let settled = 0; let claiming = false; let settling = false; let running = 0;
  let wake: () => void = () => {};
  const done = new Promise<void>((ok) => { wake = () => { if (settled >= N) ok(); }; });
  const claim = () => {
    if (claiming || claimed >= N) return;
    const want = 2 * c - queue.length - running;
    if (want <= 0) return;
    claiming = true;
    void sql<{ id: string }[]>`select id from durably.claim_tasks(${worker}, ${GROUP}, ${want}, 30000)`.then((rows) => {
      claiming = false;
      claimed += rows.length;
      queue.push(...rows);
      run();
      if (rows.length > 0) claim();
    });
  };
  const settle = () => {
    if (settling || finished.length === 0) return;
    settling = true;
    const batch = finished.splice(0);
    void sql`select count(*) from durably.settle_many(${textArray(batch)}::text[],
      array_fill('resolved'::text, array[${batch.length}::int]), array_fill('null'::jsonb, array[${batch.length}::int]))`.then(() => {
      settling = false;
      settled += batch.length;
      wake();
      settle();
    });
  };
  const run = () => {
    while (running < c && queue.length > 0) {
      const t = queue.shift()!;
      running++;
      void Promise.resolve(null).then(() => {
        running--;
        finished.push(t.id);
        setImmediate(settle);
        run();
        claim();
      });
    }
  };
  const t0 = performance.now();
  claim();
  await done;
  const ms = performance.now() - t0;
  await sql.end({ timeout: 2 });
  return (N / ms) * 1000;
}

async function realDrain(url: string, c: number): Promise<number> {
  const sql = connect(url, { max: 1, name: 'bench-client' });
  const drainer = await localDrainer('durably', url, c);
  const t0 = performance.now();
  await drainer.start();
  await drainer.reach(N, 300_000);
  await until(async () => Number((await sql`select count(*)::int as n from durably.tasks`)[0].n) === 0, 60_000, 2);
  const ms = performance.now() - t0;
  await drainer.stop(null);
  await sql.end({ timeout: 2 });
  return (N / ms) * 1000;
}

const variants: [string, 'lean' | 'real', string | undefined][] = [
  ['Worker (src/worker.ts), claim as shipped', 'real', undefined],
  ['Worker (src/worker.ts), claim fixed', 'real', fix],
  ['lean loop, claim as shipped', 'lean', undefined],
  ['lean loop, claim fixed', 'lean', fix],
];
const res: Record<string, number[]> = {};
try {
  for (let rep = 0; rep < reps; rep++) {
    for (const c of [10, 50]) {
      for (const [label, kind, patch] of variants) {
        const url = await dbs.fresh('durably', 'lean');
        const sql = connect(url, { max: 1, name: 'bench-client' });
        if (patch) await sql.unsafe(patch);
        await invokeMany(sql, Array.from({ length: N }, (_, i) => `t-${i}`), 'noop', () => [], GROUP, 1000);
        await sql.end();
        await dbs.checkpoint();
        const rate = kind === 'lean' ? await leanDrain(url, c) : await realDrain(url, c);
        (res[`${label}|${c}`] ??= []).push(rate);
        console.error(`[lean-loop] rep ${rep + 1} c=${c} ${label}: ${rate.toFixed(0)}/s`);
        await dbs.drop(url);
      }
    }
  }
  const rows = variants.map(([label]) => [label, fmtSummary(summarize(res[`${label}|10`])), fmtSummary(summarize(res[`${label}|50`]))]);
  console.log(table(`Drain ${N.toLocaleString('en-US')} no-op invocations: completed /s — median (min–max) of ${reps}`, ['loop', 'c=10', 'c=50'], rows));
} finally {
  await dbs.dropAll();
}
