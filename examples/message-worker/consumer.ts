/**
 * A message worker (seed 004): reads record ids from the queue
 * records_to_be_deleted, starts one durable workflow per record id with
 * beginRun (never awaiting it) and acks. The workflow deletes the record's
 * items in batches, one checkpointed step each with a durable sleep in
 * between, then publishes to records_that_were_deleted.
 *
 * - The same message delivered twice starts nothing new: the workflow id is
 *   derived from the record id.
 * - When a consumer dies mid-workflow, another one (any process of group
 *   `records`) resumes it from its last checkpoint after the lease (3 s),
 *   although the message was acked long ago: the work lives in Postgres.
 *
 *   DATABASE_URL=... npx tsx examples/message-worker/consumer.ts
 */
import amqp from 'amqplib';
import { Durably, type Context } from '../../src/index.js';
import { AMQP_URL, BATCH, INPUT_QUEUE, OUTPUT_QUEUE, applySchema } from './common.js';

const name = process.env.WORKER_NAME ?? `consumer-${process.pid}`;
const durably = new Durably({
  url: process.env.DATABASE_URL,
  group: 'records',
  leaseMs: 3000,
  log: (m) => console.error(`[${name}] ${m}`),
});
const sql = durably.sql;
await applySchema(sql as never);

const connection = await amqp.connect(AMQP_URL);
const channel = await connection.createConfirmChannel();
await channel.assertQueue(INPUT_QUEUE, { durable: true });
await channel.assertQueue(OUTPUT_QUEUE, { durable: true });

/** Deletes up to BATCH items of the record; true while some are left. */
async function deleteBatch(_ctx: Context, recordId: string, batch: number): Promise<boolean> {
  const [{ deleted }] = await sql<{ deleted: number }[]>`
    with d as (
      delete from record_items where (record_id, item) in (
        select record_id, item from record_items where record_id = ${recordId} order by item limit ${BATCH})
      returning 1)
    select count(*)::int as deleted from d`;
  const [{ left }] = await sql<{ left: number }[]>`select count(*)::int as left from record_items where record_id = ${recordId}`;
  await sql`insert into deletion_log (record_id, batch, deleted, worker) values (${recordId}, ${batch}, ${deleted}, ${name})`;
  console.log(`${name} ${recordId} batch ${batch}: deleted ${deleted}, ${left} left`);
  return left > 0;
}

/** Publishes the completion and waits for the broker's confirm before the step is checkpointed. */
async function publishCompletion(_ctx: Context, recordId: string, batches: number): Promise<void> {
  channel.sendToQueue(OUTPUT_QUEUE, Buffer.from(JSON.stringify({ recordId, batches, by: name })), { persistent: true });
  await channel.waitForConfirms();
  console.log(`${name} ${recordId} completion published`);
}

async function delete_records(ctx: Context, recordId: string) {
  let batch = 0;
  while (await ctx.run(deleteBatch, recordId, ++batch)) await ctx.sleep(200);
  await ctx.run(publishCompletion, recordId, batch);
  return { recordId, batches: batch };
}
durably.register(delete_records);
await durably.start();

await channel.prefetch(20);
await channel.consume(INPUT_QUEUE, (msg) => {
  if (!msg) return;
  const recordId = msg.content.toString('utf8').trim();
  // enqueue (dedup by id) and ack; the workflow runs on any consumer of the group
  durably.beginRun(`delete-${recordId}`, delete_records, recordId).then(
    (h) => { console.log(`${name} dispatched ${h.id}`); channel.ack(msg); },
    (err) => { console.error(`${name} could not dispatch ${recordId}: ${(err as Error).message}`); channel.nack(msg, false, true); },
  );
});
console.log(`ready: ${name} consumes ${INPUT_QUEUE}`);

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => void (async () => {
    await channel.close().catch(() => {});
    await connection.close().catch(() => {});
    await durably.stop();
    process.exit(0);
  })());
}
