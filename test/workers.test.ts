/**
 * Workers as real child processes (test/fixtures/worker.ts): load balancing,
 * a crash (SIGKILL) mid-execution, a graceful stop (SIGTERM), and Postgres
 * terminating every durably connection again and again.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import { Durably, InvalidArgumentError, type DurableHandle } from '../src/index.js';
import { connect } from '../src/db.js';
import { createWorkerTables, testDatabase } from './helpers/db.js';
import { waitFor } from './helpers/wait.js';
import { spawnChild, within, type Child } from './helpers/processes.js';

const db = await testDatabase();
const sql = db.sql;
const dbName = new URL(db.url).pathname.slice(1);
await createWorkerTables(sql);

const FIXTURE = fileURLToPath(new URL('./fixtures/worker.ts', import.meta.url));
const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;
const quiet = () => {};

/** Starts a worker child and waits for its `ready` line; killed after the test if still running. */
function spawnWorker(t: TestContext, name: string, env: Record<string, string>): Promise<Child> {
  return spawnChild(t, name, FIXTURE, { env: { DATABASE_URL: db.url, WORKER_NAME: name, ...env } });
}

function client(t: TestContext, config: { group?: string; pollMs?: number } = {}): Durably {
  const d = new Durably({ url: db.url, group: uid('client'), pollMs: 200, log: quiet, ...config });
  t.after(() => d.stop());
  return d;
}

function fatal(children: Child[]): string {
  return children.filter((c) => /FATAL/.test(c.stderr) || !c.alive())
    .map((c) => `--- ${c.name} (alive: ${c.alive()}, exit ${c.proc.exitCode ?? c.proc.signalCode}):\n${c.stderr}`).join('\n');
}

type Execution = { invocation_id: string; worker_name: string; attempt: number; started_at: Date };

async function executionsOf(prefix: string): Promise<Execution[]> {
  return [...await sql<Execution[]>`
    select invocation_id, worker_name, attempt, started_at from executions
     where invocation_id like ${`${prefix}%`} order by id`];
}

async function effectsOf(prefix: string): Promise<{ invocation_id: string; worker_name: string }[]> {
  return [...await sql<{ invocation_id: string; worker_name: string }[]>`
    select invocation_id, worker_name from effects where invocation_id like ${`${prefix}%`}`];
}

test('load balancing: 300 invocations over 3 worker processes, each executed exactly once', async (t) => {
  const group = uid('lb');
  const children = await Promise.all(['a', 'b', 'c'].map((n) =>
    spawnWorker(t, `lb-${n}`, { GROUP: group, CONCURRENCY: '5', LEASE_MS: '10000' })));
  const c = client(t);
  const prefix = uid('lb');
  const ids = Array.from({ length: 300 }, (_, i) => `${prefix}-${i}`);
  const handles = await Promise.all(ids.map((id) =>
    c.beginRpc<{ worker: string }>(id, 'work', id, 20, c.options({ target: `poll://any@${group}` }))));
  const results = await within(Promise.all(handles.map((h) => h.result())), 40_000, 'all 300 results');

  const effects = await effectsOf(prefix);
  assert.equal(effects.length, 300);
  assert.deepEqual(new Set(effects.map((e) => e.invocation_id)), new Set(ids));
  const executions = await executionsOf(prefix);
  assert.equal(executions.length, 300, 'no invocation ran twice');
  const byId = new Map(effects.map((e) => [e.invocation_id, e.worker_name]));
  ids.forEach((id, i) => assert.equal(results[i].worker, byId.get(id), `the result of ${id} names the worker that ran it`));

  const perWorker = new Map<string, number>();
  for (const e of effects) perWorker.set(e.worker_name, (perWorker.get(e.worker_name) ?? 0) + 1);
  t.diagnostic(`per worker: ${JSON.stringify(Object.fromEntries(perWorker))}`);
  assert.ok(perWorker.size >= 2, `at least two workers did work: ${JSON.stringify(Object.fromEntries(perWorker))}`);
  assert.equal(fatal(children), '');
});

test('crash: a SIGKILLed worker\'s execution is re-run by a survivor after the lease expires', async (t) => {
  const group = uid('crash');
  const env = { GROUP: group, CONCURRENCY: '5', LEASE_MS: '1500', HEARTBEAT_MS: '300', POLL_MS: '200' };
  const children = await Promise.all(['a', 'b'].map((n) => spawnWorker(t, `crash-${n}`, env)));
  const c = client(t);
  const prefix = uid('crash');
  const slowId = `${prefix}-slow`;
  const target = c.options({ target: group });
  const slow = await c.beginRpc<{ worker: string }>(slowId, 'work', slowId, 3000, target);
  const quick: DurableHandle<{ worker: string }>[] = [];
  for (let i = 0; i < 20; i++) quick.push(await c.beginRpc(`${prefix}-q${i}`, 'work', `${prefix}-q${i}`, 300, target));

  const [first] = await waitFor(async () => {
    const rows = await sql<Execution[]>`select * from executions where invocation_id = ${slowId}`;
    return rows.length ? rows : undefined;
  }, { timeoutMs: 10_000, what: 'the slow execution to start' });
  const victim = children.find((ch) => ch.name === first.worker_name)!;
  const survivor = children.find((ch) => ch !== victim)!;
  const [{ now: killedAt }] = await sql<{ now: Date }[]>`select clock_timestamp() as now`;
  victim.proc.kill('SIGKILL');
  assert.equal((await victim.exited).signal, 'SIGKILL');

  const result = await within(slow.result(), 20_000, 'the slow invocation to resolve after the crash');
  assert.equal(result.worker, survivor.name);
  const quickResults = await within(Promise.all(quick.map((h) => h.result())), 20_000, 'the quick invocations');
  assert.ok(quickResults.every((r) => r.worker === victim.name || r.worker === survivor.name));

  const runs = await sql<Execution[]>`select * from executions where invocation_id = ${slowId} order by id`;
  assert.deepEqual(runs.map((r) => [r.worker_name, r.attempt]), [[victim.name, 1], [survivor.name, 2]],
    'run once by the victim, then again by the survivor as attempt 2');
  const waited = runs[1].started_at.getTime() - killedAt.getTime();
  const sinceFirst = runs[1].started_at.getTime() - runs[0].started_at.getTime();
  assert.ok(sinceFirst >= 1000, `not re-run while the victim's lease held (${sinceFirst} ms after the first start)`);
  assert.ok(waited < 1500 + 4000, `re-run ${waited} ms after the kill: about the lease (1500 ms) plus a poll`);
  t.diagnostic(`slow invocation re-run ${waited} ms after SIGKILL`);

  const effects = await effectsOf(prefix);
  assert.equal(effects.length, 21, 'every invocation has its effect: nothing lost');
  assert.equal(effects.find((e) => e.invocation_id === slowId)?.worker_name, survivor.name);
  const executions = await executionsOf(prefix);
  t.diagnostic(`${executions.length} executions for 21 invocations (${executions.length - 21} re-runs after the crash)`);
  const states = await sql`select state, count(*)::int as n from durably.promises where id like ${`${prefix}%`} group by 1`;
  assert.deepEqual([...states].map((r) => [r.state, r.n]), [['resolved', 21]]);
  assert.equal(survivor.alive(), true, fatal([survivor]));
});

test('graceful stop: SIGTERM releases the running task and another worker takes it over at once', async (t) => {
  const group = uid('stop');
  const env = { GROUP: group, LEASE_MS: '20000', GRACE_MS: '200', POLL_MS: '1000' };
  const children = await Promise.all(['a', 'b'].map((n) => spawnWorker(t, `stop-${n}`, env)));
  const c = client(t);
  const id = uid('stop');
  const h = await c.beginRpc<{ worker: string }>(id, 'work', id, 3000, c.options({ target: group }));
  const [first] = await waitFor(async () => {
    const rows = await sql<Execution[]>`select * from executions where invocation_id = ${id}`;
    return rows.length ? rows : undefined;
  }, { timeoutMs: 10_000, what: 'the execution to start' });
  const stopping = children.find((ch) => ch.name === first.worker_name)!;
  const other = children.find((ch) => ch !== stopping)!;
  const [{ now: termAt }] = await sql<{ now: Date }[]>`select clock_timestamp() as now`;
  stopping.proc.kill('SIGTERM');

  const [second] = await waitFor(async () => {
    const rows = await sql<Execution[]>`select * from executions where invocation_id = ${id} and worker_name = ${other.name}`;
    return rows.length ? rows : undefined;
  }, { timeoutMs: 10_000, what: 'the other worker to take the execution over' });
  const takeover = second.started_at.getTime() - termAt.getTime();
  t.diagnostic(`taken over ${takeover} ms after SIGTERM (lease 20000 ms, grace 200 ms)`);
  assert.ok(takeover < 3000, `taken over ${takeover} ms after SIGTERM: released, not left to its 20000 ms lease`);
  assert.equal(second.attempt, 1, 'a released execution is not a failed attempt');

  const exit = await within(stopping.exited, 10_000, 'the stopped worker to exit');
  assert.equal(exit.code, 0, stopping.stderr);
  assert.match(stopping.stdout, /stopped/);
  assert.equal((await within(h.result(), 15_000, 'the result')).worker, other.name);
  const effects = await effectsOf(id);
  assert.deepEqual(effects.map((e) => e.worker_name), [other.name], 'the aborted run on the stopped worker wrote nothing');
  const [w] = await sql`select status from durably.worker_status where pid = ${stopping.proc.pid!}`;
  assert.equal(w.status, 'stopped');
  assert.equal(other.alive(), true, fatal([other]));
});

/** Terminates the durably connections (application_name durably:<group>; the harness pools are test-harness) of the test database. */
async function terminate(appName = 'durably%'): Promise<number> {
  const rows = await db.admin`
    select pg_terminate_backend(pid) as ok from pg_stat_activity
     where datname = ${dbName} and pid <> pg_backend_pid() and application_name like ${appName}`;
  return rows.filter((r) => r.ok).length;
}

test('connection storm: Postgres terminates every durably connection repeatedly; nothing is lost, workers survive', async (t) => {
  const group = uid('storm');
  const env = { GROUP: group, CONCURRENCY: '10', LEASE_MS: '2000', HEARTBEAT_MS: '400', POLL_MS: '200' };
  const children = await Promise.all(['a', 'b'].map((n) => spawnWorker(t, `storm-${n}`, env)));
  const c = client(t, { pollMs: 500 });
  const target = c.options({ target: group });
  const prefix = uid('storm');
  const ids = Array.from({ length: 200 }, (_, i) => `${prefix}-${i}`);
  // the client retries an invocation its connection lost: safe, invocations dedup by id
  let clientRetries = 0;
  const begin = async (id: string): Promise<DurableHandle<{ worker: string }>> => {
    for (let i = 0; ; i++) {
      try {
        return await c.beginRpc(id, 'work', id, 30, target);
      } catch (err) {
        if (err instanceof InvalidArgumentError || i >= 50) throw err;
        clientRetries++;
        await delay(20);
      }
    }
  };

  // connected and migrated before the storm: the storm is to hit the stream, not the client's start
  assert.equal(typeof (await within((await begin(uid("warm"))).result(), 10_000, 'a first invocation')).worker, 'string');

  // the stream: 20 batches of 10, 50 ms apart; 8 rounds of kills, 200-500 ms apart, once it has begun
  const started = performance.now();
  const rounds = 8;
  let kills = 0;
  let enqueued = 0;
  let resolved = 0;
  const atKill: string[] = [];
  const handles: DurableHandle<{ worker: string }>[] = [];
  const stream = (async () => {
    for (let batch = 0; batch < 20; batch++) {
      const hs = await Promise.all(ids.slice(batch * 10, batch * 10 + 10).map(begin));
      for (const h of hs) void h.result().then(() => { resolved++; }, () => {});
      handles.push(...hs);
      enqueued = handles.length;
      await delay(50);
    }
  })();
  await waitFor(() => enqueued >= 10, { timeoutMs: 10_000, what: 'the stream to begin' });
  let pendingAtSomeKill = false;
  for (let i = 0; i < rounds; i++) {
    await delay(200 + Math.random() * 300);
    kills += await terminate();
    atKill.push(`${enqueued}/${resolved}`);
    if (resolved < 200) pendingAtSomeKill = true;
  }
  await stream;
  t.diagnostic(`enqueued 200 in ${Math.round(performance.now() - started)} ms; (enqueued/resolved) at each kill round: ${atKill.join(' ')}`);
  assert.ok(pendingAtSomeKill, 'the storm hit while invocations were in flight');
  t.diagnostic(`${rounds} rounds of pg_terminate_backend killed ${kills} connections; client retried ${clientRetries} invocations`);
  assert.ok(kills >= rounds, `the storm terminated connections (${kills} in ${rounds} rounds)`);

  await within(Promise.all(handles.map((h) => h.result())), 40_000, 'all 200 results after the storm');
  t.diagnostic(`all 200 resolved ${Math.round(performance.now() - started)} ms after the stream began`);
  const states = await sql`select state, count(*)::int as n from durably.promises where id like ${`${prefix}%`} group by 1`;
  assert.deepEqual([...states].map((r) => [r.state, r.n]), [['resolved', 200]], 'every invocation resolved');
  const effects = await effectsOf(prefix);
  assert.deepEqual(new Set(effects.map((e) => e.invocation_id)), new Set(ids), 'every effect recorded');
  const executions = await executionsOf(prefix);
  const perId = new Map<string, number>();
  for (const e of executions) perId.set(e.invocation_id, (perId.get(e.invocation_id) ?? 0) + 1);
  const rerun = [...perId].filter(([, n]) => n > 1).map(([id]) => {
    const runs = executions.filter((e) => e.invocation_id === id);
    // worker@attempt+ms after the previous run started
    return runs.map((r, i) => `${r.worker_name}@${r.attempt}${i ? `+${r.started_at.getTime() - runs[i - 1].started_at.getTime()}ms` : ''}`).join(' ');
  });
  t.diagnostic(`${executions.length} executions for 200 invocations; ${rerun.length} re-run: ${rerun.slice(0, 10).join('; ')}`);
  assert.ok(ids.every((id) => (perId.get(id) ?? 0) >= 1), 'every invocation executed');
  const [{ n: tasksLeft }] = await sql<{ n: number }[]>`select count(*)::int as n from durably.tasks where promise_id like ${`${prefix}%`}`;
  assert.equal(tasksLeft, 0);

  assert.equal(fatal(children), '', 'the workers survived the storm');
  const errors = children.map((ch) => ch.stderr).join('\n');
  const kinds = new Set(errors.split('\n').filter(Boolean).map((l) => l.replace(/^\[[^\]]*\] /, '').replace(/\d+/g, 'N')));
  t.diagnostic(`worker logs during the storm: ${errors.split('\n').filter(Boolean).length} lines; kinds: ${[...kinds].slice(0, 10).join(' | ')}`);

  // the pools recovered: no hanging connection, new work runs promptly on both workers
  const after = uid('after');
  const more = await Promise.all(Array.from({ length: 20 }, (_, i) => begin(`${after}-${i}`)));
  await within(Promise.all(more.map((h) => h.result())), 10_000, 'work after the storm');
  assert.equal(fatal(children), '');
});

test('a client awaiting result() survives its connections being terminated', async (t) => {
  const group = uid('survive');
  const [worker] = [await spawnWorker(t, 'survive-w', { GROUP: group, POLL_MS: '200' })];
  const clientGroup = uid('waiter');
  // a long poll: only the listener (and its reconnection) can deliver the result in time
  const c = client(t, { group: clientGroup, pollMs: 60_000 });
  const id = uid('survive');
  const h = await c.beginRpc<{ worker: string }>(id, 'work', id, 3000, c.options({ target: group }));
  let settled = false;
  const result = h.result().finally(() => { settled = true; });
  result.catch(() => {});

  const listenerPid = async () => {
    const [row] = await db.admin<{ pid: number }[]>`
      select pid from pg_stat_activity where datname = ${dbName} and application_name = ${`durably:${clientGroup}`}
         and query ilike 'listen%'`;
    return row?.pid;
  };
  const pids: number[] = [];
  for (let round = 0; round < 2; round++) {
    const pid = await waitFor(async () => {
      const p = await listenerPid();
      return p && !pids.includes(p) ? p : undefined;
    }, { timeoutMs: 10_000, what: `the client's listener connection (round ${round + 1})` });
    pids.push(pid);
    const killed = await terminate(`durably:${clientGroup}`);
    assert.ok(killed >= 1, 'the client\'s connections were terminated');
    assert.equal(settled, false, 'terminated while the function still runs');
    await delay(300);
  }
  const value = await within(result, 10_000, 'the result after the client lost its connections');
  assert.equal(value.worker, worker.name);
  await waitFor(async () => {
    const p = await listenerPid();
    return p && !pids.includes(p);
  }, { timeoutMs: 10_000, what: 'the listener to reconnect' });
  assert.equal(fatal([worker]), '');
});

// A known postgres.js 3.4.9 bug (porsager/postgres#1119, #1181, fix proposed in #1120), reproduced here with
// durably's pool settings. A connection terminated while a result streams keeps per-connection state across its
// reconnect: the next query fails with the killed query's stale 57P01 error, and the one after resolves with a
// sparse array (length = stale row count + real rows, leading holes). In durably that makes `const [row] = ...`
// undefined (a spurious NotFoundError from get()), and `for (const row of rows)` in Settlements.deliver throw a
// TypeError inside a .then: an unhandled rejection that ends the process. Marked todo until postgres.js is fixed
// or patched: it runs and reports, without failing the suite.
test('postgres.js: a connection terminated mid-result does not leak into the next queries on its pool', {
  todo: 'postgres.js 3.4.9 keeps errorResponse and the rows counter across a reconnect (porsager/postgres#1119, #1181)',
}, async () => {
  const pool = connect(db.url, { max: 1, name: 'durably:mid-result-probe' });
  const outcome = (q: PromiseLike<readonly unknown[]>) => Promise.resolve(q).then(
    (r) => `ok: length ${r.length}, defined ${r.filter(() => true).length}`,
    (e: { code?: string; message?: string }) => `error ${e.code}: ${e.message}`);
  try {
    await assert.rejects(pool`
      select i, case when i = 3000 then pg_terminate_backend(pg_backend_pid()) end from generate_series(1, 5000) i`);
    const next = await outcome(pool`select x from generate_series(1, 3) x`);
    const then = await outcome(pool`select x from generate_series(1, 3) x`);
    assert.deepEqual({ next, then }, { next: 'ok: length 3, defined 3', then: 'ok: length 3, defined 3' });
  } finally {
    await pool.end({ timeout: 1 });
  }
});
