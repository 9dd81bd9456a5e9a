/**
 * Runs ship_order for the orders the trigger enqueued (group `workers`).
 *
 *   DATABASE_URL=... npx tsx examples/trigger-enqueue/worker.ts
 */
import { Durably, type Context } from '../../src/index.js';

const name = process.env.WORKER_NAME ?? `worker-${process.pid}`;
const durably = new Durably({ url: process.env.DATABASE_URL, group: 'workers', log: (m) => console.error(`[${name}] ${m}`) });
const sql = durably.sql;

durably.register('ship_order', async (ctx: Context, orderId: number) => {
  const shipment = await ctx.run(async function ship() {
    const [row] = await sql<{ id: number }[]>`
      insert into shipments (order_id, promise_id, worker) values (${orderId}, ${ctx.id}, ${name}) returning id`;
    return row.id;
  });
  console.log(`shipped order ${orderId} (${ctx.id}) as shipment ${shipment}`);
  return { orderId, shipment };
});

await durably.start();
console.log(`ready: ${name}`);

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => void durably.stop().then(() => process.exit(0)));
}
