/**
 * Step checkpoints written together: the steps that executions of one worker
 * finish at the same moment are stored by one statement (counted with
 * pg_stat_user_functions), a checkpoint the database refuses fails only
 * the execution it belongs to, and settlements carried by a checkpoint write
 * leave the worker's own settlement flushes working.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Durably, options, type Context, type DurablyConfig } from '../src/index.js';
import { SettlementBatch } from '../src/settlement-batch.js';
import { functionCalls, testDatabase, trackFunctionCalls } from './helpers/db.js';
import { within } from './helpers/processes.js';

const db = await testDatabase();
const sql = db.sql;
const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;

await trackFunctionCalls(sql);

function durably(t: { after(fn: () => Promise<void>): void }, config: DurablyConfig = {}): Durably {
  const d = new Durably({ url: db.url, group: uid('g'), pollMs: 100, leaseMs: 5000, graceMs: 200, log: () => {}, ...config });
  t.after(() => d.stop());
  return d;
}

/** Calls of the functions that write step checkpoints, as counted by the backends that have exited. */
function checkpointCalls(): Promise<number> {
  return functionCalls(sql, ['create_child_promise', 'create_steps']);
}

const N = 10;
const STEPS = 5;

test('the steps that N executions finish together are written by fewer statements than steps', async (t) => {
  const d = durably(t, { concurrency: N });
  d.register('workflow', async (ctx: Context) => {
    let sum = 0;
    for (let k = 0; k < STEPS; k++) sum += await ctx.run(async function add() { return k; });
    return sum;
  });
  const before = await checkpointCalls();
  const handles = await Promise.all(Array.from({ length: N }, () => d.beginRun(uid('wf'), 'workflow')));
  await d.start();
  const results = await within(Promise.all(handles.map((h) => h.result())), 10_000, 'the workflows');
  assert.deepEqual(results, Array(N).fill((STEPS * (STEPS - 1)) / 2));
  // Backends report their counts as they exit: every one of the worker's has, once none is left and the sum holds still.
  await d.stop();
  const calls = await within((async () => {
    let last = -1;
    for (;;) {
      await new Promise((ok) => setTimeout(ok, 200));
      const [{ left }] = await sql<{ left: number }[]>`
        select count(*)::int as left from pg_stat_activity where datname = current_database() and application_name like 'durably%'`;
      await sql`select pg_stat_clear_snapshot()`;
      const n = await checkpointCalls();
      if (left === 0 && n === last) return n - before;
      last = n;
    }
  })(), 10_000, 'the function counts of the exited backends');
  const [{ stored }] = await sql<{ stored: number }[]>`
    select count(*)::int as stored from durably.promises where kind = 'step' and parent_id = any(${handles.map((h) => h.id)})`;
  assert.equal(stored, N * STEPS, 'every step is stored');
  t.diagnostic(`${N * STEPS} steps of ${N} executions written by ${calls} calls`);
  assert.ok(calls <= (N * STEPS) / 2, `${calls} statements for ${N * STEPS} steps: steps finishing together share one`);
});

test('a checkpoint the database refuses fails its own execution only; the others of its batch are stored', async (t) => {
  const d = durably(t, { concurrency: N });
  const taken = uid('taken');
  await d.promises.create(taken, { timeout: 60_000 });
  // Under the client's limit as JavaScript writes it (1e+21: 300 kB), over it as Postgres prints it
  // (1000000000000000000000, 1000...: 1.2 MB).
  const oversized = Array(50_000).fill(1e21);
  d.register('workflow', async (ctx: Context, kind: 'ok' | 'oversized' | 'taken') => {
    const first = await ctx.run(async function one() { return 1; });
    const second = kind === 'oversized'
      ? (await ctx.run(async function big() { return oversized; })).length
      : await ctx.run(async function two() { return 2; }, ...(kind === 'taken' ? [options({ id: taken })] : []));
    const third = await ctx.run(async function three() { return 3; });
    return first + second + third;
  }, { retry: { kind: 'never' } });
  const kinds = ['ok', 'oversized', 'ok', 'taken', 'ok', 'ok'] as const;
  const handles = await Promise.all(kinds.map((kind) => d.beginRun(uid(kind), 'workflow', kind)));
  await d.start();
  const outcomes = await within(Promise.all(handles.map((h) => h.result().then(
    (value) => ({ value }),
    (err: Error) => ({ error: err.message }),
  ))), 10_000, 'the workflows');
  for (const [i, kind] of kinds.entries()) {
    const outcome = outcomes[i];
    if (kind === 'ok') {
      assert.deepEqual(outcome, { value: 6 }, `execution ${i} (${kind})`);
      const [{ steps }] = await sql<{ steps: number }[]>`
        select count(*)::int as steps from durably.promises where parent_id = ${handles[i].id} and state = 'resolved'`;
      assert.equal(steps, 3);
      continue;
    }
    assert.ok('error' in outcome, `execution ${i} (${kind}) fails`);
    assert.match(outcome.error, kind === 'oversized' ? /could not be stored: .*the limit is 1048576/ : /could not be stored: .*is taken by a promise/);
  }
  const [row] = await sql`select kind, state, parent_id from durably.promises where id = ${taken}`;
  assert.deepEqual({ ...row }, { kind: 'external', state: 'pending', parent_id: null }, 'the promise that held the id is untouched');
});

test('a settlement flush that finds nothing to write (a checkpoint write carried it) leaves later flushes working', async () => {
  const id = uid('s');
  await sql`select * from durably.invoke(${id}, 'f', '[]', 'flush')`;
  const [{ seq }] = await sql<{ seq: number }[]>`select seq from durably.promises where id = ${id}`;
  const written: string[] = [];
  const batch = new SettlementBatch(db.sql, (b) => written.push(...b.map((s) => s.id)), () => {});
  await batch.flush();
  batch.add({ id, seq, state: 'resolved', value: '1' });
  await within(batch.flush(), 5000, 'the second flush');
  const [row] = await sql`select state, value from durably.promises where id = ${id}`;
  assert.deepEqual({ ...row }, { state: 'resolved', value: 1 });
  assert.deepEqual(written, [id]);
});
