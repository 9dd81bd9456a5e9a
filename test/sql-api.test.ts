/**
 * The SQL surface of sql/public_api.sql: role durably_app calls the
 * public functions and reads the views, cannot write the tables or call the
 * worker-side procedures; the public functions are SECURITY DEFINER with a
 * fixed search_path; a worker runs what durably_app enqueued.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Durably, type Context } from '../src/index.js';
import type { TransactionSql } from '../src/db.js';
import { testDatabase } from './helpers/db.js';
import { within } from './helpers/processes.js';

const db = await testDatabase();
const sql = db.sql;
const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;

/** Runs `fn` in a transaction as role durably_app (committed unless it throws). */
function asApp<T>(fn: (tx: TransactionSql) => Promise<T>): Promise<T> {
  return sql.begin(async (tx) => {
    await tx`set local role durably_app`;
    assert.equal((await tx`select current_user as u`)[0].u, 'durably_app');
    return fn(tx as unknown as TransactionSql);
  }) as Promise<T>;
}

async function denied(fn: (tx: TransactionSql) => Promise<unknown>, what: string): Promise<void> {
  await assert.rejects(asApp(fn), (err: { code?: string; message?: string }) => {
    assert.equal(err.code, '42501', `${what}: expected permission denied, got ${err.code} ${err.message}`);
    assert.match(err.message ?? '', /permission denied/);
    return true;
  }, `${what} must be denied`);
}

test('durably_app invokes, reads the views, resolves and cancels through the functions', async () => {
  const id = uid('app');
  const [created] = await asApp((tx) => tx`select * from durably.invoke(${id}, 'f', '[1, 2]', 'g-app', '{"tags": {"via": "sql"}}')`);
  assert.equal(created.created, true);
  assert.equal(created.state, 'pending');
  const [again] = await asApp((tx) => tx`select * from durably.invoke(${id}, 'f', '[3]', 'g-app')`);
  assert.equal(again.created, false, 'the same id dedups');

  const [listed] = await asApp((tx) => tx`select * from durably.promise_list where id = ${id}`);
  assert.equal(listed.state, 'pending');
  assert.equal(listed.func, 'f');
  assert.deepEqual(listed.args, [1, 2]);
  assert.deepEqual(listed.tags, { via: 'sql' });
  assert.equal(listed.group_name, 'g-app');
  assert.equal(listed.task_state, 'ready');
  assert.equal(listed.attempt, 1);
  const [task] = await asApp((tx) => tx`select * from durably.task_list where promise_id = ${id}`);
  assert.equal(task.func, 'f');
  assert.equal(task.group_name, 'g-app');
  assert.equal(task.state, 'ready');

  const [resolved] = await asApp((tx) => tx`select * from durably.resolve(${id}, '{"ok": true}')`);
  assert.equal(resolved.state, 'resolved');
  assert.deepEqual(resolved.value, { ok: true });
  const [after] = await asApp((tx) => tx`select state, task_state from durably.promise_list where id = ${id}`);
  assert.deepEqual({ ...after }, { state: 'resolved', task_state: null }, 'the task is gone once settled');
  assert.equal((await asApp((tx) => tx`select 1 from durably.task_list where promise_id = ${id}`)).length, 0);

  // cancel cascades to a pending child (made as its worker makes it)
  const parent = uid('parent');
  await asApp((tx) => tx`select * from durably.invoke(${parent}, 'f', '[]', 'g-app')`);
  await sql`select * from durably.create_invocations(array[${`${parent}.0`}], '{f}', array['[]'::jsonb], 'g-app',
    ${JSON.stringify({ parent_id: parent })}::text::jsonb)`;
  const [canceled] = await asApp((tx) => tx`select * from durably.cancel(${parent}, 'no longer needed')`);
  assert.equal(canceled.state, 'rejected_canceled');
  const [child] = await asApp((tx) => tx`select state, root_id, value from durably.promise_list where id = ${`${parent}.0`}`);
  assert.equal(child.state, 'rejected_canceled');
  assert.equal(child.root_id, parent);
  assert.equal(child.value.message, 'no longer needed');

  // rejecting and external promises
  const ext = uid('ext');
  const [p] = await asApp((tx) => tx`select * from durably.create_promise(${ext}, 'external', null, p_timeout_ms => 60000)`);
  assert.equal(p.created, true);
  const [rej] = await asApp((tx) => tx`select * from durably.reject(${ext}, '{"name": "Denied", "message": "no"}')`);
  assert.equal(rej.state, 'rejected');
  assert.equal(typeof (await asApp((tx) => tx`select durably.expire_promises() as n`))[0].n, 'number');

  // errors keep their SQLSTATE through SECURITY DEFINER
  await assert.rejects(asApp((tx) => tx`select * from durably.resolve(${uid('missing')}, 'null')`), { code: 'DU003' });
  await assert.rejects(asApp((tx) => tx`select * from durably.invoke('', 'f')`), { code: 'DU001' });
});

test('durably_app manages schedules and ticks', async () => {
  const id = uid('sched');
  const [s] = await asApp((tx) => tx`
    select * from durably.create_schedule(${id}, '*/5 * * * *', 'report', '{"timezone": "Europe/Berlin", "args": ["eu"], "group": "g-app"}')`);
  assert.equal(s.id, id);
  assert.ok(s.next_run_at instanceof Date);
  const [again] = await asApp((tx) => tx`
    select * from durably.create_schedule(${id}, '*/5 * * * *', 'report', '{"timezone": "Europe/Berlin", "args": ["eu"], "group": "g-app"}')`);
  assert.equal(again.updated_at.getTime(), s.updated_at.getTime(), 'the same definition is a no-op');

  const [listed] = await asApp((tx) => tx`select * from durably.schedule_list where id = ${id}`);
  assert.equal(listed.cron, '*/5 * * * *');
  assert.equal(listed.timezone, 'Europe/Berlin');
  assert.deepEqual(listed.args, ['eu']);
  assert.equal(listed.paused, false);
  assert.equal(listed.last_state, null);

  const preview = await asApp((tx) => tx`select t from durably.schedule_preview(${id}, 3) t`);
  assert.equal(preview.length, 3);
  for (const { t } of preview) assert.equal((t as Date).getUTCMinutes() % 5, 0);
  const [paused] = await asApp((tx) => tx`select * from durably.pause_schedule(${id})`);
  assert.equal(paused.paused, true);
  const [resumed] = await asApp((tx) => tx`select * from durably.resume_schedule(${id})`);
  assert.equal(resumed.paused, false);
  const [{ next }] = await asApp((tx) => tx`select durably.cron_next('0 9 * * MON', '2026-01-01T00:00:00Z', 'UTC') as next`);
  assert.equal((next as Date).toISOString(), '2026-01-05T09:00:00.000Z');
  const n = await asApp((tx) => tx`select * from durably.cron_next_n('@hourly', '2026-01-01T00:30:00Z', 'UTC', 2)`);
  assert.equal(n.length, 2);
  const [ticked] = await asApp((tx) => tx`select * from durably.tick()`);
  assert.equal(typeof ticked.created, 'number');
  await assert.rejects(asApp((tx) => tx`select * from durably.create_schedule(${uid('bad')}, '61 * * * *', 'f')`), { code: 'DU002' });
  const [{ deleted }] = await asApp((tx) => tx`select durably.delete_schedule(${id}) as deleted`);
  assert.equal(deleted, true);
  assert.equal((await asApp((tx) => tx`select 1 from durably.schedule_list where id = ${id}`)).length, 0);
  await asApp((tx) => tx`select * from durably.worker_status`);
});

test('durably_app cannot write the tables or call the worker-side procedures', async () => {
  const id = uid('victim');
  await sql`select * from durably.invoke(${id}, 'f', '[]', 'g-deny')`;
  await sql`select * from durably.create_schedule(${id}, '* * * * *', 'f')`;

  await denied((tx) => tx`insert into durably.promises (id, timeout_at, root_id) values (${uid('x')}, now(), 'x')`, 'insert into promises');
  await denied((tx) => tx`update durably.tasks set attempt = 99 where promise_id = ${id}`, 'update tasks');
  await denied((tx) => tx`delete from durably.schedules where id = ${id}`, 'delete from schedules');
  await denied((tx) => tx`delete from durably.tasks`, 'delete from tasks');
  await denied((tx) => tx`insert into durably.callbacks values ('a', 'b')`, 'insert into callbacks');
  await denied((tx) => tx`select * from durably.promises`, 'select from promises (the views are the read path)');
  await denied((tx) => tx`select * from durably.settle(${id}, 'resolved')`, 'settle');
  await denied((tx) => tx`select * from durably.claim_tasks(gen_random_uuid(), 'g-deny', 10, 1000)`, 'claim_tasks');
  await denied((tx) => tx`select durably.release_tasks(gen_random_uuid())`, 'release_tasks');
  await denied((tx) => tx`select durably.grant_public_api()`, 'grant_public_api');
  // views are read-only for the role too (worker_status is a simple, auto-updatable view)
  await denied((tx) => tx`delete from durably.worker_status`, 'delete from worker_status');
  const [privs] = await sql`
    select bool_or(has_table_privilege('durably_app', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')) as writes,
           bool_and(has_table_privilege('durably_app', c.oid, 'SELECT')
                    = (c.relname in ('promise_list', 'task_list', 'schedule_list', 'worker_status', 'limit_list'))) as reads
      from pg_class c where c.relnamespace = 'durably'::regnamespace and c.relkind in ('r', 'v', 'p')`;
  assert.deepEqual({ ...privs }, { writes: false, reads: true }, 'durably_app reads the views only and writes nothing');

  // nothing changed
  const [row] = await sql`select p.state, t.attempt from durably.promises p join durably.tasks t on t.promise_id = p.id where p.id = ${id}`;
  assert.deepEqual({ ...row }, { state: 'pending', attempt: 1 });
  assert.equal((await sql`select 1 from durably.schedules where id = ${id}`).length, 1);
});

test('public functions run as their owner with a fixed search_path; none is executable by PUBLIC', async () => {
  const rows = await sql<{ proname: string; prosecdef: boolean; proconfig: string[] | null; public_exec: boolean; app_exec: boolean }[]>`
    select p.proname, p.prosecdef, p.proconfig,
           exists (select 1 from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                    where a.grantee = 0 and a.privilege_type = 'EXECUTE') as public_exec,
           has_function_privilege('durably_app', p.oid, 'EXECUTE') as app_exec
      from pg_proc p where p.pronamespace = 'durably'::regnamespace`;
  const expected = ['invoke', 'invoke_many', 'resolve', 'reject', 'cancel', 'create_schedule', 'delete_schedule',
    'pause_schedule', 'resume_schedule', 'schedule_preview', 'tick', 'cron_next', 'cron_next_n', 'create_promise'];
  for (const name of expected) assert.ok(rows.some((r) => r.proname === name), `function ${name} exists`);
  for (const r of rows) {
    assert.equal(r.public_exec, false, `${r.proname} is not executable by PUBLIC`);
    if (r.app_exec) {
      assert.equal(r.prosecdef, true, `${r.proname} (callable by durably_app) is SECURITY DEFINER`);
      assert.ok(r.proconfig?.includes('search_path=pg_catalog, pg_temp'), `${r.proname} has a fixed search_path: ${r.proconfig}`);
      // besides, at most the planner settings of the hot path
      assert.deepEqual((r.proconfig ?? []).filter((c) => !c.startsWith('search_path=')).filter((c) => !['enable_seqscan=off', 'jit=off', 'plan_cache_mode=force_generic_plan'].includes(c)), [],
        `${r.proname}: ${r.proconfig}`);
    }
  }
  for (const name of expected) assert.ok(rows.find((r) => r.proname === name)!.app_exec, `durably_app may call ${name}`);
  for (const name of ['settle', 'settle_many', 'claim_tasks', 'settle_and_claim', 'heartbeat', 'retry_task', 'suspend_task', 'release_tasks', 'register_worker']) {
    assert.equal(rows.find((r) => r.proname === name)!.app_exec, false, `durably_app may not call ${name}`);
  }

  // a caller's search_path cannot redirect a public function: a temp table
  // shadowing nothing, and a search_path with a schema of the caller's first
  await sql.begin(async (tx) => {
    await tx`create schema if not exists hijack`;
    await tx`create function hijack.jsonb_typeof(jsonb) returns text language sql as $$ select 'array' $$`;
    await tx`grant usage on schema hijack to durably_app`;
    await tx`set local role durably_app`;
    await tx`set local search_path = hijack, pg_catalog`;
    await assert.rejects(tx`select * from durably.invoke(${uid('h')}, 'f', '{"not": "an array"}')`.then(() => null),
      { code: 'DU002' }, 'the function validates with pg_catalog.jsonb_typeof, not the caller\'s');
    throw Object.assign(new Error('rollback'), { rollback: true });
  }).catch((e) => { if (!(e as { rollback?: boolean }).rollback) throw e; });

  // re-applying the grants is idempotent
  await sql`select durably.grant_public_api()`;
  await sql`select durably.grant_public_api()`;
});

test('a worker runs what durably_app enqueued; durably_app watches it through the views', async (t) => {
  const group = uid('g');
  const worker = new Durably({ url: db.url, group, pollMs: 100, log: () => {} });
  worker.register('add', async (_ctx: Context, a: number, b: number) => a + b);
  await worker.start();
  t.after(() => worker.stop());

  const id = uid('sum');
  await asApp((tx) => tx`select * from durably.invoke(${id}, 'add', '[2, 40]', ${group})`);
  assert.equal(await within(worker.get<number>(id).then((h) => h.result()), 10_000, 'the worker to run add'), 42);
  const [row] = await asApp((tx) => tx`select state, value, task_state from durably.promise_list where id = ${id}`);
  assert.deepEqual({ ...row }, { state: 'resolved', value: 42, task_state: null });
  const workers = await asApp((tx) => tx`select id, status, functions from durably.worker_status where group_name = ${group}`);
  assert.equal(workers.length, 1);
  assert.equal(workers[0].status, 'active');
  assert.deepEqual(workers[0].functions, ['add']);
});
