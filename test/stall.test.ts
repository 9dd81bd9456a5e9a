/**
 * A worker stalled past its lease (SIGSTOP, standing in for a long GC pause
 * or a frozen VM) must not go on with the function once it resumes: another
 * worker has taken the function over and checkpointed its steps. Nor may it
 * start a task handed to it while it was stopped, which another worker took.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import { Durably } from '../src/index.js';
import { createWorkerTables, recordedIdle, testDatabase } from './helpers/db.js';
import { waitFor } from './helpers/wait.js';
import { spawnChild } from './helpers/processes.js';

const db = await testDatabase();
const sql = db.sql;
await sql`create table records (id serial primary key, record_id text not null)`;
await sql`create table step_runs (
  id serial primary key, step_id text not null, worker_name text not null, at timestamptz not null default clock_timestamp())`;
await sql`create table completions (id serial primary key, record_id text not null, worker_name text not null)`;
await sql`create table compute_runs (
  id serial primary key, invocation_id text not null, worker_name text not null, attempt integer not null,
  at timestamptz not null default clock_timestamp())`;

await createWorkerTables(sql);

const FIXTURE = fileURLToPath(new URL('./fixtures/steps-worker.ts', import.meta.url));
const WORKER = fileURLToPath(new URL('./fixtures/worker.ts', import.meta.url));

test('defect: a worker stalled past its lease went on with its function — after it resumes it begins no step', async (t) => {
  const group = `stall-${randomBytes(4).toString('hex')}`;
  const env = { DATABASE_URL: db.url, GROUP: group, LEASE_MS: '1500', HEARTBEAT_MS: '500', POLL_MS: '100', BATCH: '1' };
  const workers = await Promise.all(['a', 'b'].map((n) => spawnChild(t, n, FIXTURE, { env: { ...env, WORKER_NAME: n }, ready: /ready \S+/ })));
  const recordId = `record-${randomBytes(4).toString('hex')}`;
  await sql`insert into records (record_id) select ${recordId} from generate_series(1, 100)`;
  const client = new Durably({ url: db.url, group: `client-${group}`, pollMs: 200, log: () => {} });
  t.after(() => client.stop());
  const id = `wf-${randomBytes(4).toString('hex')}`;
  const h = await client.beginRpc<string>(id, 'workflow', recordId, client.options({ target: group }));
  await waitFor(async () => {
    const [{ n }] = await sql<{ n: number }[]>`select count(*)::int as n from step_runs where step_id like ${`${id}.%`}`;
    return n >= 3;
  }, { timeoutMs: 15_000, what: 'three steps on worker a' });
  const [{ worker_name: first }] = await sql<{ worker_name: string }[]>`select worker_name from step_runs order by id limit 1`;
  const a = workers.find((w) => w.name === first)!;

  a.proc.kill('SIGSTOP'); // most likely inside a 300 ms in-process ctx.sleep between two steps
  await delay(4000); // past the lease: b takes the workflow over
  const resumedAt = new Date();
  a.proc.kill('SIGCONT');
  await h.result();
  await delay(1500); // a's next heartbeat has told it the lease is gone

  const afterResume = await sql<{ step_id: string }[]>`
    select step_id from step_runs where worker_name = ${a.name} and at > ${resumedAt} order by id`;
  const reruns = await sql<{ step_id: string; workers: string[] }[]>`
    select step_id, array_agg(worker_name order by id) as workers from step_runs
     where step_id like ${`${id}.%`} group by step_id having count(*) > 1`;
  assert.deepEqual(afterResume.map((r) => r.step_id), [], `a began steps after SIGCONT; re-run steps: ${JSON.stringify(reruns)}`);
});

test('a task handed to a worker while it was stopped, and taken over past its lease, is not run again when it resumes', async (t) => {
  const group = `handed-${randomBytes(4).toString('hex')}`;
  const env = { DATABASE_URL: db.url, GROUP: group, LEASE_MS: '1000', HEARTBEAT_MS: '300', POLL_MS: '100' };
  const first = await spawnChild(t, 'first', WORKER, { env: { ...env, WORKER_NAME: 'first' }, ready: /ready \S+/ });
  const firstId = /ready (\S+)/.exec(first.stdout)![1];
  await recordedIdle(sql, firstId);
  await spawnChild(t, 'second', WORKER, { env: { ...env, WORKER_NAME: 'second' }, ready: /ready \S+/ });

  first.proc.kill('SIGSTOP');
  const id = `handed-${randomBytes(4).toString('hex')}`;
  // handed to the longest idle worker, the stopped one: its notification waits in its socket
  await sql`select durably.invoke(${id}, 'work', ${JSON.stringify([id, 0])}::text::jsonb, ${group})`;
  const [task] = await sql`select worker_id, handed from durably.tasks where promise_id = ${id}`;
  assert.deepEqual({ ...task }, { worker_id: firstId, handed: true });
  await waitFor(async () => (await sql`select 1 from effects where invocation_id = ${id}`).length === 1,
    { timeoutMs: 10_000, what: 'the second worker to take it over once the first one\'s heartbeat is a lease old' });
  first.proc.kill('SIGCONT');
  await delay(1500);
  const runs = await sql<{ worker_name: string }[]>`select worker_name from executions where invocation_id = ${id} order by id`;
  assert.deepEqual(runs.map((r) => r.worker_name), ['second'], 'run once, by the worker that took it over');
  assert.ok(first.alive(), first.stderr);
});
