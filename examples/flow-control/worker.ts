/**
 * A payments worker of group `payments`. Start several: the limits set by
 * client.ts hold across all of them, because the claims enforce them in
 * Postgres.
 *
 *   DATABASE_URL=... WORKER_NAME=a npx tsx examples/flow-control/worker.ts
 */
import { setTimeout as delay } from 'node:timers/promises';
import { Durably, type Context } from '../../src/index.js';

const name = process.env.WORKER_NAME ?? `worker-${process.pid}`;
const durably = new Durably({
  url: process.env.DATABASE_URL, group: 'payments', concurrency: 10,
  // A task claimed ahead starts when a slot frees, later than its claim, which
  // is what a rate limit counts: claim only for free slots, so that charges
  // start at the rate.
  prefetch: 10,
  log: (m) => console.error(`[${name}] ${m}`),
});

/** Calls the payment provider (here: 100 ms of waiting) for one charge. */
durably.register('charge', async (ctx: Context, customer: string, cents: number) => {
  console.log(`${name} starts ${ctx.id} ${customer} ${Date.now()}`);
  await delay(100);
  console.log(`${name} charged ${ctx.id} ${customer} ${Date.now()}`);
  return { customer, cents, worker: name };
});

await durably.start();
console.log(`ready: ${name}`);

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => void durably.stop().then(() => process.exit(0)));
}
