/**
 * Retention under load and around live work (sql/retention.sql, the prune
 * pass of src/worker.ts): the workers keep pace with a high completion rate,
 * never delete a tree that still has pending work, share the pruning without
 * waiting on each other, and forget workers long gone.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as delay } from 'node:timers/promises';
import postgres from 'postgres';
import { Durably, type Context } from '../src/index.js';
import type { Sql } from '../src/db.js';
import { testDatabase, type TestDatabase } from './helpers/db.js';
import { waitFor } from './helpers/wait.js';

const quiet = () => {};

function durably(t: TestContext, db: TestDatabase, config: ConstructorParameters<typeof Durably>[0] = {}): Durably {
  const d = new Durably({ url: db.url, pollMs: 100, graceMs: 200, log: quiet, ...config });
  t.after(() => d.stop());
  return d;
}

/** `n` invocations `<prefix>-<i>`, resolved, created and settled `ageDays` ago. */
async function settledRoots(sql: Sql, prefix: string, n: number, ageDays: number): Promise<void> {
  for (let i = 0; i < n; i += 5000) {
    const ids = Array.from({ length: Math.min(5000, n - i) }, (_, k) => `${prefix}-${i + k}`);
    const list = `{${ids.join(',')}}`;
    await sql`select count(*) from durably.invoke_many(${list}::text[], array_fill('f'::text, array[${ids.length}::int]),
      array_fill('[1]'::jsonb, array[${ids.length}::int]), 'nobody')`;
    await sql`select count(*) from durably.settle_many(${list}::text[], array_fill('resolved'::text, array[${ids.length}::int]),
      array_fill('{"ok": true}'::jsonb, array[${ids.length}::int]))`;
  }
  await sql`update durably.promises set created_at = created_at - ${ageDays} * interval '1 day',
              settled_at = settled_at - ${ageDays} * interval '1 day' where id like ${`${prefix}-%`}`;
}

async function count(sql: Sql, pattern: string): Promise<number> {
  const [{ n }] = await sql<{ n: number }[]>`select count(*)::int as n from durably.promises where id like ${pattern}`;
  return n;
}

test('defect: retention cannot keep up', async (t) => {
  const db = await testDatabase();
  const N = 50_000;
  await settledRoots(db.sql, 'old', N, 8);
  await settledRoots(db.sql, 'recent', 10, 1);
  await db.sql`select * from durably.invoke('old-pending', 'f', '[]', 'nobody')`;
  await db.sql`update durably.promises set created_at = now() - interval '30 days' where id = 'old-pending'`;
  await db.sql`vacuum analyze durably.promises`;

  const d = durably(t, db, { group: 'pruner' });
  const started = Date.now();
  await d.start();
  await waitFor(async () => (await count(db.sql, 'old-%')) === 1, // old-pending stays
    { timeoutMs: 60_000, intervalMs: 50, what: `one worker to delete ${N} settled invocations past retention` });
  const ms = Date.now() - started;
  t.diagnostic(`one worker deleted ${N} settled invocations in ${ms} ms from its start: ${Math.round(N / ms * 1000)} per second`);
  assert.equal(await count(db.sql, 'recent-%'), 10, 'those within the retention period stay');
  assert.equal(await count(db.sql, 'old-pending'), 1, 'a pending invocation stays, however old');
});

test('defect: retention deletes live work', async (t) => {
  const db = await testDatabase();
  const d = durably(t, db, { group: 'live' });
  // The root starts a child it does not wait for and settles; the child
  // waits for an approval from outside.
  d.register('detach', async (ctx: Context) => ctx.beginRpc('await_approval').id);
  d.register('await_approval', async (ctx: Context) => {
    const approval = await ctx.promise<string>();
    return `approved: ${await approval.result()}`;
  });
  await d.start();
  const childId = await d.run('root', 'detach') as string;
  const approvalId = `${childId}.0`;
  await waitFor(async () => (await count(db.sql, approvalId)) === 1, { what: 'the child to wait for its approval' });
  const age = () => db.sql`update durably.promises set created_at = created_at - interval '8 days',
                             settled_at = settled_at - interval '8 days' where root_id = 'root' or id = 'root'`;
  await age();
  const tree = async () => (await db.sql<{ id: string; state: string }[]>`
    select id, state from durably.promises where id = 'root' or id like 'root.%' order by id`).map((r) => `${r.id} ${r.state}`);
  const before = await tree();
  assert.deepEqual(before, ['root resolved', `${childId} pending`, `${approvalId} pending`]);

  const [{ deleted }] = await db.sql<{ deleted: number }[]>`select durably.prune_promises('7 days') as deleted`;
  assert.equal(deleted, 0, 'a settled root whose tree has pending members is kept');
  assert.deepEqual(await tree(), before);
  const [task] = await db.sql`select state from durably.task_list where promise_id = ${childId}`;
  assert.ok(task, 'the running child keeps its task');

  await d.promises.resolve(approvalId, 'yes');
  assert.equal(await (await d.get(childId)).result(), 'approved: yes', 'the child finishes and its caller gets the result');
  const [{ deleted: fresh }] = await db.sql<{ deleted: number }[]>`select durably.prune_promises('7 days') as deleted`;
  assert.equal(fresh, 0, 'the tree is kept for the retention period after its last member settled');
  await age();
  const [{ deleted: all }] = await db.sql<{ deleted: number }[]>`select durably.prune_promises('7 days') as deleted`;
  assert.equal(all, 3, 'once every member settled, the whole tree goes');
  assert.deepEqual(await tree(), []);
});

test('pruners at once: each root deleted once, no pruner waits for another', async (t) => {
  const db = await testDatabase();
  const N = 20_000;
  await settledRoots(db.sql, 'p', N, 8);
  await db.sql`select count(*) from durably.invoke('p-pending', 'f', '[]', 'nobody')`;
  const pruners = Array.from({ length: 4 }, () => {
    const sql = postgres(db.url, { max: 1, onnotice: () => {}, connection: { application_name: 'test-harness', lock_timeout: 200 } });
    t.after(() => sql.end({ timeout: 1 }));
    return sql;
  });
  const counts = await Promise.all(pruners.map(async (sql) => {
    let total = 0;
    for (;;) {
      const [{ deleted }] = await sql<{ deleted: number }[]>`select durably.prune_promises('7 days', 500) as deleted`;
      total += deleted;
      if (deleted < 500) return total;
    }
  }));
  t.diagnostic(`deleted per pruner: ${counts.join(', ')}`);
  assert.equal(counts.reduce((a, b) => a + b, 0), N, 'each root deleted by exactly one pruner');
  assert.ok(counts.filter((c) => c > 0).length >= 2, 'the work was shared');
  assert.equal(await count(db.sql, 'p-%'), 1, 'only the pending one is left');
});

test('defect: the workers table only grows', async (t) => {
  const db = await testDatabase();
  const add = (id: string, heartbeat: string, stopped: string | null) => db.sql`
    insert into durably.workers (id, group_name, host, pid, lease_ms, heartbeat_at, stopped_at)
    values (${id}, 'g', 'h', 1, 30000, now() - ${heartbeat}::interval, now() - ${stopped}::interval)`;
  const ids = {
    stoppedLongAgo: '00000000-0000-4000-8000-000000000001',
    silentLongAgo: '00000000-0000-4000-8000-000000000002',
    stoppedRecently: '00000000-0000-4000-8000-000000000003',
    silentRecently: '00000000-0000-4000-8000-000000000004',
  };
  await add(ids.stoppedLongAgo, '3 days', '2 days');
  await add(ids.silentLongAgo, '2 days', null);
  await add(ids.stoppedRecently, '3 hours', '2 hours');
  await add(ids.silentRecently, '30 minutes', null);
  // recorded idle (durably.idle_workers has no foreign key: pruning removes these rows itself)
  for (const id of [ids.silentLongAgo, ids.stoppedRecently, ids.silentRecently]) {
    await db.sql`insert into durably.idle_workers (worker_id, group_name, free) values (${id}, 'g', 1)`;
  }
  const idle = async () => (await db.sql<{ worker_id: string }[]>`select worker_id from durably.idle_workers order by worker_id`)
    .map((r) => r.worker_id).filter((id) => id.startsWith('00000000'));

  // Every worker forgets them in its periodic pass, retention of results or not.
  const d = durably(t, db, { group: 'forgetful', retentionMs: null });
  await d.start();
  const left = await waitFor(async () => {
    const rows = await db.sql<{ id: string }[]>`select id from durably.workers order by id`;
    return rows.length === 3 ? rows.map((r) => r.id) : undefined;
  }, { what: 'the workers gone for over a day to be removed', timeoutMs: 15_000 });
  assert.deepEqual(left.filter((id) => id.startsWith('00000000')), [ids.stoppedRecently, ids.silentRecently]);
  const [{ n }] = await db.sql<{ n: number }[]>`select durably.prune_workers('1 hour') as n`;
  assert.equal(n, 1, 'with a retention of an hour, the one stopped two hours ago');
  assert.deepEqual(await idle(), [ids.silentRecently], 'the idle rows of the workers forgotten are gone');
});

test('bad input to the pruning procedures: DU002 naming the problem, nothing deleted', async () => {
  const db = await testDatabase();
  await settledRoots(db.sql, 'kept', 10, 8);
  const du002 = (pattern: RegExp) => (err: unknown) =>
    (err as { code?: string }).code === 'DU002' && pattern.test((err as Error).message);
  await assert.rejects(db.sql`select durably.prune_promises('-1 day')`, du002(/retention period/));
  await assert.rejects(db.sql`select durably.prune_promises(null)`, du002(/retention period/));
  await assert.rejects(db.sql`select durably.prune_promises('1 day', 0)`, du002(/limit/));
  await assert.rejects(db.sql`select durably.prune_promises('1 day', 1000000)`, du002(/limit/));
  await assert.rejects(db.sql`select durably.prune_workers('-1 hour')`, du002(/retention period/));
  assert.equal(await count(db.sql, 'kept-%'), 10);
});

test('a worker removed after a long silence joins again, and claims again', async (t) => {
  const db = await testDatabase();
  // pollMs 3 s: the first prune pass comes at a random moment of the first 3 s
  const d = durably(t, db, { group: 'frozen', pollMs: 3000 });
  d.register('ping', async () => 'pong');
  await d.start();
  // what another worker's prune_workers does to a worker frozen for over a day
  const [gone] = await db.sql<{ id: string }[]>`delete from durably.workers where group_name = 'frozen' returning id`;
  assert.ok(gone);
  // (in the rare run whose first pass came before the delete, the next pass is a minute later)
  const handle = await d.beginRun('after-the-freeze', 'ping');
  assert.equal(await Promise.race([handle.result(), delay(70_000, 'no claim', { ref: false })]), 'pong');
  const [back] = await db.sql<{ id: string }[]>`select id from durably.workers where group_name = 'frozen'`;
  assert.equal(back?.id, gone.id, 'the same worker, registered again');
});
