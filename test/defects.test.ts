/**
 * Defects of the engine under real operations, each reproduced by the test
 * named after it: rolling deploys, poison tasks, unstorable results, work
 * orphaned inside an unfinished step, graceful stop, stale heartbeat replies,
 * lock order, and what the application role may do through the public SQL
 * functions (forged checkpoints, unbounded input, function owner and rights).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { Durably, type Context, type DurablyConfig } from '../src/index.js';
import type { TransactionSql } from '../src/db.js';
import { LeaseKeeper } from '../src/leases.js';
import { SettlementBatch } from '../src/settlement-batch.js';
import { DEFAULT_RETRY, retryDelay, type RetryPolicy } from '../src/retry.js';
import { testDatabase } from './helpers/db.js';
import { spawnChild, within } from './helpers/processes.js';
import { waitFor } from './helpers/wait.js';

const db = await testDatabase();
const sql = db.sql;
const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;
const quiet = () => {};

function durably(t: { after(fn: () => Promise<void>): void }, config: DurablyConfig = {}): Durably {
  const d = new Durably({ url: db.url, leaseMs: 5000, pollMs: 100, log: quiet, ...config });
  t.after(() => d.stop());
  return d;
}

/** Runs `fn` in a transaction as role durably_app. */
function asApp<T>(fn: (tx: TransactionSql) => Promise<T>): Promise<T> {
  return sql.begin(async (tx) => {
    await tx`set local role durably_app`;
    return fn(tx as unknown as TransactionSql);
  }) as Promise<T>;
}

const sqlState = (code: string) => (err: { code?: string }) => err.code === code;

test('defect: a rolling deploy rejected work for good — a worker without the function leaves its task for one that has it', async (t) => {
  const group = uid('deploy');
  const old = durably(t, { group });
  old.register('old_fn', async () => 'old');
  await old.start();
  const client = durably(t, { group });
  const handle = await client.beginRpc(uid('new'), 'new_fn', 1);
  await delay(600); // several polls and claims of the old worker
  const [row] = await sql`select state, task_state, attempt from durably.promise_list where id = ${handle.id}`;
  assert.deepEqual({ ...row }, { state: 'pending', task_state: 'ready', attempt: 1 }, 'neither run nor rejected nor counted');
  const [waiting] = await sql`select waiting_for_worker from durably.task_list where promise_id = ${handle.id}`;
  assert.equal(waiting.waiting_for_worker, true, 'task_list shows it waits for a worker that registers new_fn');

  const deployed = durably(t, { group });
  deployed.register('new_fn', async (_ctx: Context, x: number) => x + 1);
  await deployed.start();
  assert.equal(await within(handle.result(), 5000, 'new_fn to run on the new worker'), 2);
});

test('defect: poison tasks were retried forever — a function that kills its worker is rejected after its attempts', async (t) => {
  await sql`create table poison_runs (attempt integer not null, at timestamptz not null default clock_timestamp())`;
  const client = durably(t, { group: 'poison' });
  const handle = await client.beginRpc(uid('poison'), 'poison');
  // Each worker process dies running it; a new one is started as a supervisor would.
  for (let started = 0; started < 6 && (await client.promises.get(handle.id)).state === 'pending'; started++) {
    const worker = await spawnChild(t, `poison-worker-${started}`, 'test/fixtures/poison-worker.ts', {
      env: { DATABASE_URL: db.url, LEASE_MS: '600', HEARTBEAT_MS: '200', POLL_MS: '100' },
    });
    await Promise.race([worker.exited, delay(4000)]);
    await worker.kill();
  }
  const record = await client.promises.get(handle.id);
  assert.equal(record.state, 'rejected');
  assert.match((record.value as { message: string }).message, /lease .*expired 3 times/);
  const runs = await sql<{ attempt: number; at: Date }[]>`select attempt, at from poison_runs order by at`;
  assert.deepEqual(runs.map((r) => r.attempt), [1, 2, 3], 'run once per attempt, never a fourth time');
});

test('defect: lease expiry applies the retry policy in SQL — attempt cap and backoff', async () => {
  const worker = '00000000-0000-0000-0000-0000000000e1';
  await sql`select durably.register_worker(${worker}, 'expiry', 'h', 1, '{slow}', 100,
    '{"slow": {"kind": "constant", "delayMs": 400, "maxAttempts": 2}}')`;
  const id = uid('slow');
  await sql`select * from durably.invoke(${id}, 'slow', '[]', 'expiry')`;
  assert.equal((await sql`select * from durably.claim_tasks(${worker}, 'expiry', 1, 100)`).length, 1);
  await delay(150); // the lease expired: attempt 1 is over, the backoff starts
  assert.equal((await sql`select * from durably.claim_tasks(${worker}, 'expiry', 1, 100)`).length, 0, 'backing off');
  const [backoff] = await sql`select state, attempt, last_error from durably.tasks where promise_id = ${id}`;
  assert.deepEqual([backoff.state, backoff.attempt], ['ready', 2]);
  assert.match(backoff.last_error.message, /lease .* expired/);
  await delay(450);
  const [second] = await sql`select attempt from durably.claim_tasks(${worker}, 'expiry', 1, 100)`;
  assert.equal(second.attempt, 2);
  await delay(150);
  assert.equal((await sql`select * from durably.claim_tasks(${worker}, 'expiry', 1, 100)`).length, 0);
  const [p] = await sql`select state, value from durably.promises where id = ${id}`;
  assert.equal(p.state, 'rejected');
  assert.equal(p.value.name, 'LeaseExpiredError');
  assert.match(p.value.message, /expired 2 times/);
  assert.equal(p.value.attempt, 2);
});

test('retry delays: the SQL policy (lease expiry) and the TypeScript one (returned errors) agree', async () => {
  const policies: RetryPolicy[] = [
    { ...DEFAULT_RETRY, jitter: false } as RetryPolicy,
    { kind: 'exponential', initialMs: 50, factor: 3, maxMs: 1000, maxAttempts: 8, jitter: false },
    { kind: 'linear', delayMs: 70, maxAttempts: 4 },
    { kind: 'constant', delayMs: 30, maxAttempts: 2 },
    { kind: 'never' },
  ];
  for (const policy of policies) {
    for (let attempt = 1; attempt <= 9; attempt++) {
      const [{ ms }] = await sql`select durably.retry_delay_ms(${JSON.stringify(policy)}::text::jsonb, ${attempt})::int as ms`;
      assert.equal(ms, retryDelay(policy, attempt), `${JSON.stringify(policy)} attempt ${attempt}`);
    }
  }
  const [{ ms }] = await sql`select durably.retry_delay_ms(${JSON.stringify(DEFAULT_RETRY)}::text::jsonb, 3)::int as ms`;
  assert.ok(ms >= 2000 && ms <= 4000, `jittered in the upper half of 4 s: ${ms}`);
});

test('defect: one unstorable result threw away a batch — the others are written, it is rejected with a clear error', async (t) => {
  const group = uid('unstorable');
  const d = durably(t, { group, leaseMs: 30_000 });
  const values = ['a', 'b', 'nul \u0000 inside', 'c', 'lone \ud800 surrogate', 'd'];
  d.register('echo', async (_ctx: Context, x: string) => x);
  // the unstorable values come back from the function, not in its args
  d.register('unstorable', async (_ctx: Context, i: number) => values[i]);
  await d.start();
  const handles = await Promise.all(values.map((v, i) => d.beginRpc(uid(`v${i}`), 'echo', i === 2 || i === 4 ? 'x' : v)));
  const bad = await Promise.all([2, 4].map((i) => d.beginRpc(uid(`bad${i}`), 'unstorable', i)));
  const results = await within(Promise.all(handles.map((h) => h.result())), 5000, 'the storable results (a lease is 30 s)');
  assert.deepEqual(results, ['a', 'b', 'x', 'c', 'x', 'd']);
  for (const h of bad) {
    const record = await waitFor(async () => { const r = await d.promises.get(h.id); return r.state !== 'pending' ? r : undefined; });
    assert.equal(record.state, 'rejected');
    assert.match((record.value as { message: string }).message, /NUL character|lone surrogate/);
  }
});

test('defect: a batch that fails for a non-transient reason is written one by one', async () => {
  const ids = [uid('b1'), uid('b2'), uid('b3')];
  for (const id of ids) await sql`select * from durably.invoke(${id}, 'f', '[]', 'batch')`;
  const seqs = await sql<{ id: string; seq: number }[]>`select id, seq from durably.promises where id = any(${ids})`;
  const seqOf = new Map(seqs.map((r) => [r.id, r.seq]));
  const written: string[] = [];
  const batch = new SettlementBatch(db.sql, (b) => written.push(...b.map((s) => s.id)), quiet);
  batch.add({ id: ids[0], seq: seqOf.get(ids[0])!, state: 'resolved', value: '1' });
  batch.add({ id: ids[1], seq: seqOf.get(ids[1])!, state: 'resolved', value: '{not json' });
  batch.add({ id: ids[2], seq: seqOf.get(ids[2])!, state: 'resolved', value: '3' });
  await batch.flush();
  const rows = await sql`select id, state, value from durably.promises where id = any(${ids}) order by seq`;
  assert.deepEqual(rows.map((r) => [r.state, r.state === 'resolved' ? r.value : r.value.name]),
    [['resolved', 1], ['rejected', 'UnstorableResultError'], ['resolved', 3]]);
  assert.deepEqual(written.sort(), [...ids].sort());
});

test('defect: work started inside an unfinished step was orphaned — cancel reaches it', async (t) => {
  const group = uid('orphan');
  const d = durably(t, { group });
  d.register('child', async (ctx: Context) => {
    await ctx.sleep(60_000); // suspends (longer than inProcessSleepMs)
    return 'child done';
  });
  d.register('parent', async (ctx: Context) => ctx.run(async function stepWithChild(step: Context) {
    return step.rpc('child');
  }));
  await d.start();
  const root = await d.beginRpc(uid('root'), 'parent');
  const childId = `${root.id}.0.0`;
  const sleepId = `${childId}.0`;
  await waitFor(async () => (await sql`select 1 from durably.promises where id = ${sleepId}`).length > 0,
    { what: 'the child, started inside the step, to sleep' });
  const [child] = await sql`select root_id from durably.promises where id = ${childId}`;
  assert.equal(child.root_id, root.id, 'a promise made inside an unfinished step belongs to its root');
  await d.promises.cancel(root.id);
  await waitFor(async () => (await sql`select state from durably.promises where id = ${childId}`)[0].state === 'rejected_canceled',
    { what: 'the child to be canceled with its root' });
  assert.equal((await sql`select count(*)::int as n from durably.tasks where promise_id = ${childId}`)[0].n, 0, 'its task is gone');
  assert.equal((await sql`select state from durably.promises where id = ${sleepId}`)[0]?.state, 'rejected_canceled');
});

test('defect: graceful stop could double-run — leases are renewed while stop() waits', async (t) => {
  const group = uid('grace');
  const runs: string[] = [];
  const make = (name: string) => {
    const d = durably(t, { group, leaseMs: 600, heartbeatMs: 150, graceMs: 2500, pollMs: 100 });
    d.register('long', async () => { runs.push(name); await delay(1500); return name; });
    return d;
  };
  const first = make('first');
  await first.start();
  const handle = await first.beginRun(uid('long'), 'long');
  await waitFor(() => runs.length === 1, { what: 'the run to start' });
  const second = make('second');
  await second.start();
  await first.stop(); // waits for the run (1.5 s, more than two leases)
  assert.equal(await within(second.get(handle.id).then((h) => h.result()), 5000, 'the result'), 'first');
  await delay(800);
  assert.deepEqual(runs, ['first'], 'the second worker never ran it');
});

test('defect: a stale heartbeat reply aborted a fresh claim of the same id', async () => {
  const worker = '00000000-0000-0000-0000-0000000000e2';
  await sql`select durably.register_worker(${worker}, 'hb', 'h', 1, '{}', 1000)`;
  const lost: string[] = [];
  const keeper = new LeaseKeeper(db.sql, worker, 1000, (id) => lost.push(id), quiet);
  keeper.add('stale-1', Date.now()); // held, but no such task: the reply will say it is lost
  // Hold the worker's row so the heartbeat's reply is late.
  let release!: () => void;
  const holding = sql.begin(async (tx) => {
    await tx`select 1 from durably.workers where id = ${worker} for update`;
    await new Promise<void>((ok) => { release = ok; });
  });
  await waitFor(() => release, { what: 'the lock' });
  keeper.start(50);
  await delay(150); // a heartbeat is waiting on the row
  keeper.stop();
  keeper.release('stale-1');
  keeper.add('stale-1', Date.now()); // claimed again: a new lease the waiting reply knows nothing of
  release();
  await holding;
  await delay(300);
  assert.deepEqual(lost, [], 'the reply about the earlier claim does not touch the new one');
});

test('defect: lock order — settlements lock promises by sequence number and cannot deadlock', async () => {
  const [a, b] = [uid('lock-a'), uid('lock-b')];
  await sql`select * from durably.invoke_many(${[a, b]}, '{f,f}', array['[]', '[]']::jsonb[], 'locks')`;
  const other = sql.begin(async (tx) => {
    await tx`select durably.settle_many(${[a]}, '{resolved}', array['1']::jsonb[])`;
    await delay(200); // the reversed settle below now waits for a
    await tx`select durably.settle_many(${[b]}, '{resolved}', array['1']::jsonb[])`;
  });
  await delay(50);
  await sql.begin(async (tx) => {
    // the plans of a large table: the input drives a nested loop over the key
    await tx`set local enable_seqscan = off`;
    await tx`set local enable_hashjoin = off`;
    await tx`set local enable_mergejoin = off`;
    await tx`select durably.settle_many(${[b, a]}, '{resolved,resolved}', array['2', '2']::jsonb[])`;
  });
  await other; // a deadlock would fail one of them with 40P01
  const rows = await sql`select id, value from durably.promises where id = any(${[a, b]}) order by id`;
  assert.deepEqual(rows.map((r) => r.value), [1, 1]);
});

test('defect: the app role could forge checkpoints — it makes only external promises and invocations of no parent', async (t) => {
  const group = uid('forge');
  const inv = uid('inv');
  await assert.rejects(asApp((tx) => tx`select * from durably.create_promise(${`${inv}.0`}, 'step', now() + interval '1 hour', 'resolved', '"forged"', ${inv})`),
    sqlState('DU002'), 'no step checkpoints');
  await assert.rejects(asApp((tx) => tx`select * from durably.create_promise(${`${inv}.1`}, 'external', now() + interval '1 hour', p_parent_id => ${inv})`),
    sqlState('DU002'), 'no promises inside an invocation');
  await assert.rejects(asApp((tx) => tx`select * from durably.invoke(${`${inv}.2`}, 'f', '[]', ${group}, ${JSON.stringify({ parent_id: inv })}::text::jsonb)`),
    sqlState('DU002'), 'no child invocations');
  // A promise the app made under an id the worker will use is never taken for the worker's own.
  await asApp((tx) => tx`select * from durably.create_promise(${`${inv}.0`}, 'external', now() + interval '1 hour')`);
  await asApp((tx) => tx`select * from durably.resolve(${`${inv}.0`}, '"forged"')`);
  const d = durably(t, { group });
  let charged = 0;
  d.register('charge', async (ctx: Context) => ctx.run(async function charge() { charged++; return 'real'; }),
    { retry: { kind: 'never' } });
  await d.start();
  const outcome = await d.run(inv, 'charge').then((v) => ({ v }), (e: Error) => ({ e: e.message }));
  assert.notDeepEqual(outcome, { v: 'forged' }, 'the forged value is never returned as the step');
  assert.equal(charged, 1);
  // Resolving is for external promises and invocations of no parent: not steps, timers or child invocations.
  const parent = uid('p');
  await sql`select * from durably.invoke(${parent}, 'f', '[]', ${group})`;
  await sql`select * from durably.create_child_promise(${`${parent}.0`}, 'sleep', ${parent}, ${parent}, now() + interval '1 hour')`;
  await assert.rejects(asApp((tx) => tx`select * from durably.resolve(${`${parent}.0`}, '1')`), sqlState('DU002'));
  await sql`select * from durably.create_child_promise(${`${parent}.1`}, 'external', ${parent}, ${parent}, now() + interval '1 hour')`;
  const [ok] = await asApp((tx) => tx`select state from durably.resolve(${`${parent}.1`}, '"approved"')`);
  assert.equal(ok.state, 'resolved', 'ctx.promise() promises are resolved from outside');
});

test('defect: no limits on the server side — sizes and batch arguments are bounded in SQL', async () => {
  const big = JSON.stringify(['x'.repeat(1024 * 1024)]);
  const cases: [string, (tx: TransactionSql) => Promise<unknown>][] = [
    ['invoke args', (tx) => tx`select * from durably.invoke(${uid('big')}, 'f', ${big}::text::jsonb, 'limits')`],
    ['invoke tags', (tx) => tx`select * from durably.invoke(${uid('big')}, 'f', '[]', 'limits', ${JSON.stringify({ tags: { t: 'x'.repeat(70_000) } })}::text::jsonb)`],
    ['resolve value', (tx) => tx`select * from durably.resolve(${uid('big')}, ${big}::text::jsonb)`],
    ['cancel reason', (tx) => tx`select * from durably.cancel(${uid('big')}, ${'x'.repeat(70_000)})`],
    ['tick max ticks', (tx) => tx`select * from durably.tick(100, 1000000)`],
    ['expire limit', (tx) => tx`select durably.expire_promises(10000000)`],
    ['invoke_many size', (tx) => tx`select count(*) from durably.invoke_many(
        array(select 'many-' || i from generate_series(1, 10001) i), array(select 'f' from generate_series(1, 10001)),
        array(select '[]'::jsonb from generate_series(1, 10001)), 'limits')`],
  ];
  for (const [what, call] of cases) {
    await assert.rejects(asApp(call), sqlState('DU002'), what);
  }
  assert.equal((await sql`select count(*)::int as n from durably.promises where id like 'big-%' or id like 'many-%'`)[0].n, 0,
    'nothing written');
});

test('defect: grants — SECURITY DEFINER functions run as a NOLOGIN owner, no function is executable by PUBLIC', async () => {
  const [owner] = await sql`select rolcanlogin, rolsuper from pg_roles where rolname = 'durably_owner'`;
  assert.deepEqual({ ...owner }, { rolcanlogin: false, rolsuper: false });
  const definers = await sql`select p.proname, r.rolname from pg_proc p join pg_roles r on r.oid = p.proowner
                              where p.pronamespace = 'durably'::regnamespace and p.prosecdef`;
  assert.ok(definers.length > 10);
  assert.deepEqual([...new Set(definers.map((d) => d.rolname))], ['durably_owner']);
  const forPublic = await sql`select p.oid::regprocedure::text as f from pg_proc p
                               where p.pronamespace = 'durably'::regnamespace
                                 and (p.proacl is null or exists (select 1 from aclexplode(p.proacl) a
                                                                  where a.grantee = 0 and a.privilege_type = 'EXECUTE'))`;
  assert.deepEqual(forPublic.map((r) => r.f), []);
  await assert.rejects(asApp((tx) => tx`select * from durably.create_child_promise('x', 'step', 'p', 'p', now())`), sqlState('42501'));
});

test('defect: one timer per suspension — a worker keeps a single wake-up timer however many executions sleep', async (t) => {
  // Timers set for about an hour: only the sleeps of this test wait that long.
  const hourLong = new Set<unknown>();
  const { setTimeout: realSet, clearTimeout: realClear } = globalThis;
  globalThis.setTimeout = ((fn: () => void, ms?: number, ...args: unknown[]) => {
    const timer = realSet(fn, ms, ...args);
    if ((ms ?? 0) > 3_000_000) hourLong.add(timer);
    return timer;
  }) as typeof setTimeout;
  globalThis.clearTimeout = ((timer?: NodeJS.Timeout) => { hourLong.delete(timer); realClear(timer); }) as typeof clearTimeout;
  t.after(() => { globalThis.setTimeout = realSet; globalThis.clearTimeout = realClear; });

  const group = uid('timers');
  const d = durably(t, { group, inProcessSleepMs: 10, concurrency: 50 });
  d.register('nap', async (ctx: Context, ms: number) => { await ctx.sleep(ms); return ms; });
  await d.start();
  const long = await Promise.all(Array.from({ length: 300 }, (_, i) => d.beginRun(uid('long'), 'nap', 3_600_000 + i)));
  await waitFor(async () => (await sql`select count(*)::int as n from durably.tasks
    where group_name = ${group} and state = 'suspended'`)[0].n === long.length, { what: 'every execution to suspend' });
  assert.equal(hourLong.size, 1, `${hourLong.size} wake-up timers for ${long.length} sleeping executions`);
  // the earliest still wakes on time, a later one at the latest by the poll
  const short = await Promise.all([300, 600].map((ms) => d.beginRun(uid('short'), 'nap', ms)));
  assert.deepEqual(await within(Promise.all(short.map((h) => h.result())), 3000, 'the short sleeps'), [300, 600]);
});

test('defect: expire_promises errors were swallowed — a failing expiry sweep is logged', async (t) => {
  const warnings: string[] = [];
  const log = { debug() {}, info() {}, warn: (_f: object, m: string) => { warnings.push(m); }, error() {} };
  const d = durably(t, { group: uid('sweep'), log });
  d.register('f', async () => 1);
  await sql`alter function durably.expire_promises(integer) rename to expire_promises_elsewhere`;
  try {
    await d.start();
    await waitFor(() => warnings.some((w) => /expiring promises failed: .*expire_promises/.test(w)),
      { what: 'the failed sweep in the log' });
  } finally {
    await sql`alter function durably.expire_promises_elsewhere(integer) rename to expire_promises`;
  }
});

test('defect: work started inside an unfinished step was orphaned — retention reaches it', async () => {
  const root = uid('oroot');
  await sql`select * from durably.invoke(${root}, 'f', '[]', 'orphans')`;
  // made inside step `${root}.0`, which never finished: it has no parent row
  await sql`select * from durably.create_child_promise(${`${root}.0.0`}, 'sleep', ${`${root}.0`}, ${root}, now() + interval '1 hour')`;
  await sql`select * from durably.cancel(${root})`;
  assert.equal((await sql`select state from durably.promises where id = ${`${root}.0.0`}`)[0].state, 'rejected_canceled');
  await sql`update durably.promises set created_at = now() - interval '9 days', settled_at = now() - interval '8 days'
             where root_id = ${root}`;
  await sql`select durably.prune_promises('7 days')`;
  assert.deepEqual([...await sql`select id from durably.promises where root_id = ${root}`], []);
});

test('claims walk tasks_claim in order and stop at the limit, with or without statistics', async () => {
  const group = uid('walk');
  const worker = '00000000-0000-0000-0000-0000000000e3';
  await sql`select durably.register_worker(${worker}, ${group}, 'h', 1, '{f}', 30000)`;
  for (let i = 0; i < 5; i++) {
    await sql`select count(*) from durably.invoke_many(array(select ${`${group}-${i}-`} || g from generate_series(1, 1000) g),
      array_fill('f'::text, array[1000]), array_fill('[]'::jsonb, array[1000]), ${group})`;
  }
  const [{ read }] = await sql.begin(async (tx) => {
    assert.equal((await tx`select * from durably.claim_tasks(${worker}, ${group}, 10, 30000)`).length, 10);
    return tx`select (idx_tup_fetch + seq_tup_read)::int as read from pg_stat_xact_user_tables
               where schemaname = 'durably' and relname = 'tasks'`;
  });
  assert.ok(read < 100, `the claim of 10 read ${read} rows of tasks (5,000 are due)`);
});

test('invocations made one by one in a statement (a trigger on a bulk insert) read promises by key only', async () => {
  const prefix = uid('trig');
  const [{ rows }] = await sql`select count(*)::int as rows from durably.promises`;
  const [{ read }] = await sql.begin(async (tx) => {
    await tx`select count(*) from (select durably.invoke(${prefix} || g, 'f', '[]', 'trigger') from generate_series(1, 500) g) x`;
    await tx`select count(*) from (select durably.invoke(${prefix} || g, 'f', '[]', 'trigger') from generate_series(1, 500) g) x`;
    return tx`select seq_tup_read::int as read from pg_stat_xact_user_tables where schemaname = 'durably' and relname = 'promises'`;
  });
  // A planner may scan a small table once; a scan per call reads it a thousand times.
  assert.ok(read <= 2 * (rows + 1000), `1,000 calls read ${read} rows of promises by sequential scans (${rows} + 1,000 rows)`);
});

test('defect: work a function started and did not await is lost when the function returns first', async (t) => {
  const group = uid('detached');
  const d = durably(t, { group });
  d.register('fire_and_return', async (ctx: Context) => {
    // neither awaited: the function returns at once
    void ctx.beginRun(async function slow() { await delay(300); return 'stored'; });
    const child = ctx.beginRpc('child');
    return child.id;
  });
  d.register('child', async () => 'child ran');
  await d.start();
  const id = uid('root');
  const childId = await d.run(id, 'fire_and_return') as string;
  // Once the function's outcome is written, nothing more can be made under
  // it: what it started is written first.
  const rows = await sql<{ id: string; kind: string; state: string; value: unknown }[]>`
    select id, kind, state, value from durably.promises where parent_id = ${id} order by id`;
  assert.deepEqual(rows.map((r) => ({ ...r })), [
    { id: `${id}.0`, kind: 'step', state: 'resolved', value: 'stored' },
    { id: childId, kind: 'invoke', state: rows[1]?.state, value: rows[1]?.value },
  ]);
  assert.equal(await within((await d.get(childId)).result(), 10_000, 'the detached child'), 'child ran');
});
