/**
 * Leases and the claim order. A heartbeat renews leases without writing an
 * index entry (a HOT update of lease_until alone); an execution longer than
 * its lease stays with its worker and is taken over only when that worker
 * dies; and a resumed execution (what it awaited settled, or its timer came
 * due) is claimed ahead of work of its group that became ready before it.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import { Durably } from '../src/index.js';
import { createWorkerTables, testDatabase } from './helpers/db.js';
import { waitFor } from './helpers/wait.js';
import { spawnChild } from './helpers/processes.js';

const db = await testDatabase();
const sql = db.sql;
await createWorkerTables(sql);

const WORKER = fileURLToPath(new URL('./fixtures/worker.ts', import.meta.url));
const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;
const LEASE_MS = 30_000;

/** A worker of `group` known to the database, claiming by SQL as the TypeScript worker does. */
async function sqlWorker(group: string, functions: string[]): Promise<string> {
  const id = randomUUID();
  await sql`select durably.register_worker(${id}, ${group}, 'test', 1, ${functions}::text[], ${LEASE_MS})`;
  return id;
}

async function claim(worker: string, group: string, n: number) {
  return sql<{ id: string; ready_seconds: number }[]>`
    select id, ready_seconds from durably.claim_tasks(${worker}, ${group}, ${n}, ${LEASE_MS})`;
}

test('a heartbeat renews a lease with a HOT update: available_at and every indexed column stay as they were', async () => {
  const group = uid('hot');
  const worker = await sqlWorker(group, ['job']);
  // Few enough that their versions fit in one page without pruning it (which
  // a concurrent snapshot, autovacuum's, may hold off): HOT unless an indexed column changes.
  const ids = Array.from({ length: 10 }, (_, i) => `${group}-${i}`);
  for (const id of ids) await sql`select from durably.invoke(${id}, 'job', '[]', ${group})`;
  assert.equal((await claim(worker, group, ids.length)).length, ids.length);

  // One connection: its statistics are flushed when it goes idle after pg_stat_force_next_flush().
  const conn = await sql.reserve();
  try {
    const indexed = () => conn<Record<string, unknown>[]>`
      select promise_seq, group_name, available_at, worker_id, priority, concurrency_key, parked_on, state
        from durably.tasks where group_name = ${group} order by promise_seq`;
    const updates = async () => {
      await conn`select pg_stat_force_next_flush()`;
      const [row] = await conn<{ upd: number; hot: number }[]>`
        select n_tup_upd::int as upd, n_tup_hot_upd::int as hot from pg_stat_user_tables
         where schemaname = 'durably' and relname = 'tasks'`;
      return row;
    };
    const before = await indexed();
    const [{ lease: leaseBefore }] = await conn<{ lease: Date }[]>`
      select min(lease_until) as lease from durably.tasks where group_name = ${group}`;
    const statsBefore = await updates();
    await delay(20);
    const lost = await conn`select * from durably.heartbeat(${worker}, ${LEASE_MS}, ${ids}::text[])`;
    assert.deepEqual([...lost], [], 'every lease renewed');
    const statsAfter = await updates();

    assert.deepEqual(await indexed(), before, 'no indexed column changed');
    const [{ lease: leaseAfter }] = await conn<{ lease: Date }[]>`
      select min(lease_until) as lease from durably.tasks where group_name = ${group}`;
    assert.ok(leaseAfter > leaseBefore, `the lease moved on (${leaseBefore.toISOString()} -> ${leaseAfter.toISOString()})`);
    const updated = statsAfter.upd - statsBefore.upd;
    const hot = statsAfter.hot - statsBefore.hot;
    assert.equal(updated, ids.length, 'one update per held task');
    assert.equal(hot, updated, `every renewal a HOT update (${hot} of ${updated})`);
  } finally {
    conn.release();
  }
});

test('a claim that meets a task whose lease still runs leaves it claimed and claims past it', async () => {
  const group = uid('held');
  const [holder, other] = [await sqlWorker(group, ['job']), await sqlWorker(group, ['job'])];
  await sql`select from durably.invoke(${`${group}-long`}, 'job', '[]', ${group})`;
  assert.deepEqual((await claim(holder, group, 1)).map((r) => r.id), [`${group}-long`]);
  await sql`select from durably.invoke(${`${group}-next`}, 'job', '[]', ${group})`;
  // The claim's lease point has passed; the heartbeats kept the lease.
  await sql`update durably.tasks set available_at = now() - interval '1 second' where promise_id = ${`${group}-long`}`;
  await sql`select * from durably.heartbeat(${holder}, ${LEASE_MS}, ${[`${group}-long`]}::text[])`;

  assert.deepEqual((await claim(other, group, 2)).map((r) => r.id), [`${group}-next`]);
  const [task] = await sql<{ worker_id: string; attempt: number; moved: boolean }[]>`
    select worker_id, attempt, available_at = lease_until as moved from durably.tasks where promise_id = ${`${group}-long`}`;
  assert.deepEqual(task, { worker_id: holder, attempt: 1, moved: true });
});

async function worker(t: TestContext, name: string, group: string) {
  return spawnChild(t, name, WORKER, {
    env: { DATABASE_URL: db.url, WORKER_NAME: name, GROUP: group, LEASE_MS: '1000', HEARTBEAT_MS: '250', POLL_MS: '100' },
  });
}

function client(t: TestContext): Durably {
  const d = new Durably({ url: db.url, group: uid('client'), pollMs: 200, log: () => {} });
  t.after(() => d.stop());
  return d;
}

test('an execution four times longer than its lease runs once, on its worker, while another worker claims', { timeout: 30_000 }, async (t) => {
  const group = uid('long');
  await Promise.all([worker(t, 'a', group), worker(t, 'b', group)]);
  const c = client(t);
  const id = uid('long');
  const result = await c.rpc<{ worker: string }>(id, 'work', id, 4000, c.options({ target: group }));
  const runs = await sql<{ worker_name: string; attempt: number }[]>`
    select worker_name, attempt from executions where invocation_id = ${id}`;
  assert.deepEqual([...runs], [{ worker_name: result.worker, attempt: 1 }]);
});

test('the lease of a SIGKILLed worker expires and another worker runs its execution again', { timeout: 30_000 }, async (t) => {
  const group = uid('killed');
  const workers = await Promise.all([worker(t, 'a', group), worker(t, 'b', group)]);
  const c = client(t);
  const id = uid('killed');
  const h = await c.beginRpc<{ worker: string }>(id, 'work', id, 2000, c.options({ target: group }));
  const [{ worker_name: first }] = await waitFor(() => sql<{ worker_name: string }[]>`
    select worker_name from executions where invocation_id = ${id}`.then((r) => (r.length ? r : null)),
  { what: 'the first run' });
  const killedAt = Date.now();
  await workers.find((w) => w.name === first)!.kill();
  const result = await h.result();
  assert.notEqual(result.worker, first);
  const runs = await sql<{ worker_name: string; attempt: number }[]>`
    select worker_name, attempt from executions where invocation_id = ${id} order by id`;
  assert.deepEqual(runs.map((r) => r.attempt), [1, 2]);
  assert.ok(Date.now() - killedAt < 10_000, 'taken over within a few leases');
});

/** Makes `n` ready tasks of `job` in the group, which became ready before what the test wakes. */
async function backlog(group: string, n: number): Promise<void> {
  await sql`select from durably.invoke_many(
    array(select ${group} || '-job-' || i from generate_series(1, ${n}) i),
    array(select 'job' from generate_series(1, ${n})),
    array(select '[]'::jsonb from generate_series(1, ${n})), ${group})`;
}

test('an execution woken by a settled promise is claimed before older ready tasks of its group', async () => {
  const group = uid('woken');
  const w = await sqlWorker(group, ['wf', 'job']);
  const wf = `${group}-wf`;
  await sql`select from durably.invoke(${wf}, 'wf', '[]', ${group})`;
  assert.deepEqual((await claim(w, group, 1)).map((r) => r.id), [wf]);
  await sql`select from durably.create_promise(${`${wf}.ext`}, 'external', now() + interval '1 hour')`;
  assert.equal((await sql`select durably.suspend_task(${w}, ${wf}, ${[`${wf}.ext`]}::text[], null) as s`)[0].s, 'suspended');
  await backlog(group, 50);
  await delay(1000);

  const resolving = Date.now();
  await sql`select from durably.resolve(${`${wf}.ext`})`;
  const [first] = await claim(w, group, 1);
  const sinceResolving = (Date.now() - resolving) / 1000;
  assert.equal(first.id, wf);
  assert.ok(first.ready_seconds <= sinceResolving + 0.01,
    `runnable since it was woken (${sinceResolving} s ago), not since it was first due (${first.ready_seconds} s)`);
});

test('an execution whose timer came due is claimed before older ready tasks of its group', async () => {
  const group = uid('timer');
  const w = await sqlWorker(group, ['wf', 'job']);
  const wf = `${group}-wf`;
  await sql`select from durably.invoke(${wf}, 'wf', '[]', ${group})`;
  assert.deepEqual((await claim(w, group, 1)).map((r) => r.id), [wf]);
  await delay(1000);
  const suspending = Date.now();
  await sql`select durably.suspend_task(${w}, ${wf}, '{}'::text[], now() + interval '200 milliseconds')`;
  await backlog(group, 50);
  await delay(500);

  const [first] = await claim(w, group, 1);
  const sinceDue = (Date.now() - suspending) / 1000 - 0.2;
  assert.equal(first.id, wf);
  assert.ok(first.ready_seconds > 0 && first.ready_seconds <= sinceDue + 0.01,
    `runnable since its timer came due (${sinceDue} s ago), not since it was first due (${first.ready_seconds} s)`);
});
