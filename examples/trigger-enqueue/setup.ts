/**
 * Migrates durably's schema and applies schema.sql (the same as
 * `durably migrate && psql "$DATABASE_URL" -f schema.sql`).
 *
 *   DATABASE_URL=... npx tsx examples/trigger-enqueue/setup.ts
 */
import { readFileSync } from 'node:fs';
import postgres from 'postgres';
import { migrate } from '../../src/index.js';

const sql = postgres(process.env.DATABASE_URL!, { max: 1, onnotice: () => {} });
try {
  await migrate(sql as never);
  await sql.unsafe(readFileSync(new URL('./schema.sql', import.meta.url), 'utf8'));
  console.log('schema ready: orders, shipments, trigger orders_enqueue_shipping');
} finally {
  await sql.end();
}
