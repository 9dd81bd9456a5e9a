/**
 * Runs the ticks of the `daily_report` schedule (group `reports`) and prints
 * each one. Every started worker also drives the schedule (durably.tick()), so
 * after downtime the first worker up creates the missed ticks and runs them.
 *
 *   DATABASE_URL=... npx tsx examples/schedule/worker.ts
 */
import { Durably, type Context } from '../../src/index.js';

const name = process.env.WORKER_NAME ?? `worker-${process.pid}`;
const durably = new Durably({
  url: process.env.DATABASE_URL,
  group: 'reports',
  // a tick held by a crashed worker is re-run by another one after 5 s
  leaseMs: 5000,
  log: (m) => console.error(`[${name}] ${m}`),
});

durably.register('daily_report', async (ctx: Context, team: string) => {
  // the promise id is daily_report.<tick time>: the tick this run is for
  const tick = ctx.id.slice('daily_report.'.length);
  const ranAt = new Date(await ctx.now());
  const lateMs = ranAt.getTime() - new Date(tick).getTime();
  console.log(`tick ${tick} report for ${team} ran at ${ranAt.toISOString()} (${lateMs} ms late) by ${name}`);
  return { team, tick, ranAt: ranAt.toISOString(), worker: name };
});

await durably.start();
console.log(`ready: ${name} runs daily_report on group reports`);

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => void durably.stop().then(() => process.exit(0)));
}
