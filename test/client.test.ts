/**
 * The TypeScript API in one process: register/run/rpc, dedup of concurrent
 * invocations, retries, typed errors, input validation, targets, wake-up
 * latency through NOTIFY, and promises settled from another instance.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import {
  Durably, DurablyError, InvalidArgumentError, NotFoundError, PromiseRejectedError, type Context, type DurablyConfig,
} from '../src/index.js';
import { testDatabase } from './helpers/db.js';
import { waitFor } from './helpers/wait.js';

const db = await testDatabase();
const sql = db.sql;
await sql`create table runs (invocation_id text not null, attempt integer not null, at timestamptz not null default clock_timestamp())`;

const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;
const quiet = () => {};

/** A Durably on the test database, stopped after the test. */
function durably(t: { after(fn: () => Promise<void>): void }, config: DurablyConfig = {}): Durably {
  const d = new Durably({ url: db.url, leaseMs: 5000, pollMs: 200, log: quiet, ...config });
  t.after(() => d.stop());
  return d;
}

async function rowCount(): Promise<number> {
  const [{ n }] = await sql<{ n: number }[]>`select count(*)::int as n from durably.promises`;
  return n;
}

test('register, start, run and result', async (t) => {
  const d = durably(t, { group: uid('g') });
  async function add(_ctx: Context, a: number, b: number) { return a + b; }
  d.register('add', add);
  await d.start();
  const id = uid('add');
  assert.equal(await d.run(id, 'add', 2, 3), 5);
  assert.equal(await d.run(uid('add'), add, 10, 20), 30, 'run accepts the registered function itself');
  const h = await d.get<number>(id);
  assert.equal(h.id, id);
  assert.equal(await h.done(), true);
  assert.equal(await h.result(), 5);
  const rec = await d.promises.get(id);
  assert.equal(rec.state, 'resolved');
  assert.equal(rec.func, 'add');
  assert.deepEqual(rec.args, [2, 3]);
  // running the same id again returns the stored result without running anything
  assert.equal(await d.run(id, 'add', 100, 100), 5);
  // an unregistered function object cannot be run
  await assert.rejects(d.run(uid('x'), async function stranger() { return 1; }), InvalidArgumentError);
});

test('register(fn) uses fn.name; a nameless function is refused', async (t) => {
  const d = durably(t, { group: uid('g') });
  async function double(_ctx: Context, x: number) { return 2 * x; }
  d.register(double);
  await d.start();
  assert.equal(await d.rpc(uid('double'), 'double', 21), 42);
  const nameless = [async () => 1][0];
  assert.equal(nameless.name, '');
  assert.throws(() => new Durably({ url: db.url }).register(nameless), InvalidArgumentError);
});

test('registering a different function under a taken name throws ALREADY_REGISTERED', async (t) => {
  const d = durably(t, { group: uid('g') });
  const f = async () => 1;
  d.register('f', f);
  d.register('f', f); // the same function again is fine
  assert.throws(() => d.register('f', async () => 2), (e: unknown) => {
    assert.ok(e instanceof DurablyError);
    assert.equal(e.code, 'ALREADY_REGISTERED');
    return true;
  });
});

test('50 concurrent beginRpc calls with one id: one promise, one execution, one result', async (t) => {
  const group = uid('g');
  const d = durably(t, { group, concurrency: 10 });
  d.register('once', async (ctx: Context) => {
    await sql`insert into runs (invocation_id, attempt) values (${ctx.id}, ${ctx.attempt})`;
    await delay(100);
    return randomBytes(8).toString('hex');
  });
  await d.start();
  const client = durably(t, { group: uid('client') });
  const id = uid('once');
  const handles = await Promise.all(Array.from({ length: 50 }, () =>
    client.beginRpc<string>(id, 'once', client.options({ target: group }))));
  const results = await Promise.all(handles.map((h) => h.result()));
  assert.equal(new Set(results).size, 1, 'all handles see the same result');
  assert.match(results[0], /^[0-9a-f]{16}$/);
  const [{ n }] = await sql<{ n: number }[]>`select count(*)::int as n from durably.promises where id = ${id}`;
  assert.equal(n, 1);
  const runs = await sql`select * from runs where invocation_id = ${id}`;
  assert.equal(runs.length, 1, 'the function body ran exactly once');
});

class BoomError extends Error {
  override name = 'BoomError';
}

test('a thrown error is retried per the policy, then the promise rejects with the recorded error', async (t) => {
  const group = uid('g');
  const d = durably(t, { group });
  d.register('flaky', async (ctx: Context) => {
    await sql`insert into runs (invocation_id, attempt) values (${ctx.id}, ${ctx.attempt})`;
    throw new BoomError(`boom on attempt ${ctx.attempt}`);
  }, { retry: { kind: 'constant', delayMs: 50, maxAttempts: 3 } });
  await d.start();

  const id = uid('flaky');
  const err = await d.run(id, 'flaky').then(() => assert.fail('expected a rejection'), (e: unknown) => e);
  assert.ok(err instanceof PromiseRejectedError, String(err));
  assert.equal(err.name, 'BoomError');
  assert.equal(err.message, 'boom on attempt 3');
  assert.equal(err.code, 'REJECTED');
  assert.equal(err.state, 'rejected');
  assert.equal(err.promiseId, id);
  const value = err.value as Record<string, unknown>;
  assert.equal(value.name, 'BoomError');
  assert.equal(value.message, 'boom on attempt 3');
  assert.equal(value.attempt, 3);
  assert.equal(typeof value.stack, 'string');
  assert.match(value.stack as string, /BoomError: boom on attempt 3/);
  assert.equal(err.stack, value.stack);

  const runs = await sql<{ attempt: number; at: Date }[]>`select attempt, at from runs where invocation_id = ${id} order by at`;
  assert.deepEqual(runs.map((r) => r.attempt), [1, 2, 3]);
  for (let i = 1; i < runs.length; i++) {
    const gap = runs[i].at.getTime() - runs[i - 1].at.getTime();
    assert.ok(gap >= 45, `attempt ${i + 1} came ${gap} ms after attempt ${i}: the policy says 50 ms`);
  }
  const [{ n }] = await sql<{ n: number }[]>`select count(*)::int as n from durably.tasks where promise_id = ${id}`;
  assert.equal(n, 0, 'no task is left once the promise settled');

  // a per-call policy replaces the registered one
  const once = uid('flaky');
  await assert.rejects(d.run(once, 'flaky', d.options({ retry: { kind: 'never' } })), PromiseRejectedError);
  assert.equal((await sql`select 1 from runs where invocation_id = ${once}`).length, 1);
});

test('get(id) of an unknown id throws NotFoundError', async (t) => {
  const d = durably(t);
  await assert.rejects(d.get(uid('nothing')), (e: unknown) => {
    assert.ok(e instanceof NotFoundError);
    assert.equal(e.code, 'NOT_FOUND');
    return true;
  });
  await assert.rejects(d.promises.get(uid('nothing')), NotFoundError);
});

test('bad input throws InvalidArgumentError and writes nothing', async (t) => {
  const d = durably(t, { group: uid('g') });
  const cyclic: Record<string, unknown> = { a: 1 };
  cyclic.self = cyclic;
  class Point { constructor(readonly x = 1) {} }
  const ok = uid('ok');
  const cases: [string, () => Promise<unknown>][] = [
    ['a function argument', () => d.beginRpc(ok, 'f', () => 1)],
    ['a BigInt argument', () => d.beginRpc(ok, 'f', 10n)],
    ['undefined inside an array', () => d.beginRpc(ok, 'f', [1, undefined, 3])],
    ['an undefined argument', () => d.beginRpc(ok, 'f', undefined)],
    ['a class instance', () => d.beginRpc(ok, 'f', new Point())],
    ['a Date', () => d.beginRpc(ok, 'f', new Date())],
    ['a cyclic object', () => d.beginRpc(ok, 'f', cyclic)],
    ['NaN', () => d.beginRpc(ok, 'f', { n: NaN })],
    ['an empty id', () => d.beginRpc('', 'f')],
    ['a 600-character id', () => d.beginRpc('x'.repeat(600), 'f')],
    ['an id with a newline', () => d.beginRpc('a\nb', 'f')],
    ['an empty function name', () => d.beginRpc(ok, '')],
    ['target http://x', () => d.beginRpc(ok, 'f', d.options({ target: 'http://x' }))],
    ['target poll://any@', () => d.beginRpc(ok, 'f', d.options({ target: 'poll://any@' }))],
    ['target poll://any@bad group', () => d.beginRpc(ok, 'f', d.options({ target: 'poll://any@bad group' }))],
    ['an empty target', () => d.beginRpc(ok, 'f', d.options({ target: '' }))],
    ['a negative timeout', () => d.beginRpc(ok, 'f', d.options({ timeout: -1 }))],
    ['a bad retry policy', () => d.beginRpc(ok, 'f', d.options({ retry: { kind: 'sometimes' } as never }))],
    ['beginRun with an empty id', () => d.beginRun('', 'f')],
    ['promises.create with an empty id', () => d.promises.create('')],
    ['promises.resolve with a function value', () => d.promises.resolve(ok, () => 1)],
  ];
  const before = await rowCount();
  for (const [what, call] of cases) {
    await assert.rejects(call, (e: unknown) => {
      assert.ok(e instanceof InvalidArgumentError, `${what}: ${String(e)}`);
      assert.equal(e.code, 'INVALID_ARGUMENT');
      return true;
    }, what);
  }
  assert.equal(await rowCount(), before, 'nothing was written');
  assert.equal((await sql`select 1 from durably.tasks`).length, 0);
  // the same id with valid input is accepted afterwards
  const h = await d.beginRpc(ok, 'f', { plain: ['json', 1, null, true] });
  assert.deepEqual((await d.promises.get(h.id)).args, [{ plain: ['json', 1, null, true] }]);
});

test('concurrency and prefetch are checked; a worker holds at most prefetch tasks, running or claimed ahead', async (t) => {
  for (const config of [{ concurrency: 0 }, { concurrency: 1.5 }, { concurrency: 2, prefetch: 1 }, { prefetch: Number.NaN }]) {
    assert.throws(() => new Durably({ url: db.url, log: quiet, ...config }), InvalidArgumentError, String(Object.entries(config)));
  }
  const group = uid('g');
  const d = durably(t, { group, concurrency: 1, prefetch: 3 });
  let release!: () => void;
  const gate = new Promise<void>((ok) => { release = ok; });
  let started = 0;
  d.register('held', async () => { started++; await gate; return 'done'; });
  const handles = await Promise.all(Array.from({ length: 6 }, (_, i) => d.beginRpc(uid(`pf${i}`), 'held')));
  const states = async () => Object.fromEntries((await sql<{ state: string; n: number }[]>`
    select state, count(*)::int as n from durably.tasks where group_name = ${group} group by state`).map((r) => [r.state, r.n]));
  await d.start();
  await waitFor(async () => (await states()).claimed === 3, { timeoutMs: 5000, what: 'three tasks claimed' });
  await delay(300);
  assert.deepEqual(await states(), { claimed: 3, ready: 3 }, 'one running and two claimed ahead; the rest left to others');
  assert.equal(started, 1);
  release();
  assert.deepEqual(await Promise.all(handles.map((h) => h.result())), Array(6).fill('done'));
});

test('a function no worker of the group registers waits, pending, for one that does', async (t) => {
  const group = uid('g');
  const client = durably(t, { group: uid('client') });
  const h = await client.beginRpc(uid('later'), 'deployed_later', client.options({ target: group }));
  const w = durably(t, { group });
  w.register('known', async () => 1);
  await w.start();
  await delay(500);
  assert.equal(await h.done(), false, 'the worker of the group without it leaves it alone');
  const later = durably(t, { group });
  later.register('deployed_later', async () => 'ran');
  await later.start();
  assert.equal(await h.result(), 'ran');
});

test('target poll://any@<group> and a plain group name both dispatch to that group', async (t) => {
  const group = uid('workers');
  const w = durably(t, { group });
  w.register('whoami', async () => w.workerId);
  await w.start();
  const client = durably(t, { group: uid('client') });
  const viaUrl = await client.rpc(uid('t'), 'whoami', client.options({ target: `poll://any@${group}` }));
  const viaName = await client.rpc(uid('t'), 'whoami', client.options({ target: group }));
  assert.equal(viaUrl, w.workerId);
  assert.equal(viaName, w.workerId);

  // without a target the client's own group is used, where no worker runs
  const own = await client.beginRpc(uid('t'), 'whoami');
  const [task] = await sql<{ group_name: string }[]>`select group_name from durably.tasks where promise_id = ${own.id}`;
  assert.equal(task.group_name, client.group);
  assert.equal(await own.done(), false);
});

test('an idle worker starts a new invocation well before its poll interval (NOTIFY)', async (t) => {
  const group = uid('g');
  const w = durably(t, { group, pollMs: 5000 });
  w.register('echo', async (_ctx: Context, i: number) => i);
  await w.start();
  const client = durably(t, { group: uid('client'), pollMs: 5000 });
  // the first call also sets up the client's listener: let it settle first
  assert.equal(await client.rpc(uid('warm'), 'echo', -1, client.options({ target: group })), -1);
  const times: number[] = [];
  for (let i = 0; i < 20; i++) {
    await delay(i % 5 === 0 ? 50 : 0); // the worker is idle, waiting for work
    const start = performance.now();
    assert.equal(await client.rpc(uid('echo'), 'echo', i, client.options({ target: group })), i);
    times.push(Math.round(performance.now() - start));
  }
  const slow = times.filter((ms) => ms >= 1000);
  assert.deepEqual(slow, [], `every invocation took < 1000 ms (poll is 5000 ms): ${times.join(', ')}`);
  t.diagnostic(`latencies (ms): ${times.join(', ')}`);
});

test('invocations created while no worker runs are executed when one starts', async (t) => {
  const group = uid('g');
  const client = durably(t, { group: uid('client') });
  const handles = await Promise.all(Array.from({ length: 5 }, (_, i) =>
    client.beginRpc<number>(uid('late'), 'square', i, client.options({ target: group }))));
  for (const h of handles) assert.equal(await h.done(), false);

  const w = durably(t, { group, pollMs: 5000 });
  w.register('square', async (_ctx: Context, i: number) => i * i);
  await w.start();
  assert.deepEqual(await Promise.all(handles.map((h) => h.result())), [0, 1, 4, 9, 16]);
});

test('promises.create + promises.resolve from another instance wakes a get(id).result() waiter', async (t) => {
  const a = durably(t, { pollMs: 5000 });
  const b = durably(t, { pollMs: 5000 });
  const id = uid('ext');
  const created = await a.promises.create(id, { timeout: 60_000, tags: { by: 'test' } });
  assert.equal(created.state, 'pending');
  assert.equal(created.kind, 'external');
  assert.deepEqual(created.tags, { by: 'test' });
  const again = await b.promises.create(id, { timeout: 1 });
  assert.deepEqual(again.timeout_at, created.timeout_at, 'create dedups by id');

  const h = await a.get<{ ok: number }>(id);
  let settledAt = 0;
  const waiting = h.result().then((v) => { settledAt = performance.now(); return v; });
  await delay(100);
  assert.equal(settledAt, 0, 'still waiting while the promise is pending');
  const start = performance.now();
  const resolved = await b.promises.resolve(id, { ok: 1 });
  assert.equal(resolved.state, 'resolved');
  assert.deepEqual(await waiting, { ok: 1 });
  assert.ok(settledAt - start < 2000, `woken in ${Math.round(settledAt - start)} ms, not by the 5000 ms poll`);

  // rejecting from the other instance: the waiter gets the recorded error
  const rid = uid('ext');
  await a.promises.create(rid);
  const rejected = (await a.get(rid)).result().then(() => assert.fail('expected a rejection'), (e: unknown) => e);
  await b.promises.reject(rid, new BoomError('no'));
  const err = await rejected;
  assert.ok(err instanceof PromiseRejectedError);
  assert.equal(err.name, 'BoomError');
  assert.equal(err.message, 'no');

  // canceled: the waiter sees CANCELED
  const cid = uid('ext');
  await a.promises.create(cid);
  const canceled = (await a.get(cid)).result().then(() => assert.fail('expected a rejection'), (e: unknown) => e);
  await b.promises.cancel(cid, 'not needed');
  const cerr = await canceled;
  assert.ok(cerr instanceof PromiseRejectedError);
  assert.equal(cerr.code, 'CANCELED');
  assert.equal(cerr.message, 'not needed');

  await assert.rejects(b.promises.resolve(uid('missing'), 1), NotFoundError);
  const found = await a.promises.search('ext-*');
  assert.deepEqual(found.map((p) => p.id).sort(), [id, rid, cid].sort());
  assert.deepEqual((await a.promises.search('ext-*', { state: 'rejected_canceled' })).map((p) => p.id), [cid]);
});

test('stop() during a claim in flight runs none of what it brings back and releases it at once', async (t) => {
  const group = uid('g');
  const client = durably(t, { group: uid('client') });
  const ids = await Promise.all(Array.from({ length: 20 }, async () => {
    const id = uid('held');
    await client.beginRpc(id, 'record', client.options({ target: group }));
    return id;
  }));
  async function record(ctx: Context) {
    await sql`insert into runs (invocation_id, attempt) values (${ctx.id}, ${ctx.attempt})`;
  }
  // Hold the claim: its FOR UPDATE waits while another transaction locks the table.
  let unlock!: () => void;
  const locked = new Promise<void>((ok) => { unlock = ok; });
  let holding!: () => void;
  const held = new Promise<void>((ok) => { holding = ok; });
  const lock = sql.begin(async (tx) => {
    await tx`lock table durably.tasks in exclusive mode`;
    holding();
    await locked;
  });
  await held;
  const first = new Durably({ url: db.url, group, leaseMs: 30_000, pollMs: 200, log: quiet });
  first.register(record);
  const started = first.start();
  // wait until the worker's claim is blocked on the lock
  await waitForClaimBlocked();
  const stopping = (async () => { await started; await first.stop(); })();
  await delay(100);
  unlock();
  await lock;
  await stopping;
  const [{ n }] = await sql<{ n: number }[]>`select count(*)::int as n from runs where invocation_id = any(${ids})`;
  assert.equal(n, 0, 'the stopped worker ran nothing');
  const [{ ready }] = await sql<{ ready: number }[]>`
    select count(*)::int as ready from durably.tasks where promise_id = any(${ids}) and state = 'ready' and available_at <= now()`;
  assert.equal(ready, 20, 'every task is claimable at once, not after the 30 s lease');
  const second = durably(t, { group });
  second.register(record);
  await second.start();
  await Promise.all(ids.map((id) => client.get(id).then((h) => h.result())));
  const attempts = await sql<{ attempt: number }[]>`select attempt from runs where invocation_id = any(${ids})`;
  assert.equal(attempts.length, 20);
  assert.ok(attempts.every((r) => r.attempt === 1), 'a released task is not a failed attempt');
});

async function waitForClaimBlocked(): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const [row] = await sql`
      select 1 from pg_stat_activity
       where datname = current_database() and wait_event_type = 'Lock' and query like '%claim_tasks%'`;
    if (row) return;
    await delay(25);
  }
  throw new Error('the claim never blocked on the table lock');
}
