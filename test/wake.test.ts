/**
 * Wake-ups: a notification wakes as many idle workers as the work needs
 * (durably.wake_group), not every worker of the group. Real worker processes
 * (test/fixtures/worker.ts); claims are counted by Postgres
 * (pg_stat_user_functions, track_functions = 'all' on the test database).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import { Durably } from '../src/index.js';
import { createWorkerTables, functionCalls, testDatabase, trackFunctionCalls } from './helpers/db.js';
import { waitFor } from './helpers/wait.js';
import { spawnChild, type Child } from './helpers/processes.js';

const db = await testDatabase();
const sql = db.sql;
await trackFunctionCalls(sql);
await createWorkerTables(sql);

const FIXTURE = fileURLToPath(new URL('./fixtures/worker.ts', import.meta.url));
const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;
/**
 * A backend reports its function counts when it goes idle, at most once a
 * second, and otherwise within 10 s (PGSTAT_IDLE_INTERVAL).
 */
const STATS_FLUSH_MS = 11_000;

async function invoke(id: string, group: string, ms = 0): Promise<void> {
  await sql`select durably.invoke(${id}, 'work', ${JSON.stringify([id, ms])}::text::jsonb, ${group})`;
}

function claimCalls(): Promise<number> {
  return functionCalls(sql, ['claim_tasks']);
}

async function started(prefix: string): Promise<{ n: number; workers: number; last: Date | null }> {
  const [r] = await sql<{ n: number; workers: number; last: Date | null }[]>`
    select count(*)::int as n, count(distinct worker_name)::int as workers, max(started_at) as last
      from executions where invocation_id like ${`${prefix}%`}`;
  return r;
}

/**
 * `n` worker processes of `group`, polling only every 5 minutes: claims come
 * from wake-ups. Started a few at a time: starting takes seconds of CPU each.
 */
async function idleWorkers(t: TestContext, group: string, n: number): Promise<Child[]> {
  const children: Child[] = [];
  while (children.length < n) {
    const batch = Array.from({ length: Math.min(4, n - children.length) }, (_, i) => `w${children.length + i}`);
    children.push(...await Promise.all(batch.map((name) => spawnChild(t, name, FIXTURE, {
      env: { DATABASE_URL: db.url, WORKER_NAME: name, GROUP: group, POLL_MS: '300000', LEASE_MS: '30000' },
      readyTimeoutMs: 120_000,
    }))));
  }
  return children;
}

test('20 idle workers: one invocation costs at most 2 claims; 200 at once all start promptly', { timeout: 300_000 }, async (t) => {
  const group = uid('wake');
  const workers = await idleWorkers(t, group, 20);
  // Every worker made its first claims, found nothing, and reported its counts.
  await delay(STATS_FLUSH_MS);
  const before = await claimCalls();

  const singles = 10;
  for (let i = 0; i < singles; i++) {
    await invoke(`one-${i}`, group);
    await waitFor(async () => (await started(`one-${i}`)).n === 1, { what: `one-${i} to start` });
    await delay(100);
  }
  await delay(STATS_FLUSH_MS);
  const perInvocation = ((await claimCalls()) - before) / singles;
  t.diagnostic(`${perInvocation} claims per invocation with 20 idle workers`);
  assert.ok(perInvocation <= 2, `${perInvocation} claims per invocation with 20 idle workers`);

  // 200 at once: enough workers are woken to start them all without waiting
  // for a poll (minutes away), each taking what it has room for (2 × 10).
  const ids = Array.from({ length: 200 }, (_, i) => `many-${i}`);
  const t0 = Date.now();
  await sql`select durably.invoke_many(${ids}::text[], ${ids.map(() => 'work')}::text[],
    ${ids.map((id) => JSON.stringify([id, 20]))}::text[]::jsonb[], ${group})`;
  const all = await waitFor(async () => { const s = await started('many-'); return s.n === 200 ? s : null; },
    { timeoutMs: 20_000, what: '200 invocations to start' });
  const byWorker = await sql`select worker_name, count(*)::int as n,
      round(extract(epoch from min(started_at)) * 1000 - ${t0})::int as first_ms,
      round(extract(epoch from max(started_at)) * 1000 - ${t0})::int as last_ms
    from executions where invocation_id like 'many-%' group by worker_name order by 3`;
  assert.ok(all.last!.getTime() - t0 < 15_000,
    `the last of 200 started ${all.last!.getTime() - t0} ms after the enqueue: ${JSON.stringify(byWorker)}`);
  assert.ok(all.workers >= 10, `ran on ${all.workers} workers: ${JSON.stringify(byWorker)}`);
  assert.ok(workers.every((w) => w.alive() && !/FATAL/.test(w.stderr)), workers.map((w) => w.stderr).join('\n'));
});

test('wake_group names idle workers that run the function, enough for the work; otherwise wakes the whole group', async (t) => {
  const group = uid('names');
  const [a, b] = [randomUUID(), randomUUID()];
  await sql`select durably.register_worker(${a}::uuid, ${group}, 'h', 1, '{f}', 30000, '{}', true)`;
  await sql`select durably.register_worker(${b}::uuid, ${group}, 'h', 1, '{f,g}', 30000, '{}', true)`;
  // an earlier version's worker (not reading names) is never recorded idle
  await sql`select durably.register_worker(${randomUUID()}::uuid, ${group}, 'h', 1, '{f,g}', 30000)`;
  const claimNone = async () => {
    for (const w of [a, b]) await sql`select * from durably.claim_tasks(${w}::uuid, ${group}, 5, 30000)`;
  };
  const heard: string[] = [];
  const listener = await sql.listen('durably_tasks', (payload) => { if (payload.startsWith(group)) heard.push(payload); });
  t.after(() => listener.unlisten());
  const next = async (what: string) => {
    await waitFor(() => heard.length > 0, { what });
    return heard.shift()!.split('\n');
  };

  await claimNone();
  await sql`select durably.invoke(${uid('f')}, 'f', '[]', ${group})`;
  assert.deepEqual(await next('a wake-up for f'), [group, a], 'the longest idle worker, alone');
  await sql`select durably.invoke(${uid('g')}, 'g', '[]', ${group})`;
  assert.deepEqual(await next('a wake-up for g'), [group, b], 'the idle worker that runs g');
  await sql`select durably.invoke(${uid('g')}, 'g', '[]', ${group})`;
  assert.deepEqual(await next('a wake-up with no idle worker'), [group], 'none idle: the whole group');

  await sql`delete from durably.tasks where group_name = ${group}`;
  await claimNone();
  const ids = Array.from({ length: 8 }, () => uid('f'));
  await sql`select durably.invoke_many(${ids}::text[], ${ids.map(() => 'f')}::text[], ${ids.map(() => '[]')}::text[]::jsonb[], ${group})`;
  assert.deepEqual((await next('a wake-up for 8')).slice(1).sort(), [a, b].sort(), 'two workers with room for 5 each');
  await sql`delete from durably.tasks where group_name = ${group}`;
  await claimNone();
  const more = Array.from({ length: 11 }, () => uid('f'));
  await sql`select durably.invoke_many(${more}::text[], ${more.map(() => 'f')}::text[], ${more.map(() => '[]')}::text[]::jsonb[], ${group})`;
  assert.deepEqual(await next('a wake-up for 11'), [group], 'more than the idle workers have room for: the whole group');
});

test('by default a worker claims ahead about a second of its work: with long functions, at most one task more than it runs', async (t) => {
  const group = uid('ahead');
  const worker = new Durably({ url: db.url, group, concurrency: 2, pollMs: 200, log: () => {} });
  t.after(() => worker.stop());
  worker.register('slow', async () => { await delay(1200); return null; });
  await worker.start();
  const ids = Array.from({ length: 12 }, () => uid('slow'));
  await sql`select durably.invoke_many(${ids}::text[], ${ids.map(() => 'slow')}::text[], ${ids.map(() => '[]')}::text[]::jsonb[], ${group})`;
  const settled = async () => (await sql`select count(*)::int as n from durably.promises where id = any(${ids}) and state <> 'pending'`)[0].n;
  // Once executions have ended the worker knows they take 1.2 s: a second of
  // its work at concurrency 2 is one task (2 × 1000 / 1200, rounded down),
  // so it holds 2 running and 1 claimed ahead (2 × concurrency before).
  await waitFor(async () => (await settled()) >= 6, { timeoutMs: 20_000, what: '6 executions to end' });
  let most = 0;
  for (let i = 0; i < 30; i++) {
    const [{ n }] = await sql`select count(*)::int as n from durably.tasks where worker_id = ${worker.workerId!}::uuid and state = 'claimed'`;
    most = Math.max(most, n);
    await delay(50);
  }
  assert.ok(most <= 3, `${most} tasks held by a worker of concurrency 2 running 1.2 s functions`);
  await waitFor(async () => (await settled()) === 12, { timeoutMs: 20_000, what: 'every execution to end' });
});
