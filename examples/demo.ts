/**
 * The main demo (`npm run demo`): two workers of group `workers` share ten
 * durable invocations dispatched by a client to `poll://any@workers`; each
 * sleeps durably; a workflow checkpoints its steps; an every-second cron
 * schedule ticks three times. Runs on DATABASE_URL, or on an embedded
 * PostgreSQL when none is set.
 */
import { Durably, type Context } from '../src/index.js';
import { databaseForDev } from '../src/database.js';

const db = await databaseForDev(console.log);

function computeSomething(worker: string) {
  return async function compute_something(ctx: Context, id: string, costMs: number) {
    console.log(`  ${id} starting on worker ${worker}`);
    await ctx.sleep(costMs); // durable: after a crash another worker waits only what remains
    console.log(`  ${id} computed something that cost ${costMs} ms (worker ${worker})`);
    return `${id} computed something that cost ${costMs} ms`;
  };
}

async function report(ctx: Context, records: string[]) {
  let total = 0;
  for (const r of records) total += await ctx.run(async function countRows(_c: Context, name: string) { return name.length; }, r);
  await ctx.sleep(200);
  return { records: records.length, total, at: await ctx.now() };
}

const workers = ['a', 'b'].map((name) => {
  const w = new Durably({ url: db.url, group: 'workers', concurrency: 5, inProcessSleepMs: 10_000 });
  w.register(computeSomething(name));
  w.register(report);
  w.register('daily_report', async (ctx: Context, team: string) => {
    console.log(`  ${ctx.id}: report for ${team} (worker ${name})`);
    return `report for ${team}`;
  });
  return w;
});
for (const w of workers) await w.start();

const client = new Durably({ url: db.url, group: 'client' });
const run = Date.now().toString(36);
console.log('dispatching 10 invocations to poll://any@workers');
const handles = await Promise.all(Array.from({ length: 10 }, (_, i) =>
  client.beginRpc(`demo-${run}-${i}`, 'compute_something', `demo-${run}-${i}`, 300 + i * 50,
    client.options({ target: 'poll://any@workers' }))));
await Promise.all(handles.map((h) => h.result()));
console.log('all 10 done; dispatching them again with the same ids returns the stored results:');
const again = await client.rpc(`demo-${run}-0`, 'compute_something', 'ignored', 0, client.options({ target: 'workers' }));
console.log(`  ${again}`);

console.log('a workflow with checkpointed steps:');
console.log(' ', await client.rpc(`report-${run}`, 'report', ['alpha', 'beta', 'gamma'], client.options({ target: 'workers' })));

console.log('an every-second schedule (6-field cron); every tick is a durable promise:');
const schedule = await client.schedule(`daily-${run}`, '* * * * * *', 'daily_report', 'ops',
  client.options({ target: 'workers', timezone: 'Europe/Berlin' }));
const [first] = await schedule.next(1);
for (let i = 0; i < 3; i++) {
  const tick = new Date(first.getTime() + i * 1000).toISOString();
  await client.wait(`daily-${run}.${tick}`, 10_000);
}
await schedule.delete();

await client.stop();
for (const w of workers) await w.stop();
await db.stop();
