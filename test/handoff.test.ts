/**
 * Handoffs: an invocation that an idle worker can start at once is claimed
 * for it by the invoking transaction and sent to it in a notification
 * (durably.hand_off). It starts without a claim; it runs once however long
 * the invoking transaction stays open; a worker that misses one (its
 * listening connection lost) gets it back; a stopping worker releases it.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { Durably } from '../src/index.js';
import type { TransactionSql } from '../src/db.js';
import { recordedIdle, testDatabase } from './helpers/db.js';
import { waitFor } from './helpers/wait.js';

const db = await testDatabase();
const sql = db.sql;

const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;

/** Runs of each promise id, by the worker that ran it and the attempt. */
const runs = new Map<string, { worker: string; attempt: number }[]>();

async function worker(t: TestContext, group: string, options: { leaseMs?: number; pollMs?: number } = {}): Promise<Durably> {
  const d = new Durably({ url: db.url, group, concurrency: 2, log: () => {}, ...options });
  d.register('work', async (ctx, ms: number) => {
    const list = runs.get(ctx.id) ?? [];
    list.push({ worker: d.workerId!, attempt: ctx.attempt });
    runs.set(ctx.id, list);
    await delay(ms);
    return ms;
  });
  t.after(() => d.stop());
  await d.start();
  return d;
}

/** Workers of `group`, each recorded idle, in the order started (the first is the longest idle). */
async function idleWorkers(t: TestContext, group: string, count: number, options: { leaseMs?: number; pollMs?: number } = {}) {
  const started: Durably[] = [];
  for (let i = 0; i < count; i++) started.push(await worker(t, group, options));
  for (const w of started) await idle(w);
  return started;
}

/** The task of invocation `id`, as `q` (the pool or a transaction) sees it. */
async function taskOf(q: typeof sql | TransactionSql, id: string) {
  const [task] = await q<{ state: string; worker_id: string | null; handed: boolean }[]>`
    select state, worker_id, handed from durably.tasks where promise_id = ${id}`;
  return { ...task };
}

/** Waits until the worker is recorded idle, with room: the next invocation is handed to it. */
const idle = (d: Durably) => recordedIdle(sql, d.workerId!);

const settled = async (id: string) =>
  (await sql<{ state: string }[]>`select state from durably.promises where id = ${id}`)[0]?.state !== 'pending';

/** The task of a running invocation: a handed one keeps handed = true until its worker's first heartbeat (leaseMs / 3); a claimed one has handed = false. */
async function runningTask(id: string) {
  await waitFor(() => runs.get(id)?.length === 1, { what: `${id} to start` });
  return taskOf(sql, id);
}

test('an idle worker is handed an invocation in the invoking transaction and starts it without a claim', async (t) => {
  const group = uid('handed');
  const w = await worker(t, group);
  await idle(w);
  const id = uid('one');
  await sql.begin(async (tx) => {
    await tx`select durably.invoke(${id}, 'work', '[1000]', ${group})`;
    assert.deepEqual(await taskOf(tx, id), { state: 'claimed', worker_id: w.workerId, handed: true });
  });
  assert.deepEqual(await runningTask(id), { state: 'claimed', worker_id: w.workerId, handed: true }, 'running as handed, never claimed');
  await waitFor(() => settled(id), { what: 'the handed invocation to settle' });
  assert.deepEqual(runs.get(id), [{ worker: w.workerId, attempt: 1 }]);
});

test('a handoff committed long after its lease would have run out runs once, on the worker it was handed to', async (t) => {
  const group = uid('long-tx');
  await idleWorkers(t, group, 2, { leaseMs: 300, pollMs: 50 });
  const id = uid('late');
  let to: string | null = '';
  await sql.begin(async (tx) => {
    await tx`select durably.invoke(${id}, 'work', '[300]', ${group})`;
    to = (await taskOf(tx, id)).worker_id;
    await delay(1500); // five leases; both workers claim every 50 ms meanwhile
  });
  await waitFor(() => settled(id), { what: 'the late handoff to settle' });
  await delay(600); // past another two leases: anyone who took it over would have started by now
  assert.deepEqual(runs.get(id), [{ worker: to, attempt: 1 }]);
});

test('a worker that loses its listening connection gets back the handoffs it missed, and runs them at once', async (t) => {
  const group = uid('missed');
  const w = await worker(t, group);
  await idle(w);
  const id = uid('missed');
  const listening = () => sql<{ pid: number }[]>`
    select pid from pg_stat_activity where datname = current_database() and application_name = ${`durably:${group}`}
       and (query ilike 'listen %' or query like '%durably_proof_%')`;
  const [{ pid }] = await listening();
  await sql.begin(async (tx) => {
    // Handed to w, whose idle row this transaction now holds: w, putting
    // back what it missed before it listens again, waits for the commit.
    await tx`select durably.invoke(${id}, 'work', '[1]', ${group})`;
    await tx`select pg_terminate_backend(${pid})`;
    await waitFor(async () => {
      const [row] = await sql<{ n: number }[]>`select count(*)::int as n from pg_locks l join pg_stat_activity a using (pid)
        where a.datname = current_database() and a.query ilike '%return_handoffs%' and not l.granted`;
      return row.n > 0;
    }, { what: 'the worker to put back what it missed, waiting for this transaction' });
  });
  // The notification went out while nobody listened on the worker's channel.
  const started = Date.now();
  await waitFor(() => settled(id), { timeoutMs: 10_000, what: 'the missed handoff to settle' });
  assert.ok(Date.now() - started < 5000, 'run at once, not after a lease or a poll');
  assert.deepEqual(runs.get(id), [{ worker: w.workerId, attempt: 1 }]);
  assert.notEqual((await listening())[0]?.pid, pid, 'listening again');
});

test('a stopping worker waits for a handoff still being committed to it, and releases it to another', async (t) => {
  const group = uid('stop');
  const [a, b] = await idleWorkers(t, group, 2);
  const id = uid('stopped');
  let stopping: Promise<void> | undefined;
  let to: string | null = '';
  await sql.begin(async (tx) => {
    await tx`select durably.invoke(${id}, 'work', '[1]', ${group})`;
    to = (await taskOf(tx, id)).worker_id;
    stopping = (to === a.workerId ? a : b).stop();
    await delay(300);
  });
  await stopping;
  await waitFor(() => settled(id), { what: 'the released handoff to settle' });
  const other = to === a.workerId ? b.workerId : a.workerId;
  assert.deepEqual(runs.get(id), [{ worker: other, attempt: 1 }]);
});

test('an invocation too large for a notification is put back at commit: it wakes the group and is claimed', async (t) => {
  const group = uid('large');
  const w = await worker(t, group);
  await idle(w);
  const id = uid('large');
  await sql`select durably.invoke(${id}, 'work', ${JSON.stringify([1000, 'x'.repeat(9000)])}::text::jsonb, ${group})`;
  assert.deepEqual(await runningTask(id), { state: 'claimed', worker_id: w.workerId, handed: false }, 'claimed, not handed');
  await waitFor(() => settled(id), { what: 'the large invocation to settle' });
  assert.deepEqual(runs.get(id), [{ worker: w.workerId, attempt: 1 }]);
});

test('invocations with a concurrency key, a priority or a delay are claimed, not handed', async (t) => {
  const group = uid('claimed');
  const w = await worker(t, group);
  for (const opts of [{ concurrency_key: 'k' }, { priority: 1 }, { delay_ms: 10 }]) {
    await idle(w);
    const id = uid('claimed');
    await sql.begin(async (tx) => {
      await tx`select durably.invoke(${id}, 'work', '[1]', ${group}, ${JSON.stringify(opts)}::text::jsonb)`;
      const { state, handed } = await taskOf(tx, id);
      assert.deepEqual({ state, handed }, { state: 'ready', handed: false }, JSON.stringify(opts));
    });
    await waitFor(() => settled(id), { what: `the invocation with ${JSON.stringify(opts)} to settle` });
  }
});

test('the commit sends what the transaction leaves: an invocation canceled in it is not run', async (t) => {
  const group = uid('cancel');
  const w = await worker(t, group);
  await idle(w);
  const id = uid('canceled');
  await sql.begin(async (tx) => {
    await tx`select durably.invoke(${id}, 'work', '[1]', ${group})`;
    await tx`select durably.cancel(${id}, 'changed my mind')`;
  });
  const later = uid('later');
  await sql`select durably.invoke(${later}, 'work', '[1]', ${group})`;
  await waitFor(() => settled(later), { what: 'the next invocation to settle' });
  assert.equal(runs.get(id), undefined, 'the canceled invocation never ran');
  const [{ state }] = await sql<{ state: string }[]>`select state from durably.promises where id = ${id}`;
  assert.equal(state, 'rejected_canceled');
});
