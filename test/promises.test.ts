/**
 * The SQL engine, called directly: invoke/settle/cancel/expire, claims,
 * leases, heartbeats, release, suspension races, input validation, and the
 * plans of the hot queries on a realistically sized table.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { testDatabase } from './helpers/db.js';
import { connect, textArray, type Sql } from '../src/db.js';
import { waitFor } from './helpers/wait.js';

const db = await testDatabase();
const sql = db.sql;

const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;

type Row = Record<string, any>;

/** An invocation, made as a worker makes a child invocation when opts place it under a parent. */
async function invoke(id: string, group: string, opts: Record<string, unknown> = {}, func = 'f'): Promise<Row> {
  const [row] = await sql<Row[]>`
    select * from durably.create_invocations(array[${id}], array[${func}], array['[1, "two"]'::jsonb], ${group},
      ${JSON.stringify(opts)}::text::jsonb)`;
  return row;
}

/** Claims as `worker`, registered for every function the group's tasks have. */
async function claim(worker: string, group: string, limit = 10, leaseMs = 60_000): Promise<Row[]> {
  await sql`select durably.register_worker(${worker}::uuid, ${group}, 'test', 0,
    array(select distinct func from durably.tasks where group_name = ${group}), ${leaseMs})`;
  return [...await sql<Row[]>`select * from durably.claim_tasks(${worker}::uuid, ${group}, ${limit}, ${leaseMs})`];
}

async function promise(id: string): Promise<Row | undefined> {
  const [row] = await sql<Row[]>`select * from durably.promises where id = ${id}`;
  return row;
}

async function task(id: string): Promise<Row | undefined> {
  const [row] = await sql<Row[]>`select *, available_at = 'infinity' as forever from durably.tasks where promise_id = ${id}`;
  return row;
}

async function counts(): Promise<{ promises: number; tasks: number; callbacks: number }> {
  const [row] = await sql<{ promises: number; tasks: number; callbacks: number }[]>`
    select (select count(*)::int from durably.promises) as promises,
           (select count(*)::int from durably.tasks) as tasks,
           (select count(*)::int from durably.callbacks) as callbacks`;
  return row;
}

async function registerWorker(worker: string, group: string) {
  await sql`select durably.register_worker(${worker}::uuid, ${group}, 'test-host', ${process.pid}, ${['f']}::text[], 60000)`;
}

test('invoke deduplicates by id: the second call creates nothing and starts nothing', async () => {
  const group = uid('g');
  const id = uid('dedup');
  const first = await invoke(id, group);
  assert.equal(first.created, true);
  assert.equal(first.state, 'pending');
  const second = await invoke(id, group, {}, 'another_function');
  assert.equal(second.created, false);
  assert.equal(second.state, 'pending');
  assert.deepEqual(second.timeout_at, first.timeout_at);

  const p = await promise(id);
  assert.equal(p?.func, 'f', 'the second invoke must not overwrite the first');
  assert.deepEqual(p?.args, [1, 'two']);
  const [{ n }] = await sql<{ n: number }[]>`select count(*)::int as n from durably.tasks where promise_id = ${id}`;
  assert.equal(n, 1);

  // invoke_many with a repeated and an existing id: one row per distinct id, created only for the new one
  const other = uid('dedup');
  const rows = await sql<Row[]>`
    select * from durably.invoke_many(${[id, other]}::text[], ${['f', 'f']}::text[], array['[]', '[]']::jsonb[], ${group})`;
  assert.deepEqual(rows.map((r) => [r.id, r.created]).sort(), [[id, false], [other, true]].sort());
  const [{ t }] = await sql<{ t: number }[]>`select count(*)::int as t from durably.tasks where group_name = ${group}`;
  assert.equal(t, 2);

  // a settled promise is not restarted by a later invoke of the same id
  await sql`select durably.resolve(${id}, '5'::jsonb)`;
  const again = await invoke(id, group);
  assert.equal(again.created, false);
  assert.equal(again.state, 'resolved');
  assert.equal(again.value, 5);
  assert.equal(await task(id), undefined);
});

test('settle_many: the first settlement wins, also among concurrent ones', async () => {
  const group = uid('g');
  const id = uid('settle');
  await invoke(id, group, { awaited: true }); // a caller waits for it: its settlement is notified
  const notified: string[] = [];
  const listener = await sql.listen('durably_settled', (payload) => notified.push(...payload.split('\n')));
  try {
    const won = await sql<Row[]>`select * from durably.settle_many(${[id]}::text[], ${['resolved']}::text[], array['1']::jsonb[])`;
    assert.deepEqual(won.map((r) => r.id), [id]);
    const lost = await sql<Row[]>`
      select * from durably.settle_many(${[id]}::text[], ${['rejected']}::text[], array['{"name":"Error"}']::jsonb[])`;
    assert.equal(lost.length, 0);
    const p = await promise(id);
    assert.equal(p?.state, 'resolved');
    assert.equal(p?.value, 1);
    assert.equal(await task(id), undefined, 'settling drops the task');
    await waitFor(() => notified.includes(id), { timeoutMs: 5000, what: 'the durably_settled notification' });

    // 10 concurrent settlers with different values: exactly one wins and its value is stored
    const raced = uid('race');
    await invoke(raced, group);
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) =>
      sql<Row[]>`select * from durably.settle_many(${[raced]}::text[], ${['resolved']}::text[], array[${String(i)}::text]::jsonb[])`
        .then((rows) => ({ i, won: rows.length }))));
    const winners = results.filter((r) => r.won === 1);
    assert.equal(winners.length, 1, `exactly one settler wins: ${JSON.stringify(results)}`);
    assert.equal(results.reduce((n, r) => n + r.won, 0), 1);
    assert.equal((await promise(raced))?.value, winners[0].i);
  } finally {
    await listener.unlisten();
  }
});

test('resolve and reject are idempotent; settling an unknown id is DU003', async () => {
  const group = uid('g');
  const a = uid('res');
  await invoke(a, group);
  const [r1] = await sql<Row[]>`select * from durably.resolve(${a}, '{"ok":true}'::jsonb)`;
  const [r2] = await sql<Row[]>`select * from durably.resolve(${a}, '{"ok":false}'::jsonb)`;
  const [r3] = await sql<Row[]>`select * from durably.reject(${a}, '{"name":"Error","message":"late"}'::jsonb)`;
  for (const r of [r1, r2, r3]) {
    assert.equal(r.state, 'resolved');
    assert.deepEqual(r.value, { ok: true });
    assert.deepEqual(r.settled_at, r1.settled_at);
  }
  assert.equal(await task(a), undefined);

  const b = uid('rej');
  await invoke(b, group);
  const [j1] = await sql<Row[]>`select * from durably.reject(${b}, '{"name":"Error","message":"first"}'::jsonb)`;
  const [j2] = await sql<Row[]>`select * from durably.reject(${b}, '{"name":"Error","message":"second"}'::jsonb)`;
  const [j3] = await sql<Row[]>`select * from durably.resolve(${b}, '1'::jsonb)`;
  for (const r of [j1, j2, j3]) {
    assert.equal(r.state, 'rejected');
    assert.equal(r.value.message, 'first');
    assert.deepEqual(r.settled_at, j1.settled_at);
  }

  const before = await counts();
  await assert.rejects(sql`select * from durably.resolve(${uid('missing')}, '1'::jsonb)`, (e: any) => e.code === 'DU003');
  await assert.rejects(sql`select * from durably.cancel(${uid('missing')})`, (e: any) => e.code === 'DU003');
  assert.deepEqual(await counts(), before);
});

test('cancel settles the promise and its pending descendants, and nothing else', async () => {
  const group = uid('g');
  const root = uid('root');
  const other = uid('other');
  await invoke(root, group);
  await invoke(`${root}.0`, group, { parent_id: root });
  await invoke(`${root}.0.0`, group, { parent_id: `${root}.0` });
  await sql`select * from durably.create_child_promise(${`${root}.1`}, 'step', ${root}, ${root}, now() + interval '1 hour',
    p_state => 'resolved', p_value => '7'::jsonb)`;
  await sql`select * from durably.create_child_promise(${`${root}.2`}, 'external', ${root}, ${root}, now() + interval '1 hour')`;
  await sql`select * from durably.create_child_promise(${`${root}.2.0`}, 'sleep', ${`${root}.2`}, ${root}, now() + interval '1 hour')`;
  await invoke(other, group);
  assert.equal((await promise(`${root}.0.0`))?.root_id, root, 'root_id is inherited down the tree');

  const [row] = await sql<Row[]>`select * from durably.cancel(${root}, 'stop it')`;
  assert.equal(row.id, root);
  assert.equal(row.state, 'rejected_canceled');

  for (const id of [root, `${root}.0`, `${root}.0.0`, `${root}.2`, `${root}.2.0`]) {
    const p = await promise(id);
    assert.equal(p?.state, 'rejected_canceled', id);
    assert.deepEqual(p?.value, { name: 'CanceledError', message: 'stop it' }, id);
    assert.equal(await task(id), undefined, `task of ${id}`);
  }
  const step = await promise(`${root}.1`);
  assert.equal(step?.state, 'resolved', 'a settled descendant keeps its outcome');
  assert.equal(step?.value, 7);
  assert.equal((await promise(other))?.state, 'pending');
  assert.ok(await task(other));

  // canceling again changes nothing
  const [again] = await sql<Row[]>`select * from durably.cancel(${root}, 'again')`;
  assert.deepEqual(again.value, { name: 'CanceledError', message: 'stop it' });
});

test('expire_promises: past-due promises time out, due timers resolve and wake their waiters', async () => {
  const group = uid('g');
  const worker = randomUUID();
  const inv = uid('exp-invoke');
  const timer = uid('exp-sleep');
  const ext = uid('exp-external');
  const future = uid('exp-future');
  const waiter = uid('exp-waiter');
  await invoke(inv, group, { timeout_at: '2000-01-01T00:00:00Z' });
  await sql`select * from durably.create_child_promise(${timer}, 'sleep', null, null, '2000-01-01T00:00:00Z')`;
  await sql`select * from durably.create_promise(${ext}, 'external', null, p_timeout_ms => 0)`;
  await sql`select * from durably.create_child_promise(${future}, 'sleep', null, null, now() + interval '1 hour')`;
  // a task suspended on the timer, as ctx.sleep leaves it
  await invoke(waiter, group);
  assert.equal((await claim(worker, group)).length, 2);
  const [{ suspend_task: s }] = await sql<Row[]>`select durably.suspend_task(${worker}::uuid, ${waiter}, ${[timer]}::text[], null)`;
  assert.equal(s, 'suspended');

  const [{ expire_promises: n }] = await sql<Row[]>`select durably.expire_promises()`;
  assert.equal(n, 3);

  const pi = await promise(inv);
  assert.equal(pi?.state, 'rejected_timedout');
  assert.equal(pi?.value.name, 'TimeoutError');
  assert.equal(await task(inv), undefined);
  const pt = await promise(timer);
  assert.equal(pt?.state, 'resolved');
  assert.equal(pt?.value, null);
  assert.equal((await promise(ext))?.state, 'rejected_timedout');
  assert.equal((await promise(future))?.state, 'pending');

  const t = await task(waiter);
  assert.equal(t?.state, 'ready', 'the timer woke the suspended task');
  assert.equal(t?.forever, false);
  const [{ c }] = await sql<Row[]>`select count(*)::int as c from durably.callbacks where task_id = ${waiter}`;
  assert.equal(c, 0);
  assert.deepEqual((await claim(randomUUID(), group)).map((r) => r.id), [waiter]);

  const [{ expire_promises: none }] = await sql<Row[]>`select durably.expire_promises()`;
  assert.equal(none, 0);
});

test('claim leases a task; after the lease expires another worker re-claims it with attempt + 1', async () => {
  const group = uid('g');
  const w1 = randomUUID();
  const w2 = randomUUID();
  const id = uid('claim');
  await invoke(id, group);

  const [c1, ...more] = await claim(w1, group, 10, 1000);
  assert.equal(more.length, 0);
  assert.equal(c1.id, id);
  assert.equal(c1.func, 'f');
  assert.deepEqual(c1.args, [1, 'two']);
  assert.equal(c1.state, 'pending');
  assert.equal(c1.root_id, id);
  assert.equal(c1.attempt, 1);
  assert.equal(c1.history, null, 'a first run has no history to load');
  const t1 = await task(id);
  assert.equal(t1?.state, 'claimed');
  assert.equal(t1?.worker_id, w1);
  assert.equal(t1?.available_at.getTime() - t1?.claimed_at.getTime(), 1000);

  assert.deepEqual(await claim(w2, group), [], 'a leased task is not claimable');

  const [c2] = await waitFor(async () => {
    const rows = await claim(w2, group, 10, 60_000);
    return rows.length ? rows : undefined;
  }, { timeoutMs: 10_000, what: 'the lease to expire' });
  assert.equal(c2.id, id);
  assert.equal(c2.attempt, 2, 'an expired lease counts as an attempt');
  assert.deepEqual(c2.history, [], 're-claims load the history');
  const t2 = await task(id);
  assert.equal(t2?.worker_id, w2);
  assert.ok(t2!.claimed_at.getTime() - t1!.claimed_at.getTime() >= 1000, 'not re-claimed before the lease expired');

  // the first worker has lost it
  const lost = await sql<Row[]>`select * from durably.heartbeat(${w1}::uuid, 60000, ${[id]}::text[])`;
  assert.deepEqual(lost.map((r) => [r.id, r.state]), [[id, 'pending']]);
  assert.equal((await task(id))?.worker_id, w2, 'the old holder\'s heartbeat does not take it back');
});

test('heartbeat renews the leases the worker knows it holds (not those of a lost claim reply) and reports what it no longer holds', async () => {
  const group = uid('g');
  const w1 = randomUUID();
  const w2 = randomUUID();
  await registerWorker(w1, group);
  const [a, b, c] = [uid('hb-a'), uid('hb-b'), uid('hb-c')];
  await invoke(a, group);
  await invoke(b, group);
  assert.equal((await claim(w1, group, 10, 1000)).length, 2);
  const [{ heartbeat_at: hb0 }] = await sql<Row[]>`select heartbeat_at from durably.workers where id = ${w1}::uuid`;

  const none = await sql<Row[]>`select * from durably.heartbeat(${w1}::uuid, 60000, ${[a, b]}::text[])`;
  assert.equal(none.length, 0);
  const [{ renewed }] = await sql<Row[]>`
    select bool_and(lease_until > now() + interval '50 seconds') as renewed from durably.tasks where promise_id in (${a}, ${b})`;
  assert.equal(renewed, true);
  const [{ heartbeat_at: hb1 }] = await sql<Row[]>`select heartbeat_at from durably.workers where id = ${w1}::uuid`;
  assert.ok(hb1 > hb0);

  await sql`select durably.resolve(${a}, '1'::jsonb)`;
  await sql`select durably.cancel(${b})`;
  const gone = uid('hb-gone');
  const reported = await sql<Row[]>`select * from durably.heartbeat(${w1}::uuid, 60000, ${[a, b, gone]}::text[])`;
  assert.deepEqual(
    reported.map((r) => [r.id, r.state]).sort(),
    [[a, 'resolved'], [b, 'rejected_canceled'], [gone, null]].sort());

  // lost lease: w2 claims c after w1's lease on it ran out
  await invoke(c, group);
  assert.equal((await claim(w1, group, 10, 1)).length, 1);
  await waitFor(async () => (await claim(w2, group)).length === 1, { timeoutMs: 5000, what: 'w2 to claim the expired task' });
  const lost = await sql<Row[]>`select * from durably.heartbeat(${w1}::uuid, 60000, ${[c]}::text[])`;
  assert.deepEqual(lost.map((r) => [r.id, r.state]), [[c, 'pending']]);
  assert.equal((await task(c))?.worker_id, w2);

  // A claim whose reply was lost: w1 holds d without knowing it. Its
  // heartbeats do not renew d, so the lease runs out and w2 runs it.
  const d = uid('hb-d');
  await invoke(d, group);
  assert.equal((await claim(w1, group, 10, 300)).length, 1);
  await sql`select * from durably.heartbeat(${w1}::uuid, 60000, '{}'::text[])`;
  await waitFor(async () => (await claim(w2, group)).length === 1, { timeoutMs: 5000, what: 'w2 to claim the orphaned task' });
});

test('settle_and_claim writes outcomes and claims the next tasks in one transaction; bad input does neither', async () => {
  const group = uid('g');
  const w = randomUUID();
  await registerWorker(w, group);
  const [a, b, c] = [uid('sc-a'), uid('sc-b'), uid('sc-c')];
  for (const id of [a, b, c]) await invoke(id, group);
  const [first] = await claim(w, group, 1);
  assert.equal(first.id, a);

  await assert.rejects(sql`select * from durably.settle_and_claim(${w}::uuid, ${group}, 5, 60000,
      ${[a]}::text[], ${['bogus']}::text[], ${['1']}::text[]::jsonb[], ${[first.seq]}::bigint[])`, { code: 'DU002' });
  assert.equal((await promise(a))?.state, 'pending');
  assert.deepEqual([(await task(b))?.state, (await task(c))?.state], ['ready', 'ready'], 'nothing claimed');

  const next = await sql<Row[]>`select * from durably.settle_and_claim(${w}::uuid, ${group}, 5, 60000,
      ${[a]}::text[], ${['resolved']}::text[], ${['1']}::text[]::jsonb[], ${[first.seq]}::bigint[])`;
  assert.deepEqual(next.map((r) => r.id), [b, c]);
  assert.equal((await promise(a))?.state, 'resolved');
  assert.equal(await task(a), undefined);
  assert.deepEqual([(await task(b))?.worker_id, (await task(c))?.worker_id], [w, w]);
});

test('release_tasks makes the worker\'s tasks claimable at once and notifies the group', async () => {
  const group = uid('g');
  const w1 = randomUUID();
  const w2 = randomUUID();
  await registerWorker(w1, group);
  const ids = [uid('rel'), uid('rel')];
  for (const id of ids) await invoke(id, group);
  assert.equal((await claim(w1, group, 10, 60_000)).length, 2);
  assert.deepEqual(await claim(w2, group), []);

  const heard: string[] = [];
  const listener = await sql.listen('durably_tasks', (payload) => heard.push(payload));
  try {
    const [{ release_tasks: n }] = await sql<Row[]>`select durably.release_tasks(${w1}::uuid)`;
    assert.equal(n, 2);
    await waitFor(() => heard.includes(group), { timeoutMs: 5000, what: 'the durably_tasks notification' });
  } finally {
    await listener.unlisten();
  }
  const rows = await claim(w2, group);
  assert.deepEqual(rows.map((r) => r.id).sort(), [...ids].sort());
  for (const r of rows) {
    assert.equal(r.attempt, 1, 'a release is not a failed attempt');
    assert.deepEqual(r.history, [], 'a released run replays its history');
  }
  const [w] = await sql<Row[]>`select stopped_at, status from durably.worker_status where id = ${w1}::uuid`;
  assert.ok(w.stopped_at);
  assert.equal(w.status, 'stopped');
  const [{ release_tasks: zero }] = await sql<Row[]>`select durably.release_tasks(${w1}::uuid)`;
  assert.equal(zero, 0);
});

test('suspend_task: suspends until an awaited promise settles; ready when it already has; lost without the lease', async () => {
  const group = uid('g');
  const w1 = randomUUID();
  const w2 = randomUUID();
  const parent = uid('sus');
  const child = `${parent}.0`;
  await invoke(parent, group);
  await sql`select * from durably.create_child_promise(${child}, 'external', ${parent}, ${parent}, now() + interval '1 hour')`;
  assert.equal((await claim(w1, group)).length, 1);

  const suspend = async (worker: string, awaits: string[], wakeAt: string | null = null) => {
    const [{ suspend_task: s }] = await sql<Row[]>`
      select durably.suspend_task(${worker}::uuid, ${parent}, ${awaits}::text[], ${wakeAt}::timestamptz)`;
    return s as string;
  };

  assert.equal(await suspend(w2, [child]), 'lost', 'a worker without the lease cannot suspend');
  assert.equal((await task(parent))?.worker_id, w1);

  assert.equal(await suspend(w1, [child]), 'suspended');
  const t = await task(parent);
  assert.equal(t?.state, 'suspended');
  assert.equal(t?.worker_id, null);
  assert.equal(t?.forever, true, 'waits without a timer');
  assert.deepEqual(await claim(w2, group), []);
  const cbs = await sql<Row[]>`select promise_id from durably.callbacks where task_id = ${parent}`;
  assert.deepEqual(cbs.map((r) => r.promise_id), [child]);

  await sql`select durably.resolve(${child}, '42'::jsonb)`;
  assert.equal((await task(parent))?.state, 'ready');
  assert.equal((await sql`select 1 from durably.callbacks where task_id = ${parent}`).length, 0);
  const [re] = await claim(w2, group);
  assert.equal(re.id, parent);
  assert.equal(re.attempt, 1);
  assert.deepEqual(re.history.map((h: Row) => [h.id, h.state, h.value]), [[child, 'resolved', 42]]);

  // already settled: 'ready', the caller keeps its lease, nothing is recorded
  const done = `${parent}.1`;
  await sql`select * from durably.create_child_promise(${done}, 'step', ${parent}, ${parent}, now() + interval '1 hour', p_state => 'resolved', p_value => '1'::jsonb)`;
  const pending = `${parent}.2`;
  await sql`select * from durably.create_child_promise(${pending}, 'external', ${parent}, ${parent}, now() + interval '1 hour')`;
  assert.equal(await suspend(w2, [pending, done]), 'ready');
  const kept = await task(parent);
  assert.equal(kept?.state, 'claimed');
  assert.equal(kept?.worker_id, w2);
  assert.equal((await sql`select 1 from durably.callbacks where task_id = ${parent}`).length, 0);

  // a timer: claimable again once the wake-up time has passed
  const [{ wake }] = await sql<Row[]>`select (now() + interval '300 milliseconds')::text as wake`;
  assert.equal(await suspend(w2, [pending], wake), 'suspended');
  assert.deepEqual(await claim(w1, group), []);
  const [woken] = await waitFor(async () => {
    const rows = await claim(w1, group);
    return rows.length ? rows : undefined;
  }, { timeoutMs: 5000, what: 'the timer to wake the task' });
  assert.equal(woken.id, parent);
});

test('suspend_task and a concurrent settle: whichever commits first, the task is not stranded', async () => {
  const group = uid('g');
  const w = randomUUID();

  // 1. the settle holds its lock first: suspend waits for it, then answers 'ready'
  {
    const parent = uid('race-a');
    const child = `${parent}.0`;
    await invoke(parent, group);
    await sql`select * from durably.create_child_promise(${child}, 'external', ${parent}, ${parent}, now() + interval '1 hour')`;
    assert.equal((await claim(w, group)).length, 1);
    let commit!: () => void;
    const gate = new Promise<void>((ok) => { commit = ok; });
    let settledInTx = false;
    const tx = sql.begin(async (tx) => {
      await tx`select durably.resolve(${child}, '1'::jsonb)`;
      settledInTx = true;
      await gate;
    });
    await waitFor(() => settledInTx, { what: 'the settle to run in its transaction' });
    const suspended = sql<Row[]>`select durably.suspend_task(${w}::uuid, ${parent}, ${[child]}::text[], null)`.execute();
    await waitFor(async () => (await sql`
      select 1 from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'
         and query like '%suspend_task%'`).length > 0, { what: 'suspend_task to wait for the settle\'s lock' });
    commit();
    await tx;
    const [{ suspend_task: s }] = await suspended;
    assert.equal(s, 'ready');
    const t = await task(parent);
    assert.equal(t?.state, 'claimed');
    assert.equal(t?.worker_id, w);
  }

  // 2. the suspend commits first: the settle waits for it, then finds the callback and wakes the task
  {
    const parent = uid('race-b');
    const child = `${parent}.0`;
    await invoke(parent, group);
    await sql`select * from durably.create_child_promise(${child}, 'external', ${parent}, ${parent}, now() + interval '1 hour')`;
    assert.equal((await claim(w, group)).length, 1);
    let commit!: () => void;
    const gate = new Promise<void>((ok) => { commit = ok; });
    let outcome: string | undefined;
    const tx = sql.begin(async (tx) => {
      const [{ suspend_task: s }] = await tx<Row[]>`select durably.suspend_task(${w}::uuid, ${parent}, ${[child]}::text[], null)`;
      outcome = s;
      await gate;
    });
    await waitFor(() => outcome, { what: 'the suspend to run in its transaction' });
    assert.equal(outcome, 'suspended');
    const settled = sql`select durably.resolve(${child}, '1'::jsonb)`.execute();
    await waitFor(async () => (await sql`
      select 1 from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'
         and query like '%durably.resolve%'`).length > 0, { what: 'the settle to wait for the suspend\'s lock' });
    commit();
    await tx;
    await settled;
    const t = await task(parent);
    assert.equal(t?.state, 'ready', 'the settle woke the task the suspend had just parked');
    assert.equal(t?.forever, false);
    assert.equal((await sql`select 1 from durably.callbacks where task_id = ${parent}`).length, 0);
  }
});

test('bad input raises DU001/DU002 and writes nothing', async () => {
  const group = uid('g');
  const good = uid('ok');
  const before = await counts();
  const cases: [string, () => Promise<unknown>, string][] = [
    ['empty id', () => sql`select * from durably.invoke('', 'f', '[]'::jsonb, ${group})`, 'DU001'],
    ['null id', () => sql`select * from durably.invoke(null, 'f', '[]'::jsonb, ${group})`, 'DU001'],
    ['600-character id', () => sql`select * from durably.invoke(${'x'.repeat(600)}, 'f', '[]'::jsonb, ${group})`, 'DU001'],
    ['id with a newline', () => sql`select * from durably.invoke(${'a\nb'}, 'f', '[]'::jsonb, ${group})`, 'DU001'],
    ['id with a tab', () => sql`select * from durably.invoke(${'a\tb'}, 'f', '[]'::jsonb, ${group})`, 'DU001'],
    ['args an object', () => sql`select * from durably.invoke(${good}, 'f', '{"a":1}'::jsonb, ${group})`, 'DU002'],
    ['args a number', () => sql`select * from durably.invoke(${good}, 'f', '1'::jsonb, ${group})`, 'DU002'],
    ['args null', () => sql`select * from durably.invoke(${good}, 'f', null, ${group})`, 'DU002'],
    ['empty group', () => sql`select * from durably.invoke(${good}, 'f', '[]'::jsonb, '')`, 'DU002'],
    ['null group', () => sql`select * from durably.invoke(${good}, 'f', '[]'::jsonb, null)`, 'DU002'],
    ['empty function', () => sql`select * from durably.invoke(${good}, '', '[]'::jsonb, ${group})`, 'DU002'],
    ['tags an array', () => sql`select * from durably.invoke(${good}, 'f', '[]'::jsonb, ${group}, '{"tags":[1]}'::jsonb)`, 'DU002'],
    ['one bad id among good ones', () => sql`
      select * from durably.invoke_many(${[good, 'bad\nid']}::text[], ${['f', 'f']}::text[], array['[]', '[]']::jsonb[], ${group})`, 'DU001'],
    ['one bad args among good ones', () => sql`
      select * from durably.invoke_many(${[good, uid('ok')]}::text[], ${['f', 'f']}::text[], array['[]', '{}']::jsonb[], ${group})`, 'DU002'],
    ['lengths differ', () => sql`
      select * from durably.invoke_many(${[good, uid('ok')]}::text[], ${['f']}::text[], array['[]', '[]']::jsonb[], ${group})`, 'DU002'],
    ['create_promise: bad kind', () => sql`select * from durably.create_promise(${good}, 'invoke', now())`, 'DU002'],
    ['create_promise: no deadline', () => sql`select * from durably.create_promise(${good}, 'external', null)`, 'DU002'],
    ['create_promise: empty id', () => sql`select * from durably.create_promise('', 'external', now())`, 'DU001'],
    ['settle_many: bad state', () => sql`
      select * from durably.settle_many(${[good]}::text[], ${['pending']}::text[], array['1']::jsonb[])`, 'DU002'],
  ];
  for (const [what, run, code] of cases) {
    await assert.rejects(run, (e: any) => {
      assert.equal(e.code, code, `${what}: ${e.message}`);
      return true;
    }, what);
    assert.deepEqual(await counts(), before, `${what} wrote nothing`);
  }
  // the same id and input, valid, is accepted
  assert.equal((await invoke(good, group)).created, true);
});

/** Every node of an EXPLAIN (FORMAT JSON) plan. */
function planNodes(plan: Row): Row[] {
  return [plan, ...((plan.Plans as Row[] | undefined) ?? []).flatMap(planNodes)];
}

async function explain(query: string, params: any[]): Promise<Row[]> {
  const [row] = await sql.unsafe(`explain (format json) ${query}`, params);
  const doc = row['QUERY PLAN'];
  return planNodes((typeof doc === 'string' ? JSON.parse(doc) : doc)[0].Plan);
}

function describe(nodes: Row[]): string {
  return nodes.map((n) => `${n['Node Type']}${n['Relation Name'] ? ` on ${n['Relation Name']}` : ''}${n['Index Name'] ? ` using ${n['Index Name']}` : ''}`).join(' / ');
}

test('EXPLAIN: claims use tasks_claim, settlements and creations the keys, with 100k promises and 10k tasks', async () => {
  await sql`
    insert into durably.promises (id, state, kind, func, args, value, timeout_at, root_id, settled_at)
    select 'bulk-' || i, 'resolved', 'invoke', 'f', '[]', to_jsonb(i), now() + interval '1 day', 'bulk-' || i, now()
      from generate_series(1, 100000) i`;
  await sql`
    insert into durably.promises (id, func, args, timeout_at, root_id)
    select 'bulkp-' || i, 'f', '[]', now() + interval '1 day', 'bulkp-' || i from generate_series(1, 10000) i`;
  await sql`
    insert into durably.tasks (promise_seq, promise_id, group_name, func, available_at)
    select p.seq, p.id, 'bulk-' || (p.seq % 4), p.func, now() + (p.seq % 3 - 1) * interval '1 hour'
      from durably.promises p where p.id like 'bulkp-%'`;
  await sql`analyze durably.promises`;
  await sql`analyze durably.tasks`;

  const claimPlan = await explain(`
    select promise_id from durably.tasks where group_name = $1 and available_at <= now()
     order by available_at limit 50 for update skip locked`, ['bulk-1']);
  assert.ok(claimPlan.some((n) => n['Index Name'] === 'tasks_claim'), `claim uses tasks_claim: ${describe(claimPlan)}`);
  assert.ok(!claimPlan.some((n) => n['Node Type'] === 'Seq Scan' && n['Relation Name'] === 'tasks'),
    `no Seq Scan on tasks: ${describe(claimPlan)}`);
  assert.ok(!claimPlan.some((n) => n['Node Type'] === 'Sort'), `the index gives the order: ${describe(claimPlan)}`);

  const ids = ['bulkp-10', 'bulkp-20', 'bulkp-30'];
  const settlePlans = [
    await explain(`
      update durably.promises p set state = 'resolved', value = null, settled_at = now()
       where p.id = any($1::text[]) and p.state = 'pending'`, [ids]),
    // the form settle_many uses
    await explain(`
      update durably.promises p set state = i.state, value = i.value, settled_at = now()
        from unnest($1::text[], $2::text[], $3::text[]::jsonb[]) as i(id, state, value)
       where p.id = i.id and p.state = 'pending'`, [ids, ids.map(() => 'resolved'), ids.map(() => '1')]),
  ];
  for (const plan of settlePlans) {
    assert.ok(plan.some((n) => n['Index Name'] === 'promises_pkey'), `settle uses promises_pkey: ${describe(plan)}`);
    assert.ok(!plan.some((n) => n['Node Type'] === 'Seq Scan' && n['Relation Name'] === 'promises'),
      `no Seq Scan on promises: ${describe(plan)}`);
  }
  const dropPlan = await explain(`delete from durably.tasks t where t.promise_seq = any($1::bigint[])`, [[1, 2, 3]]);
  assert.ok(dropPlan.some((n) => n['Index Name'] === 'tasks_pkey'), `task drop uses tasks_pkey: ${describe(dropPlan)}`);
  assert.ok(!dropPlan.some((n) => n['Node Type'] === 'Seq Scan'), `no Seq Scan: ${describe(dropPlan)}`);
  // The whole procedures, as workers and clients call them, with the generic
  // plans PL/pgSQL switches to after five calls: the scans they make in their
  // transaction are counted there (pg_stat_xact_user_tables), from the counts
  // read as it starts: those also hold the connection's earlier statements
  // whose statistics were not reported yet (at most once a second).
  await sql`select durably.register_worker('00000000-0000-0000-0000-0000000000aa', 'bulk-1', 'test', 0, '{f}', 30000)`;
  const scans = await sql.begin(async (tx) => {
    await tx`set local plan_cache_mode = force_generic_plan`;
    const before = new Map((await tx<{ relname: string; seq_scan: number }[]>`
      select relname, seq_scan::int from pg_stat_xact_user_tables
       where schemaname = 'durably' and relname in ('tasks', 'promises', 'deadlines')`).map((r) => [r.relname, r.seq_scan]));
    for (let i = 0; i < 7; i++) {
      const claimed = await tx`select id, seq from durably.claim_tasks('00000000-0000-0000-0000-0000000000aa', 'bulk-1', 7, 30000)`;
      assert.equal(claimed.length, 7);
      const [retried, ...done] = claimed;
      assert.equal((await tx`select durably.retry_task('00000000-0000-0000-0000-0000000000aa', ${retried.id}, 0, '{}') as ok`)[0].ok, true);
      // by sequence number as workers settle, and by id as clients do
      const settled = await tx`select durably.settle_many(${textArray(done.map((c) => c.id))}::text[],
        ${textArray(done.map(() => 'resolved'))}::text[], ${textArray(done.map(() => 'null'))}::text[]::jsonb[],
        ${i % 2 ? null : textArray(done.map((c) => String(c.seq)))}::text[]::bigint[])`;
      assert.equal(settled.length, 6);
      const ids = Array.from({ length: 100 }, (_, j) => `scan-${i}-${j}`).concat(['bulkp-1']);
      const created = await tx`select created from durably.invoke_many(${textArray(ids)}::text[],
        ${textArray(ids.map(() => 'f'))}::text[], ${textArray(ids.map(() => '[]'))}::text[]::jsonb[], 'bulk-9')`;
      assert.deepEqual([created.length, created.filter((c) => c.created).length], [101, 100]);
      await tx`select durably.expire_promises()`;
    }
    return (await tx<{ relname: string; seq_scan: number }[]>`
      select relname, seq_scan::int from pg_stat_xact_user_tables
       where schemaname = 'durably' and relname in ('tasks', 'promises', 'deadlines')`)
      .map((r) => ({ relname: r.relname, seq_scan: r.seq_scan - (before.get(r.relname) ?? 0) }));
  });
  for (const { relname, seq_scan } of scans) {
    assert.equal(seq_scan, 0, `claim_tasks, retry_task, settle_many, invoke_many or expire_promises made a sequential scan of ${relname}`);
  }
});

test('plans cached while the tables were nearly empty still find rows by key once the tables have grown', async () => {
  // A new database, never analyzed, and one connection: the plans PL/pgSQL
  // caches on it while the tables are tiny are the ones used after they grow
  // (nothing invalidates them without an ANALYZE). Under a steady stream of
  // invocations into a new database such plans read whole tables.
  const fresh = await testDatabase();
  const one = connect(fresh.url, { max: 1, name: 'cached-plans' });
  try {
    const worker = '00000000-0000-0000-0000-0000000000bb';
    await one`set plan_cache_mode = force_generic_plan`;
    await one`select durably.register_worker(${worker}, 'grow', 'test', 0, '{f}', 30000)`;
    const round = async (tx: Sql, prefix: string, n: number) => {
      const ids = Array.from({ length: n }, (_, j) => `${prefix}-${j}`);
      await tx`select count(*) from durably.invoke_many(${textArray(ids)}::text[], ${textArray(ids.map(() => 'f'))}::text[],
        ${textArray(ids.map(() => '[]'))}::text[]::jsonb[], 'grow')`;
      const claimed = await tx<{ id: string; seq: string }[]>`select id, seq from durably.claim_tasks(${worker}, 'grow', ${n}, 30000)`;
      await tx`select count(*) from durably.settle_many(${textArray(claimed.map((c) => c.id))}::text[],
        ${textArray(claimed.map(() => 'resolved'))}::text[], ${textArray(claimed.map(() => 'null'))}::text[]::jsonb[],
        ${textArray(claimed.map((c) => String(c.seq)))}::text[]::bigint[])`;
      return claimed.length;
    };
    for (let i = 0; i < 7; i++) assert.equal(await round(one, `small-${i}`, 3), 3);
    // grown: 20,000 settled and 20,000 pending
    for (let i = 0; i < 4; i++) {
      const ids = Array.from({ length: 10_000 }, (_, j) => `big-${i}-${j}`);
      await one`select count(*) from durably.invoke_many(${textArray(ids)}::text[], ${textArray(ids.map(() => 'f'))}::text[],
        ${textArray(ids.map(() => '[]'))}::text[]::jsonb[], ${i < 2 ? 'done' : 'other'})`;
    }
    await one`update durably.promises set state = 'resolved', settled_at = now() where id like 'big-0-%' or id like 'big-1-%'`;
    await one`delete from durably.tasks where group_name = 'done'`;
    // Counted from the start of the transaction: PostgreSQL 15 may also show
    // there the scans of the setup's statements, not yet flushed to the
    // cumulative statistics.
    const seqScans = async (tx: Sql) => Object.fromEntries((await tx<{ relname: string; seq_scan: number }[]>`
      select relname, seq_scan::int from pg_stat_xact_user_tables
       where schemaname = 'durably' and relname in ('tasks', 'promises', 'deadlines')`).map((r) => [r.relname, r.seq_scan]));
    const [before, after] = await one.begin(async (tx) => {
      const before = await seqScans(tx as unknown as Sql);
      assert.equal(await round(tx as unknown as Sql, 'after', 100), 100);
      return [before, await seqScans(tx as unknown as Sql)];
    });
    assert.deepEqual(Object.keys(after).sort(), ['deadlines', 'promises', 'tasks']);
    for (const [relname, n] of Object.entries(after)) {
      assert.equal(n - (before[relname] ?? 0), 0,
        `invoke_many, claim_tasks or settle_many read all of ${relname} with a plan cached while it was nearly empty`);
    }
  } finally {
    await one.end({ timeout: 1 });
  }
});
