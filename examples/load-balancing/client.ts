/**
 * Fires N invocations of compute_something at poll://any@workers and exits
 * without waiting: the promises live in Postgres, the workers pick them up.
 *
 *   DATABASE_URL=... npx tsx examples/load-balancing/client.ts [N=100] [prefix=job]
 *   node bin/durably.js promises list --pattern 'job-*'
 */
import { Durably } from '../../src/index.js';

const n = Number(process.argv[2] ?? 100);
const prefix = process.argv[3] ?? `job-${Date.now().toString(36)}`;
const durably = new Durably({ url: process.env.DATABASE_URL, log: () => {} });
try {
  const handles = await Promise.all(Array.from({ length: n }, (_, i) => {
    const cost = 500 + ((i * 389) % 1500); // 0.5 to 2 s
    return durably.beginRpc(`${prefix}-${i}`, 'compute_something', `${prefix}-${i}`, cost,
      durably.options({ target: 'poll://any@workers', timeout: 10 * 60_000 }));
  }));
  console.log(`enqueued ${handles.length} invocations: ${prefix}-0 .. ${prefix}-${n - 1}`);
} finally {
  await durably.stop();
}
