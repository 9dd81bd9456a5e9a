/**
 * A worker of group `workers` (seed 002). Start several: each invocation of
 * compute_something runs on exactly one of them, and when one dies mid-sleep
 * another one takes over and sleeps only what remains.
 *
 *   DATABASE_URL=... WORKER_NAME=a npx tsx examples/load-balancing/worker.ts
 */
import { Durably, type Context } from '../../src/index.js';

const name = process.env.WORKER_NAME ?? `worker-${process.pid}`;
const durably = new Durably({
  url: process.env.DATABASE_URL,
  group: 'workers',
  concurrency: 10,
  // the work of a crashed worker moves to the others after 3 s
  leaseMs: 3000,
  log: (m) => console.error(`[${name}] ${m}`),
});

durably.register('compute_something', async (ctx: Context, id: string, cost: number) => {
  console.log(`${name} starts ${id} (${cost} ms, attempt ${ctx.attempt})`);
  await ctx.sleep(cost); // durable: after a crash the replay waits only for what remains
  console.log(`${name} finished ${id}`);
  return { id, cost, worker: name };
});

await durably.start();
console.log(`ready: ${name}`);

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => void durably.stop().then(() => process.exit(0)));
}
