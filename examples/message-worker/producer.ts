/**
 * Creates ITEMS items (default 10) for each record id given and publishes the
 * ids to records_to_be_deleted. Giving an id twice publishes it twice (a
 * redelivery, as far as the consumer can tell).
 *
 *   DATABASE_URL=... npx tsx examples/message-worker/producer.ts r1 r2 r2
 */
import amqp from 'amqplib';
import postgres from 'postgres';
import { AMQP_URL, INPUT_QUEUE, applySchema } from './common.js';

const ids = process.argv.slice(2);
const items = Number(process.env.ITEMS ?? 10);
const sql = postgres(process.env.DATABASE_URL!, { max: 1, onnotice: () => {} });
const connection = await amqp.connect(AMQP_URL);
try {
  await applySchema(sql);
  for (const id of new Set(ids)) {
    await sql`insert into record_items (record_id, item) select ${id}, i from generate_series(1, ${items}::int) i on conflict do nothing`;
  }
  const channel = await connection.createConfirmChannel();
  await channel.assertQueue(INPUT_QUEUE, { durable: true });
  for (const id of ids) channel.sendToQueue(INPUT_QUEUE, Buffer.from(id), { persistent: true });
  await channel.waitForConfirms();
  console.log(`published ${ids.join(', ')} to ${INPUT_QUEUE} (${items} items each)`);
} finally {
  await connection.close();
  await sql.end();
}
