/**
 * Durable functions across real worker processes (test/fixtures/steps-worker.ts)
 * killed with SIGKILL: a step loop resumes on another worker without re-running
 * checkpointed steps, and a durable sleep ends at its original deadline.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import { Durably } from '../src/index.js';
import { testDatabase } from './helpers/db.js';
import { waitFor } from './helpers/wait.js';
import { spawnChild, within, type Child } from './helpers/processes.js';

const db = await testDatabase();
const sql = db.sql;
await sql`create table records (id serial primary key, record_id text not null)`;
await sql`create table step_runs (
  id serial primary key, step_id text not null, worker_name text not null, at timestamptz not null default clock_timestamp())`;
await sql`create table completions (
  id serial primary key, record_id text not null, worker_name text not null)`;
await sql`create table compute_runs (
  id serial primary key, invocation_id text not null, worker_name text not null, attempt integer not null,
  at timestamptz not null default clock_timestamp())`;

const FIXTURE = fileURLToPath(new URL('./fixtures/steps-worker.ts', import.meta.url));
const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;

type Row = Record<string, any>;

interface Worker extends Child {
  workerId: string;
}

/** Starts a worker child and waits for its `ready <id>` line; killed after the test if still running. */
async function spawnWorker(t: TestContext, name: string, env: Record<string, string>): Promise<Worker> {
  const child = await spawnChild(t, name, FIXTURE, { env: { DATABASE_URL: db.url, WORKER_NAME: name, ...env }, ready: /ready (\S+)/ });
  const match = child.stdout.match(/ready (\S+)/)!;
  return Object.assign(child, { workerId: match[1] });
}

async function kill(child: Child): Promise<void> {
  await child.kill();
  assert.equal((await child.exited).signal, 'SIGKILL');
}

function client(t: TestContext): Durably {
  const d = new Durably({ url: db.url, group: uid('client'), pollMs: 200, log: () => {} });
  t.after(() => d.stop());
  return d;
}

function problems(children: Child[]): string {
  return children.filter((c) => /FATAL/.test(c.stderr))
    .map((c) => `--- ${c.name}:\n${c.stderr}`).join('\n');
}

test('seed 004: a batch-deleting workflow resumes on another worker after SIGKILL without re-running checkpointed steps', async (t) => {
  const group = uid('wf');
  const env = {
    GROUP: group, LEASE_MS: '1500', HEARTBEAT_MS: '300', POLL_MS: '100', IN_PROCESS_SLEEP_MS: '5000',
    BATCH: '3', STEP_TAIL_MS: '400',
  };
  const a = await spawnWorker(t, 'wf-a', env);
  const recordId = uid('record');
  await sql`insert into records (record_id) select ${recordId} from generate_series(1, 30)`;
  const c = client(t);
  const id = uid('wf');
  const h = await c.beginRpc<string>(id, 'workflow', recordId, c.options({ target: group }));

  // Let some batches be checkpointed, then kill A while its 4th batch lingers
  // between its committed effect and its checkpoint.
  await waitFor(async () => {
    const [{ n }] = await sql<{ n: number }[]>`select count(*)::int as n from step_runs where step_id like ${`${id}.%`}`;
    return n >= 4;
  }, { timeoutMs: 15_000, what: 'four batches to run on worker A' });
  await kill(a);
  await delay(300); // a statement A sent just before dying has committed by now
  const checkpointed = new Set((await sql<Row[]>`
    select id from durably.promises where parent_id = ${id} and kind = 'step' and state = 'resolved'`).map((r) => r.id as string));
  const ranOnA = (await sql<Row[]>`select step_id from step_runs where step_id like ${`${id}.%`}`).map((r) => r.step_id as string);
  const [{ n: leftAtKill }] = await sql<{ n: number }[]>`select count(*)::int as n from records where record_id = ${recordId}`;
  assert.equal((await sql<Row[]>`select state from durably.promises where id = ${id}`)[0].state, 'pending');
  assert.ok(leftAtKill > 0, 'killed mid-loop: rows were left');
  assert.ok(checkpointed.size >= 3, `a few batches were checkpointed before the kill (${[...checkpointed]})`);
  t.diagnostic(`at the kill: ${ranOnA.length} batches ran on A, ${checkpointed.size} checkpointed, ${leftAtKill} rows left`);

  const b = await spawnWorker(t, 'wf-b', env);
  const result = await within(h.result(), 20_000, 'the workflow to finish on worker B');
  assert.equal(result, `${recordId} completed by wf-b`);

  const [{ n: left }] = await sql<{ n: number }[]>`select count(*)::int as n from records where record_id = ${recordId}`;
  assert.equal(left, 0, 'every row deleted');
  const completions = await sql<Row[]>`select worker_name from completions where record_id = ${recordId}`;
  assert.deepEqual(completions.map((r) => r.worker_name), ['wf-b'], 'the completion step ran exactly once');

  const runs = await sql<Row[]>`
    select step_id, array_agg(worker_name order by id) as workers from step_runs
     where step_id like ${`${id}.%`} group by step_id`;
  const byStep = new Map(runs.map((r) => [r.step_id as string, r.workers as string[]]));
  for (const stepId of checkpointed) {
    assert.deepEqual(byStep.get(stepId), ['wf-a'], `checkpointed step ${stepId} was not executed again`);
  }
  for (const stepId of ranOnA) {
    if (!checkpointed.has(stepId)) {
      assert.deepEqual(byStep.get(stepId), ['wf-a', 'wf-b'], `step ${stepId}, in flight at the kill, ran again on B`);
    }
  }
  const twice = runs.filter((r) => r.workers.length > 1);
  assert.ok(twice.length <= 1, `at most the one in-flight step ran twice: ${JSON.stringify(twice)}`);
  for (const r of runs) {
    if (!ranOnA.includes(r.step_id)) assert.deepEqual(r.workers, ['wf-b'], `step ${r.step_id} ran once, on B`);
  }
  const deleteRuns = runs.reduce((n, r) => n + r.workers.length, 0) - 1;
  assert.equal(deleteRuns, 10, '30 rows in batches of 3: ten deleteBatch executions');
  t.diagnostic(`step runs: ${JSON.stringify(Object.fromEntries(byStep))}`);

  const kids = await sql<Row[]>`select id, kind, func, state from durably.promises where parent_id = ${id}`;
  const last = kids.find((k) => k.func === 'enqueueCompletion');
  assert.equal(last?.state, 'resolved');
  assert.deepEqual(byStep.get(last!.id), ['wf-b']);
  assert.ok(kids.filter((k) => k.kind === 'sleep').length >= 8, 'a durable sleep between the batches');
  assert.equal(problems([b]), '');
  assert.equal(b.alive(), true);
});

test('seed 002: a durable sleep of a SIGKILLed worker ends at its original deadline on the surviving worker', async (t) => {
  const group = uid('sleep');
  const env = { GROUP: group, LEASE_MS: '1500', HEARTBEAT_MS: '300', POLL_MS: '100', IN_PROCESS_SLEEP_MS: '60000' };
  // Both workers run from the start; whichever claims the invocation is A.
  const workers = await Promise.all(['sleep-1', 'sleep-2'].map((n) => spawnWorker(t, n, env)));
  const c = client(t);
  const id = uid('compute');
  const h = await c.beginRpc<{ id: string; worker: string }>(id, 'compute', id, 6000, c.options({ target: group }));
  const [first] = await waitFor(async () => {
    const rows = await sql<Row[]>`select * from compute_runs where invocation_id = ${id}`;
    return rows.length ? rows : undefined;
  }, { timeoutMs: 10_000, what: 'a worker to start compute' });
  const a = workers.find((w) => w.name === first.worker_name)!;
  const b = workers.find((w) => w !== a)!;
  const task = await waitFor(async () => {
    const [row] = await sql<Row[]>`select * from durably.tasks where promise_id = ${id}`;
    return row?.state === 'claimed' ? row : undefined;
  }, { timeoutMs: 5000, what: 'the task to be claimed' });
  assert.equal(task.worker_id, a.workerId, 'A holds the task: it sleeps in process, not suspended');
  const [timer] = await waitFor(async () => {
    const rows = await sql<Row[]>`select * from durably.promises where id = ${`${id}.0`}`;
    return rows.length ? rows : undefined;
  }, { timeoutMs: 5000, what: 'the sleep timer' });
  assert.equal(timer.kind, 'sleep');
  const deadline = (timer.timeout_at as Date).getTime();
  const firstStart = (first.at as Date).getTime();
  assert.ok(Math.abs(deadline - firstStart - 6000) < 1000, `the deadline is 6 s after the first start (${deadline - firstStart} ms)`);

  const [{ now }] = await sql<{ now: Date }[]>`select clock_timestamp() as now`;
  await delay(Math.max(0, firstStart + 2000 - now.getTime()));
  const [{ now: killedAt }] = await sql<{ now: Date }[]>`select clock_timestamp() as now`;
  await kill(a);

  const result = await within(h.result(), 15_000, 'compute to finish on worker B');
  assert.deepEqual(result, { id, worker: b.name });
  const runs = await sql<Row[]>`select worker_name, attempt, at from compute_runs where invocation_id = ${id} order by id`;
  assert.deepEqual(runs.map((r) => [r.worker_name, r.attempt]), [[a.name, 1], [b.name, 2]],
    'started by A, replayed by B after A\'s lease expired');
  const [row] = await sql<Row[]>`select state, settled_at from durably.promises where id = ${id}`;
  assert.equal(row.state, 'resolved');
  const settled = (row.settled_at as Date).getTime();
  const bStart = (runs[1].at as Date).getTime();
  t.diagnostic(`A started at 0, was killed at +${killedAt.getTime() - firstStart} ms, B took over at +${bStart - firstStart} ms, ` +
    `resolved at +${settled - firstStart} ms (deadline +${deadline - firstStart} ms)`);
  assert.ok(bStart - killedAt.getTime() >= 1000, 'B took over only once A\'s lease (1500 ms) ran out');
  assert.ok(settled >= deadline - 100, `not before the deadline (${settled - deadline} ms)`);
  assert.ok(settled <= deadline + 1500 + 1500,
    `at about the original deadline, not 6 s after B took over: ${settled - deadline} ms after the deadline`);
  assert.ok(settled - bStart < 6000 - 1000, `B waited only what remained (${settled - bStart} ms), not a fresh 6 s`);
  assert.equal(problems([b]), '');
});
