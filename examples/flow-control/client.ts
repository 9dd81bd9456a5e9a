/**
 * Sets the limits (one charge at a time per customer, 20 charges a second in
 * all) and enqueues N charges spread over C customers, then waits for them.
 *
 *   DATABASE_URL=... npx tsx examples/flow-control/client.ts [N=60] [C=6] [prefix=pay]
 */
import { Durably } from '../../src/index.js';

const n = Number(process.argv[2] ?? 60);
const customers = Number(process.argv[3] ?? 6);
const prefix = process.argv[4] ?? `pay-${Date.now().toString(36)}`;
const durably = new Durably({ url: process.env.DATABASE_URL, group: 'payments', log: () => {} });
try {
  // The provider allows 20 calls a second from us; every worker shares that.
  await durably.limits.set('function:charge', { rate: { limit: 20, periodMs: 1000 } });
  // A customer is charged once at a time (a limit per key: set when the customer is created).
  for (let c = 0; c < customers; c++) await durably.limits.set(`customer:${c}`, { concurrency: 1 });

  const handles = await Promise.all(Array.from({ length: n }, (_, i) => {
    const customer = `customer:${i % customers}`;
    return durably.beginRpc<{ worker: string }>(`${prefix}-${i}`, 'charge', customer, 100 + i,
      durably.options({ concurrencyKey: customer, priority: i % 10 === 0 ? 1 : 0 }));
  }));
  console.log(`enqueued ${n} charges over ${customers} customers: ${prefix}-0 .. ${prefix}-${n - 1}`);
  const results = await Promise.all(handles.map((h) => h.result()));
  const byWorker = new Map<string, number>();
  for (const r of results) byWorker.set(r.worker, (byWorker.get(r.worker) ?? 0) + 1);
  console.log(`charged ${results.length}: ${[...byWorker].map(([w, k]) => `${w} ${k}`).join(', ')}`);
  console.table(await durably.limits.list());
} finally {
  await durably.stop();
}
