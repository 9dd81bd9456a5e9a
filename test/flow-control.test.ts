/**
 * Flow control (sql/limits.sql): concurrency limits by key, function and
 * group, held across worker processes and through a SIGKILL; pause; rate
 * limits over a sliding window; priorities; parked tasks woken by NOTIFY;
 * suspended executions holding no slot; bad input refused with nothing written.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { Durably, InvalidArgumentError, type Context, type DurablyConfig } from '../src/index.js';
import { testDatabase } from './helpers/db.js';
import { fileURLToPath } from 'node:url';
import { runProcess, spawnChild, within, type Child } from './helpers/processes.js';
import { waitFor } from './helpers/wait.js';

const db = await testDatabase();
const sql = db.sql;
const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;
const quiet = () => {};
const sqlState = (code: string) => (err: { code?: string }) => err.code === code;

function durably(t: TestContext, config: DurablyConfig = {}): Durably {
  const d = new Durably({ url: db.url, leaseMs: 5000, pollMs: 100, log: quiet, ...config });
  t.after(() => d.stop());
  return d;
}

/** Limits are global: each test removes the ones it set. */
function limit(t: TestContext, d: Durably, key: string, settings: Parameters<Durably['limits']['set']>[1]) {
  t.after(async () => { await sql`select durably.delete_limit(${key})`; });
  return d.limits.set(key, settings);
}

interface Run { id: string; key: string; start: number; end: number; finished: boolean; killed: boolean }

/** The runs printed by limited-worker processes; one killed at `killedAt` ended then. */
function runsOf(children: { child: Child; killedAt?: number }[]): Run[] {
  const runs: Run[] = [];
  for (const { child, killedAt } of children) {
    const open = new Map<string, Run>();
    for (const line of child.stdout.split('\n')) {
      const [what, id, key, at] = line.split(' ');
      if (what === 'start') {
        const run = { id, key, start: Number(at), end: killedAt ?? Infinity, finished: false, killed: killedAt !== undefined };
        open.set(id, run);
        runs.push(run);
      } else if (what === 'end') {
        Object.assign(open.get(id)!, { end: Number(at), finished: true });
      }
    }
  }
  return runs;
}

/** The most runs of `runs` that overlapped at any instant. */
function maxOverlap(runs: Run[]): number {
  const events = runs.flatMap((r) => [[r.start, 1], [r.end, -1]] as const)
    .sort((a, b) => a[0] - b[0] || a[1] - b[1]); // an end at the same ms as a start comes first
  let now = 0;
  let max = 0;
  for (const [, d] of events) max = Math.max(max, (now += d));
  return max;
}

test('concurrency limits hold across 3 worker processes × concurrency 10, through a SIGKILL', async (t) => {
  const client = durably(t, { group: 'limited' });
  const keys = { 'customer:1': 1, 'customer:2': 3 } as Record<string, number>;
  for (const [key, concurrency] of Object.entries(keys)) await limit(t, client, key, { concurrency });
  await limit(t, client, 'function:limited', { concurrency: 6 });

  const env = { DATABASE_URL: db.url, CONCURRENCY: '10', LEASE_MS: '1500', HEARTBEAT_MS: '300', POLL_MS: '200' };
  const workers = await Promise.all([0, 1, 2].map((i) =>
    spawnChild(t, `limited-${i}`, 'test/fixtures/limited-worker.ts', { env: { ...env, WORKER_NAME: `limited-${i}` } })));

  const ids: string[] = [];
  for (let i = 0; i < 60; i++) {
    const key = ['customer:1', 'customer:2', 'none'][i % 3];
    const id = uid(`fc-${i}`);
    ids.push(id);
    await client.beginRpc(id, 'limited', key, 120,
      client.options(key === 'none' ? {} : { concurrencyKey: key, priority: i % 2 }));
  }
  // One is killed in the middle of a run of its own: one that began under
  // 40 ms ago by its own line (a run lasts 120 ms), so that its end is not
  // already written to a pipe this process has yet to read.
  const running = (child: Child) => runsOf([{ child }]).some((r) => !r.finished && Date.now() - r.start < 40);
  await delay(300);
  const victim = await waitFor(() => workers.find(running), { what: 'a run in progress', intervalMs: 5 });
  await victim.kill();
  const killedAt = Date.now();
  const replacement = await spawnChild(t, 'limited-3', 'test/fixtures/limited-worker.ts', { env: { ...env, WORKER_NAME: 'limited-3' } });

  const results = await within(Promise.all(ids.map(async (id) => (await client.get(id)).result())), 60_000, 'every invocation to finish');
  assert.equal(results.length, 60);

  const runs = runsOf([...workers.map((child) => (child === victim ? { child, killedAt } : { child })), { child: replacement }]);
  // A run the killed worker finished may not have been stored yet (settlements
  // are batched): it runs again. Every other run finished exactly once.
  const finished = runs.filter((r) => r.finished && !r.killed).map((r) => r.id);
  const dup = finished.filter((id, i) => finished.indexOf(id) !== i);
  assert.deepEqual(new Set(runs.filter((r) => r.finished).map((r) => r.id)), new Set(ids), 'every invocation finished');
  assert.deepEqual(dup, [], 'no invocation finished twice on the workers that lived');
  assert.ok(runs.some((r) => r.end === killedAt), 'the kill interrupted running work');
  for (const [key, concurrency] of Object.entries(keys)) {
    const overlap = maxOverlap(runs.filter((r) => r.key === key));
    assert.ok(overlap <= concurrency, `${key}: ${overlap} ran at once; the limit is ${concurrency}`);
    assert.equal(overlap, concurrency, `${key}: the limit is used to the full`);
  }
  const all = maxOverlap(runs);
  assert.ok(all <= 6, `function:limited: ${all} ran at once; the limit is 6`);
  const [left] = await sql`select count(*)::int as n from durably.tasks where parked_on is not null`;
  assert.equal(left.n, 0, 'nothing is left parked');
});

test('claims: a full key parks its tasks without a lease; a freed slot wakes the first by NOTIFY; a lease runs out only when it expires', async (t) => {
  const client = durably(t);
  await client.promises.search('none'); // migrated
  const group = uid('g');
  const key = uid('key');
  await limit(t, client, key, { concurrency: 1 });
  const worker = randomUUID();
  await sql`select durably.register_worker(${worker}, ${group}, 'h', 1, '{f}', 300)`;
  for (let i = 0; i < 4; i++) {
    await sql`select durably.invoke(${`${key}-${i}`}, 'f', '[]', ${group}, ${JSON.stringify({ concurrency_key: key })}::text::jsonb)`;
  }
  const first = await sql`select id from durably.claim_tasks(${worker}, ${group}, 10, 300)`;
  assert.deepEqual(first.map((r) => r.id), [`${key}-0`]);
  const parked = await sql`select promise_id, state, worker_id, parked_on from durably.task_list where parked_on = ${key} order by promise_id`;
  assert.deepEqual(parked.map((r) => [r.promise_id, r.state, r.worker_id]),
    [1, 2, 3].map((i) => [`${key}-${i}`, 'ready', null]), 'the others wait, ready, holding no lease');
  assert.equal((await sql`select * from durably.claim_tasks(${worker}, ${group}, 10, 300)`).length, 0, 'a parked task is not read again');
  const [listed] = await sql`select running::int, parked::int from durably.limit_list where key = ${key}`;
  assert.deepEqual({ ...listed }, { running: 1, parked: 3 });

  // The lease has not expired: its slot stays taken.
  assert.equal((await sql`select * from durably.claim_tasks(${worker}, ${group}, 10, 300)`).length, 0);
  await delay(350);
  // Expired: the slot is free again, for one task.
  const [holder, ...more] = await sql`select id from durably.claim_tasks(${worker}, ${group}, 10, 5000)`;
  assert.ok(holder);
  assert.equal(more.length, 0);

  // Settling frees the slot: the next parked task is woken, with a NOTIFY to its group.
  const notified: string[] = [];
  const listener = await sql.listen('durably_tasks', (g) => notified.push(g));
  t.after(() => listener.unlisten());
  await sql`select durably.settle_many(${[holder.id]}, '{resolved}', array['1'::jsonb])`;
  await waitFor(() => notified.includes(group), { what: 'a NOTIFY for the group' });
  const next = await sql`select id from durably.claim_tasks(${worker}, ${group}, 10, 5000)`;
  assert.equal(next.length, 1);
  assert.notEqual(next[0].id, holder.id);
});

test('priority: higher first within a group, and limits admit in priority order', async (t) => {
  const client = durably(t);
  await client.promises.search('none');
  const group = uid('prio');
  const worker = randomUUID();
  await sql`select durably.register_worker(${worker}, ${group}, 'h', 1, '{f}', 5000)`;
  const priorities = [0, -1, 5, 10, 5, 0];
  for (const [i, priority] of priorities.entries()) {
    await sql`select durably.invoke(${`${group}-${i}`}, 'f', '[]', ${group}, ${JSON.stringify({ priority })}::text::jsonb)`;
  }
  const order = (await sql`select id from durably.claim_tasks(${worker}, ${group}, 3, 5000)`).map((r) => r.id);
  assert.deepEqual(order, [`${group}-3`, `${group}-2`, `${group}-4`]);
  const rest = (await sql`select id from durably.claim_tasks(${worker}, ${group}, 10, 5000)`).map((r) => r.id);
  assert.deepEqual(rest, [`${group}-0`, `${group}-5`, `${group}-1`]);

  // With a limit of 1 on the group, the highest priority among the waiting goes first.
  const limited = uid('lprio');
  await limit(t, client, `group:${limited}`, { concurrency: 1 });
  await sql`select durably.register_worker(${worker}, ${limited}, 'h', 1, '{f}', 5000)`;
  for (const [i, priority] of [1, 7, 3].entries()) {
    await sql`select durably.invoke(${`${limited}-${i}`}, 'f', '[]', ${limited}, ${JSON.stringify({ priority })}::text::jsonb)`;
  }
  const ran: string[] = [];
  for (let i = 0; i < 3; i++) {
    const [claimed] = await sql`select id, seq from durably.claim_tasks(${worker}, ${limited}, 10, 5000)`;
    ran.push(claimed.id);
    await sql`select durably.settle_many(${[claimed.id]}, '{resolved}', array['1'::jsonb], ${[claimed.seq]}::bigint[])`;
  }
  assert.deepEqual(ran, [`${limited}-1`, `${limited}-2`, `${limited}-0`]);
});

test('concurrency 0 pauses a key: nothing new starts, running work finishes; raising it starts the rest at once', async (t) => {
  const d = durably(t, { pollMs: 60_000 }); // no poll: only NOTIFY starts the parked work
  const key = uid('pause');
  const started: string[] = [];
  let release!: () => void;
  const gate = new Promise<void>((ok) => { release = ok; });
  d.register('paused_fn', async (ctx: Context, wait: boolean) => {
    started.push(ctx.id);
    if (wait) await gate;
    return 'ok';
  });
  await d.start();
  const running = await d.beginRpc(`${key}-running`, 'paused_fn', true, d.options({ concurrencyKey: key }));
  await waitFor(() => started.length === 1, { what: 'the first run' });
  await limit(t, d, key, { concurrency: 0 });
  const later = await Promise.all([1, 2, 3].map((i) => d.beginRpc(`${key}-${i}`, 'paused_fn', false, d.options({ concurrencyKey: key }))));
  await delay(400);
  assert.deepEqual(started, [`${key}-running`], 'nothing new started while paused');
  release();
  assert.equal(await running.result(), 'ok', 'running work finishes');
  await delay(200);
  assert.equal(started.length, 1);
  assert.equal((await d.limits.get(key))!.parked, 3);

  const raisedAt = Date.now();
  await d.limits.set(key, { concurrency: 2 });
  await within(Promise.all(later.map((h) => h.result())), 5000, 'the paused work to run after the raise');
  assert.ok(Date.now() - raisedAt < 3000, 'woken by NOTIFY, not by a poll');
});

test('a suspended execution (durable sleep, external promise) holds no slot', async (t) => {
  const d = durably(t, { inProcessSleepMs: 0 });
  const key = uid('suspend');
  await limit(t, d, key, { concurrency: 1 });
  d.register('waits_external', async (ctx: Context) => {
    const p = await ctx.promise({ id: `${ctx.id}.approval` });
    return `approved ${await p.result()}`;
  });
  d.register('sleeps', async (ctx: Context) => {
    await ctx.sleep(1500);
    return 'slept';
  });
  d.register('quick', async () => 'quick');
  await d.start();
  const external = await d.beginRpc(`${key}-external`, 'waits_external', d.options({ concurrencyKey: key }));
  const sleeper = await d.beginRpc(`${key}-sleeper`, 'sleeps', d.options({ concurrencyKey: key }));
  await waitFor(async () => (await sql`select count(*)::int as n from durably.tasks t join durably.promises p on p.seq = t.promise_seq
    where p.id in (${external.id}, ${sleeper.id}) and t.state = 'suspended'`)[0].n === 2, { what: 'both to suspend' });
  const quick = await d.beginRpc(`${key}-quick`, 'quick', d.options({ concurrencyKey: key }));
  assert.equal(await within(quick.result(), 3000, 'a run of the key while two are suspended'), 'quick');
  await d.promises.resolve(`${external.id}.approval`, 'yes');
  assert.equal(await within(external.result(), 5000, 'the external wait to end'), 'approved yes');
  assert.equal(await within(sleeper.result(), 5000, 'the sleep to end'), 'slept');
});

test('a rate limit holds in every window of its period, changed while work runs', async (t) => {
  const d = durably(t, { concurrency: 20 });
  const key = uid('rate');
  await limit(t, d, key, { rate: { limit: 3, periodMs: 1000 } });
  const starts: number[] = [];
  d.register('rated', async () => { starts.push(Date.now()); return 1; });
  await d.start();
  const handles = await Promise.all(Array.from({ length: 9 }, (_, i) =>
    d.beginRpc(`${key}-${i}`, 'rated', d.options({ concurrencyKey: key }))));
  await waitFor(() => starts.length >= 6, { what: 'the first runs', intervalMs: 5 });
  await d.limits.set(key, { rate: { limit: 1, periodMs: 1000 } });
  const changedAt = Date.now();
  await within(Promise.all(handles.map((h) => h.result())), 20_000, 'every run');
  assert.equal(starts.length, 9);
  starts.sort((a, b) => a - b);
  // Times are taken in the function: 150 ms of slack for the time between a claim and its first line.
  const most = (list: number[], ms: number) => Math.max(...list.map((s) => list.filter((x) => x >= s && x < s + ms - 150).length));
  const before = starts.filter((s) => s < changedAt);
  const after = starts.filter((s) => s >= changedAt);
  assert.ok(most(before, 1000) <= 3, `at most 3 in any second: ${before.map((s) => s - starts[0])}`);
  assert.ok(most(after, 1000) <= 1, `at most 1 in any second after the change: ${after.map((s) => s - starts[0])}`);
  assert.ok(starts.at(-1)! - starts[0] >= 3000, `the limit spread the starts out: ${starts.map((s) => s - starts[0])}, changed at ${changedAt - starts[0]}`);
});

test('limits from TS, SQL (as durably_app) and the list view; bad input is refused with nothing written', async (t) => {
  const d = durably(t);
  const key = uid('api');
  t.after(async () => { await sql`select durably.delete_limit(${key})`; });
  const set = await d.limits.set(key, { concurrency: 2, rate: { limit: 10, periodMs: 1000 } });
  assert.deepEqual({ ...set, updatedAt: null },
    { key, concurrency: 2, rate: { limit: 10, periodMs: 1000 }, running: 0, parked: 0, startedInWindow: 0, updatedAt: null });
  assert.ok((await d.limits.list()).some((l) => l.key === key));
  // durably_app sets a limit and reads its count while an execution of the key runs.
  const group = uid('api');
  const worker = randomUUID();
  await sql`select durably.register_worker(${worker}, ${group}, 'h', 1, '{f}', 5000)`;
  await sql`select durably.invoke(${uid('api')}, 'f', '[]', ${group}, ${JSON.stringify({ concurrency_key: key })}::text::jsonb)`;
  assert.equal((await sql`select * from durably.claim_tasks(${worker}, ${group}, 10, 5000)`).length, 1);
  await sql.begin(async (tx) => {
    await tx`set local role durably_app`;
    await tx`select durably.set_limit(${key}, 5, null, null)`;
    const [row] = await tx`select concurrency, rate_limit, running::int from durably.limit_list where key = ${key}`;
    assert.deepEqual({ ...row }, { concurrency: 5, rate_limit: null, running: 1 });
  });

  const before = await sql`select * from durably.limits order by key`;
  for (const [k, settings, message] of [
    [key, { concurrency: -1 }, /concurrency/],
    [key, { rate: { limit: -1, periodMs: 1000 } }, /rate limit/],
    [key, { rate: { limit: 1, periodMs: 0 } }, /rate period/],
    ['', { concurrency: 1 }, /limit key/],
    ['x'.repeat(513), { concurrency: 1 }, /limit key/],
    [key, { concurrency: 1.5 }, /concurrency/],
  ] as const) {
    await assert.rejects(d.limits.set(k, settings as never), (e) => e instanceof InvalidArgumentError && message.test(e.message));
  }
  for (const call of [
    sql`select durably.set_limit(${key}, -1, null, null)`,
    sql`select durably.set_limit(${key}, null, 1, 0)`,
    sql`select durably.set_limit(${key}, null, -1, 100)`,
    sql`select durably.set_limit(${key}, null, 1, null)`,
    sql`select durably.set_limit('', 1, null, null)`,
    sql`select durably.set_limit(${'k'.repeat(513)}, 1, null, null)`,
    sql`select durably.delete_limit('')`,
  ]) await assert.rejects(call, sqlState('DU002'));
  assert.deepEqual(await sql`select * from durably.limits order by key`, before, 'nothing written');

  const id = uid('bad-key');
  await assert.rejects(d.beginRpc(id, 'f', d.options({ concurrencyKey: '' })), InvalidArgumentError);
  await assert.rejects(d.beginRpc(id, 'f', d.options({ priority: 1.5 })), InvalidArgumentError);
  await assert.rejects(sql`select durably.invoke(${id}, 'f', '[]', 'default', '{"concurrency_key": ""}')`, sqlState('DU002'));
  await assert.rejects(sql`select durably.invoke(${id}, 'f', '[]', 'default', '{"priority": "high"}')`, sqlState('DU002'));
  assert.equal((await sql`select 1 from durably.promises where id = ${id}`).length, 0, 'no invocation written');
  assert.equal(await d.limits.delete(key), true);
  assert.equal(await d.limits.delete(key), false);
});

test('CLI: limits set, list and delete; invoke with a concurrency key and a priority; bad input exits 2', async () => {
  const bin = fileURLToPath(new URL('../bin/durably.js', import.meta.url));
  const cli = (...args: string[]) => runProcess(process.execPath, [bin, ...args], { env: { DATABASE_URL: db.url }, timeoutMs: 30_000 });
  const key = uid('cli');
  const set = await cli('limits', 'set', key, '--concurrency', '2', '--rate', '5/1s', '--json');
  assert.equal(set.code, 0, set.stderr);
  assert.deepEqual(JSON.parse(set.stdout).rate, { limit: 5, periodMs: 1000 });
  assert.match((await cli('limits', 'list')).stdout, new RegExp(`^${key} +2 `, 'm'));
  const id = uid('cli-invoke');
  assert.equal((await cli('invoke', 'f', '--id', id, '--concurrency-key', key, '--priority', '3')).code, 0);
  const [task] = await sql`select concurrency_key, priority from durably.tasks where promise_id = ${id}`;
  assert.deepEqual({ ...task }, { concurrency_key: key, priority: 3 });
  for (const bad of [['--rate', '5/xs'], ['--concurrency', '-1'], ['--concurrency', 'two']]) {
    const r = await cli('limits', 'set', key, ...bad);
    assert.equal(r.code, 2, `${bad.join(' ')}: ${r.stderr}`);
  }
  assert.equal((await sql`select concurrency from durably.limits where key = ${key}`)[0].concurrency, 2, 'nothing written');
  assert.deepEqual(JSON.parse((await cli('limits', 'delete', key, '--json')).stdout), { deleted: true });
});

test('hot path: with no limit, no priority and no key a claim only probes three empty relations', async () => {
  const [{ n }] = await sql`select count(*)::int as n from durably.limits`;
  assert.equal(n, 0);
  // A backlog of unprioritized work, as the planner sees it (a table of a few rows is scanned whole, rightly).
  await sql`select count(*) from durably.invoke_many(array(select 'hot-' || g from generate_series(1, 5000) g),
    array_fill('f'::text, array[5000]), array_fill('[]'::jsonb, array[5000]), 'g')`;
  await sql`analyze durably.tasks`;
  const plan = (await sql`explain select 1 from durably.tasks t where t.group_name = 'g' and t.priority <> 0`)
    .map((r) => r['QUERY PLAN']).join('\n');
  assert.match(plan, /tasks_priority/, 'the priority probe reads the partial index of prioritized tasks only');
  const keyed = (await sql`explain select 1 from durably.tasks t where t.group_name = 'g' and t.concurrency_key is not null`)
    .map((r) => r['QUERY PLAN']).join('\n');
  assert.match(keyed, /tasks_keyed/, 'the key probe reads the partial index of keyed tasks only');
  const parked = (await sql`explain select p.promise_seq from durably.tasks p where p.parked_on = 'k'
                             order by p.priority desc, p.promise_seq limit 1`).map((r) => r['QUERY PLAN']).join('\n');
  assert.match(parked, /tasks_parked/, 'a wake-up reads the parked tasks of its key by index');
});

test('fairness: claims take keyed work from its keys in turn, so a long backlog does not hold back a short one', async () => {
  const group = uid('fair');
  const worker = randomUUID();
  await sql`select durably.register_worker(${worker}, ${group}, 'h', 1, '{f}', 5000)`;
  const invoke = (prefix: string, n: number, key: string) => sql`
    select count(*) from durably.invoke_many(array(select ${`${group}-${prefix}-`} || g from generate_series(1, ${n}::int) g),
      array_fill('f'::text, array[${n}::int]), array_fill('[]'::jsonb, array[${n}::int]), ${group},
      ${JSON.stringify({ concurrency_key: `${group}:${key}` })}::text::jsonb)`;
  await invoke('big', 1000, 'big');
  await invoke('small', 10, 'small');
  const claimed: string[] = [];
  for (let i = 0; i < 5; i++) {
    claimed.push(...(await sql`select id from durably.claim_tasks(${worker}, ${group}, 10, 5000)`).map((r) => r.id as string));
  }
  assert.equal(new Set(claimed).size, 50, 'five claims of 10, nothing twice');
  assert.equal(claimed.filter((id) => id.includes('-small-')).length, 10,
    `the 10 of the short backlog ran within five claims, behind 1,000 older ones: ${claimed.join(' ')}`);
  assert.ok(claimed.slice(0, 10).includes(`${group}-big-1`), 'the oldest of the long backlog is still taken first');
});

test('many keys with short backlogs: claims take the due order as it stands, and limits still hold it back', async () => {
  const group = uid('spread');
  const worker = randomUUID();
  await sql`select durably.register_worker(${worker}, ${group}, 'h', 1, '{f}', 5000)`;
  const keys = Array.from({ length: 20 }, (_, k) => `${group}:k${k}`);
  await sql`select durably.set_limit(k, 1, null, null) from unnest(${keys}::text[]) k`;
  try {
    // round after round over the keys: no key twice in ten due tasks
    for (let round = 1; round <= 2; round++) {
      for (const [k, key] of keys.entries()) {
        await sql`select durably.invoke(${`${group}-${round}-${k}`}, 'f', '[]', ${group}, ${JSON.stringify({ concurrency_key: key })}::text::jsonb)`;
      }
    }
    const claim = async () => (await sql`select id from durably.claim_tasks(${worker}, ${group}, 10, 5000)`).map((r) => r.id as string);
    assert.deepEqual(await claim(), keys.slice(0, 10).map((_, k) => `${group}-1-${k}`), 'the first ten keys, in due order');
    assert.deepEqual(await claim(), keys.slice(10).map((_, k) => `${group}-1-${k + 10}`), 'the next ten keys, in due order');
    assert.deepEqual(await claim(), [], 'every key runs one: the second round waits');
    assert.deepEqual(await claim(), [], 'also its second half');
    const [{ parked }] = await sql`select count(*)::int as parked from durably.tasks where group_name = ${group} and parked_on is not null`;
    assert.equal(parked, 20, 'the second round is parked on its keys');
  } finally {
    await sql`select durably.delete_limit(k) from unnest(${keys}::text[]) k`;
  }
});
