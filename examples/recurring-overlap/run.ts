/**
 * Overlap policies of recurring schedules (seed 003). Three schedules tick
 * every second and run the same slow function (2.5 s, a durable sleep):
 *
 *   skip_if_running     a tick due while the previous run is pending is skipped
 *   cancel_and_restart  the previous run is canceled (its ctx.signal fires) and the new one starts
 *   always_start        every tick starts: runs overlap
 *
 * Runs for DURATION ms (default 6000), prints what happens, then a summary
 * per policy (and one `RESULT {json}` line), deletes its schedules and exits.
 *
 *   DATABASE_URL=... npx tsx examples/recurring-overlap/run.ts
 */
import { setTimeout as delay } from 'node:timers/promises';
import { Durably, type Context, type OverlapPolicy } from '../../src/index.js';

const DURATION = Number(process.env.DURATION ?? 6000);
const SLOW_MS = 2500;
const policies: OverlapPolicy[] = ['skip_if_running', 'cancel_and_restart', 'always_start'];
const group = `overlap-${process.pid}`;
const start = Date.now();
const at = () => `+${((Date.now() - start) / 1000).toFixed(1)}s`.padEnd(7);

const durably = new Durably({
  url: process.env.DATABASE_URL,
  group,
  concurrency: 20,
  pollMs: 200,
  // renew leases (and learn of cancellations) every 250 ms
  heartbeatMs: 250,
  graceMs: 100,
  log: (m) => console.error(`[durably] ${m}`),
});

interface Stats { started: number; completed: number; aborted: number; running: number; maxRunning: number }
let finishing = false;
const stats = new Map<string, Stats>(policies.map((p) => [p, { started: 0, completed: 0, aborted: 0, running: 0, maxRunning: 0 }]));

durably.register('slow_job', async (ctx: Context, policy: OverlapPolicy) => {
  const s = stats.get(policy)!;
  s.started++;
  s.running++;
  s.maxRunning = Math.max(s.maxRunning, s.running);
  console.log(`${at()} ${policy.padEnd(18)} start ${ctx.id.split('.').slice(1).join('.')}  (running now: ${s.running})`);
  try {
    await ctx.sleep(SLOW_MS);
    s.completed++;
    console.log(`${at()} ${policy.padEnd(18)} done  ${ctx.id.split('.').slice(1).join('.')}`);
    return 'done';
  } catch (err) {
    if (ctx.signal.aborted && !finishing) {
      s.aborted++;
      console.log(`${at()} ${policy.padEnd(18)} CANCELED ${ctx.id.split('.').slice(1).join('.')}: ${(ctx.signal.reason as Error)?.message ?? ctx.signal.reason}`);
    }
    throw err;
  } finally {
    s.running--;
  }
});

await durably.start();
const ids = policies.map((p) => `${p}-${process.pid}`);
for (const [i, policy] of policies.entries()) {
  await durably.schedule(ids[i], { every: 1000 }, 'slow_job', policy,
    durably.options({ group, overlap: policy, idTemplate: '{schedule}.{occurrence}' }));
}
console.log(`ready: 3 schedules every 1 s, each run takes ${SLOW_MS / 1000} s; watching for ${DURATION / 1000} s`);
await delay(DURATION);

const result: Record<string, unknown> = {};
for (const [i, policy] of policies.entries()) {
  await durably.schedules.delete(ids[i]);
  const rows = await durably.sql<{ state: string; n: number }[]>`
    select state, count(*)::int as n from durably.promises where id like ${`${ids[i]}.%`} and kind = 'invoke' group by state`;
  const states = Object.fromEntries(rows.map((r) => [r.state, r.n]));
  const [{ occurrence }] = await durably.sql<{ occurrence: number }[]>`
    select count(*)::int as occurrence from durably.promises where id like ${`${ids[i]}.%`} and kind = 'invoke'`;
  const s = stats.get(policy)!;
  result[policy] = { runs: occurrence, states, started: s.started, completed: s.completed, canceled: s.aborted, maxConcurrent: s.maxRunning };
  console.log(`${policy.padEnd(18)} runs created ${occurrence}, completed ${s.completed}, canceled ${s.aborted}, ` +
    `at most ${s.maxRunning} at once; states ${JSON.stringify(states)}`);
}
console.log(`RESULT ${JSON.stringify(result)}`);

// cancel what still runs, so nothing is left behind
finishing = true;
const pending = await durably.sql<{ id: string }[]>`
  select id from durably.promises where state = 'pending' and kind = 'invoke' and id like any(${`{${ids.map((id) => `"${id}.%"`).join(',')}}`}::text[])`;
for (const { id } of pending) await durably.promises.cancel(id, 'example finished');
await durably.stop();
process.exit(0);
