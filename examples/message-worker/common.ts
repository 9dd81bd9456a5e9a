/** Settings shared by consumer.ts and producer.ts (all from the environment). */
import { readFileSync } from 'node:fs';
import type { Sql } from 'postgres';

export const AMQP_URL = process.env.AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672';
export const INPUT_QUEUE = process.env.INPUT_QUEUE ?? 'records_to_be_deleted';
export const OUTPUT_QUEUE = process.env.OUTPUT_QUEUE ?? 'records_that_were_deleted';
/** Items deleted per step. */
export const BATCH = Number(process.env.BATCH ?? 2);

/** Creates the example's tables (idempotent). */
export async function applySchema(sql: Sql<any>): Promise<void> {
  await sql.unsafe(readFileSync(new URL('./schema.sql', import.meta.url), 'utf8'));
}
