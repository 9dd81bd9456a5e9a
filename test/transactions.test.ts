/**
 * Transactional enqueue from TypeScript: beginRpc with options({ tx }) inside
 * a postgres.js sql.begin, and invokeInKysely inside a Kysely transaction.
 * The invocation exists if and only if the caller's transaction commits; a
 * worker runs the committed ones and never the rolled-back ones.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import postgres from 'postgres';
import { Kysely, type Generated } from 'kysely';
import { PostgresJSDialect } from 'kysely-postgres-js';
import { Durably, InvalidArgumentError, invokeInKysely, type Context, type DurablyDatabase } from '../src/index.js';
import type { TransactionSql } from '../src/db.js';
import { testDatabase } from './helpers/db.js';
import { waitFor } from './helpers/wait.js';
import { within } from './helpers/processes.js';

const db = await testDatabase();
const sql = db.sql;
await sql`create table orders (id serial primary key, item text not null)`;
await sql`create table shipments (order_id integer primary key, invocation_id text not null,
                                  at timestamptz not null default clock_timestamp())`;
await sql`create table runs (id serial primary key, invocation_id text not null)`;

interface AppDatabase {
  orders: { id: Generated<number>; item: string };
  shipments: { order_id: number; invocation_id: string };
}

const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;
const group = uid('tx');

/** A worker of `group` in this process, stopped after the test: records every run of ship_order. */
async function startWorker(t: TestContext): Promise<Durably> {
  const worker = new Durably({ url: db.url, group, pollMs: 100, log: () => {} });
  worker.register('ship_order', async (ctx: Context, orderId: number) => {
    await worker.sql`insert into runs (invocation_id) values (${ctx.id})`;
    await worker.sql`insert into shipments (order_id, invocation_id) values (${orderId}, ${ctx.id}) on conflict do nothing`;
    return { shipped: orderId };
  });
  await worker.start();
  t.after(() => worker.stop());
  return worker;
}

/** A client (and a worker of `group`) for one test. */
async function client(t: TestContext): Promise<Durably> {
  await startWorker(t);
  const d = new Durably({ url: db.url, group: uid('client'), pollMs: 100, log: () => {} });
  t.after(() => d.stop());
  return d;
}

function kysely(t: TestContext): Kysely<AppDatabase & DurablyDatabase> {
  const k = new Kysely<AppDatabase & DurablyDatabase>({
    dialect: new PostgresJSDialect({ postgres: postgres(db.url, { max: 3, onnotice: () => {} }) }),
  });
  t.after(() => k.destroy());
  return k;
}

const rollback = Object.assign(new Error('rolled back on purpose'), { rollback: true });
async function rolledBack(p: Promise<unknown>): Promise<void> {
  await assert.rejects(p, (e) => e === rollback);
}

async function exists(id: string): Promise<{ promises: number; tasks: number; runs: number }> {
  const [row] = await sql`select (select count(*)::int from durably.promises where id = ${id}) as promises,
                                 (select count(*)::int from durably.tasks where promise_id = ${id}) as tasks,
                                 (select count(*)::int from runs where invocation_id = ${id}) as runs`;
  return { promises: row.promises, tasks: row.tasks, runs: row.runs };
}

test('postgres.js: an invocation in a rolled-back transaction never exists and never runs', async (t) => {
  const d = await client(t);
  const id = uid('rb');
  let seenOutside: number | undefined;
  await rolledBack(sql.begin(async (tx) => {
    const [order] = await tx`insert into orders (item) values ('book') returning id`;
    await d.beginRpc(id, 'ship_order', order.id, d.options({ target: `poll://any@${group}`, tx: tx as unknown as TransactionSql }));
    // inside the transaction it exists; outside, not yet
    assert.equal((await tx`select count(*)::int as n from durably.promises where id = ${id}`)[0].n, 1);
    seenOutside = (await d.sql`select count(*)::int as n from durably.promises where id = ${id}`)[0].n as number;
    throw rollback;
  }));
  assert.equal(seenOutside, 0, 'uncommitted: invisible to other connections (and to workers)');

  // a committed control invocation runs; by then the rolled-back one would have too
  const control = uid('control');
  const h = await d.beginRpc(control, 'ship_order', -1, d.options({ target: group }));
  await within(h.result(), 10_000, 'the control invocation');
  assert.deepEqual(await exists(id), { promises: 0, tasks: 0, runs: 0 });
  assert.equal((await sql`select count(*)::int as n from orders`)[0].n,
    (await sql`select count(*)::int as n from orders where item <> 'book'`)[0].n, 'the order rolled back with it');
  await assert.rejects(d.get(id), { code: 'NOT_FOUND' });
});

test('postgres.js: an invocation in a committed transaction exists at commit and a worker runs it once', async (t) => {
  const d = await client(t);
  const id = uid('commit');
  const { handle, orderId } = await sql.begin(async (tx) => {
    const [order] = await tx`insert into orders (item) values ('lamp') returning id`;
    const handle = await d.beginRpc<{ shipped: number }>(id, 'ship_order', order.id,
      d.options({ target: group, tx: tx as unknown as TransactionSql, tags: { order: String(order.id) } }));
    // the same id again in the same transaction dedups
    await d.beginRpc(id, 'ship_order', order.id, d.options({ target: group, tx: tx as unknown as TransactionSql }));
    return { handle, orderId: order.id as number };
  });
  const [p] = await sql`select state, func, args, tags from durably.promises where id = ${id}`;
  assert.equal(p.func, 'ship_order');
  assert.deepEqual(p.args, [orderId]);
  assert.deepEqual(p.tags, { order: String(orderId) });
  assert.deepEqual(await within(handle.result(), 10_000, 'the committed invocation'), { shipped: orderId });
  const [shipment] = await sql`select invocation_id from shipments where order_id = ${orderId}`;
  assert.equal(shipment.invocation_id, id);
  assert.deepEqual(await exists(id), { promises: 1, tasks: 0, runs: 1 });
});

test('postgres.js: bad input inside a transaction throws before writing and leaves the transaction usable', async (t) => {
  const d = await client(t);
  const id = uid('bad');
  const orderId = await sql.begin(async (tx) => {
    const [order] = await tx`insert into orders (item) values ('pen') returning id`;
    await assert.rejects(d.beginRpc(id, 'ship_order', () => 1, d.options({ target: group, tx: tx as unknown as TransactionSql })),
      InvalidArgumentError);
    await assert.rejects(d.beginRpc(id, 'ship_order', 1, d.options({ target: 'http://nope', tx: tx as unknown as TransactionSql })),
      InvalidArgumentError);
    await tx`update orders set item = 'pen!' where id = ${order.id}`;
    return order.id as number;
  });
  assert.equal((await sql`select item from orders where id = ${orderId}`)[0].item, 'pen!');
  assert.deepEqual(await exists(id), { promises: 0, tasks: 0, runs: 0 });
});

test('Kysely: invokeInKysely follows the transaction: rollback leaves nothing, commit runs once', async (t) => {
  await startWorker(t);
  const k = kysely(t);
  const rolled = uid('k-rb');
  await rolledBack(k.transaction().execute(async (trx) => {
    const order = await trx.insertInto('orders').values({ item: 'kysely-rb' }).returning('id').executeTakeFirstOrThrow();
    const r = await invokeInKysely(trx, rolled, 'ship_order', [order.id], `poll://any@${group}`);
    assert.equal(r.created, true);
    assert.equal(r.state, 'pending');
    throw rollback;
  }));

  const committed = uid('k-commit');
  const orderId = await k.transaction().execute(async (trx) => {
    const order = await trx.insertInto('orders').values({ item: 'kysely' }).returning('id').executeTakeFirstOrThrow();
    const first = await invokeInKysely(trx, committed, 'ship_order', [order.id], group, { timeout: 60_000, tags: { via: 'kysely' } });
    const second = await invokeInKysely(trx, committed, 'ship_order', [order.id], group);
    assert.deepEqual([first.created, second.created], [true, false], 'dedup by id within the transaction');
    return order.id;
  });

  // read through the typed views
  const row = await waitFor(async () => {
    const r = await k.selectFrom('durably.promise_list').selectAll().where('id', '=', committed).executeTakeFirst();
    return r?.state === 'resolved' ? r : undefined;
  }, { timeoutMs: 10_000, what: 'the Kysely-enqueued invocation to run' });
  assert.deepEqual(row.value, { shipped: orderId });
  assert.deepEqual(row.tags, { via: 'kysely' });
  assert.equal(row.task_state, null);
  const workers = await k.selectFrom('durably.worker_status').select(['id', 'status'])
    .where('group_name', '=', group).where('status', '=', 'active').execute();
  assert.equal(workers.length, 1, 'the one running worker of the group (those of earlier tests stopped)');

  assert.deepEqual(await exists(committed), { promises: 1, tasks: 0, runs: 1 });
  assert.deepEqual(await exists(rolled), { promises: 0, tasks: 0, runs: 0 });
  assert.equal((await sql`select count(*)::int as n from orders where item = 'kysely-rb'`)[0].n, 0);

  // errors: typed, before anything is sent, and database ones mapped
  await assert.rejects(invokeInKysely(k, uid('x'), 'ship_order', [1], 'not a group!'), InvalidArgumentError);
  await assert.rejects(invokeInKysely(k, '', 'ship_order', [1], group), InvalidArgumentError);
  await assert.rejects(invokeInKysely(k, uid('x'), 'ship_order', [undefined], group), InvalidArgumentError);
});

test('postgres.js: a schedule created in a transaction exists iff it commits', async (t) => {
  const d = await client(t);
  const rolledBackId = uid('sched-rb');
  await rolledBack(sql.begin(async (tx) => {
    await d.schedule(rolledBackId, '0 3 * * *', 'ship_order', 1, d.options({ target: group, tx: tx as unknown as TransactionSql }));
    assert.equal((await tx`select count(*)::int as n from durably.schedules where id = ${rolledBackId}`)[0].n, 1);
    throw rollback;
  }));
  await assert.rejects(d.schedules.get(rolledBackId), { code: 'NOT_FOUND' });

  const committedId = uid('sched-c');
  await sql.begin(async (tx) => {
    await d.schedule(committedId, '0 3 * * *', 'ship_order', 1, d.options({ target: group, tx: tx as unknown as TransactionSql }));
  });
  assert.equal((await d.schedules.get(committedId)).cron, '0 3 * * *');
  await d.schedules.delete(committedId);
});
