/**
 * The CLI (`node bin/durably.js ...`) as a child process against a real
 * database, with a worker in this process running what it invokes: every
 * command's --json output, its human table, and the exit codes (0 ok, 1
 * failure, 2 bad input or unknown id).
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Durably, type Context } from '../src/index.js';
import { testDatabase } from './helpers/db.js';
import { databaseUrl } from './helpers/url.js';
import { waitFor } from './helpers/wait.js';
import { runProcess, type RunResult } from './helpers/processes.js';

// The worker of this file stops before the database is dropped: after-hooks run in the order they were added.
let worker: Durably | undefined;
after(() => worker?.stop());
const db = await testDatabase();
const sql = db.sql;
const BIN = fileURLToPath(new URL('../bin/durably.js', import.meta.url));
const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;
const group = uid('cli');

/** Runs the CLI; DATABASE_URL is this file's database unless `env` says otherwise. */
function cli(args: string[], env: Record<string, string | undefined> = {}): Promise<RunResult> {
  return runProcess(process.execPath, [BIN, ...args], { env: { DATABASE_URL: db.url, ...env }, timeoutMs: 30_000 });
}

/** Runs the CLI with --json, expects exit 0, returns the parsed output. */
async function json<T = any>(args: string[]): Promise<T> {
  const r = await cli([...args, '--json']);
  assert.equal(r.code, 0, `durably ${args.join(' ')} exited ${r.code}:\n${r.stderr}`);
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`durably ${args.join(' ')} printed no JSON:\n${r.stdout}`);
  }
}

type BadInput = [args: string[], message: RegExp, env?: Record<string, string | undefined>];

/** Runs the commands at once; expects each to exit 2 with an error message on stderr matching its pattern. */
async function badInputs(cases: BadInput[]): Promise<void> {
  await Promise.all(cases.map(async ([args, message, env]) => {
    const r = await cli(args, env);
    assert.equal(r.code, 2, `durably ${args.join(' ')} should exit 2, exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
    assert.match(r.stderr, new RegExp(`^durably: .*${message.source}`), `durably ${args.join(' ')}: stderr`);
  }));
}

// The worker the invocations run on.
worker = new Durably({ url: db.url, group, pollMs: 100, log: () => {} });
worker.register('sum', async (_ctx: Context, a: number, b: number) => a + b);
worker.register('fail', async () => { throw new Error('it failed'); }, { retry: { kind: 'never' } });
worker.register('parent', async (ctx: Context, n: number) => {
  const doubled = await ctx.run(async function double() { return n * 2; });
  const sum = await ctx.rpc<number>('sum', doubled, 1);
  return { doubled, sum };
});
await worker.start();

test('--help prints the usage (exit 0); no command prints it and exits 2; unknown commands exit 2', async () => {
  const [help, short, none, unknown, unknownSub, unknownOption] = await Promise.all([
    cli(['--help']), cli(['promises', '-h']), cli([]), cli(['frobnicate']), cli(['schedules', 'frobnicate']),
    cli(['promises', 'list', '--frobnicate']),
  ]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /usage: durably <command>/);
  for (const cmd of ['migrate', 'invoke <func>', 'promises get', 'schedules create', 'tasks list', 'workers list', 'tree <id>']) {
    assert.ok(help.stdout.includes(cmd), `the usage mentions ${cmd}`);
  }
  assert.equal(short.code, 0);
  assert.match(short.stdout, /usage:/);
  assert.equal(none.code, 2);
  assert.match(none.stdout, /usage:/);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /unknown command: frobnicate/);
  assert.equal(unknownSub.code, 2);
  assert.match(unknownSub.stderr, /unknown command: schedules frobnicate/);
  assert.equal(unknownOption.code, 2);
  assert.match(unknownOption.stderr, /durably: Unknown option '--frobnicate'/);
});

test('migrate applies every migration to an empty database once; a migrated one is up to date', async (t) => {
  const name = `durably_cli_${randomBytes(4).toString('hex')}`;
  await db.admin.unsafe(`create database ${name}`);
  t.after(() => db.admin.unsafe(`drop database if exists ${name} with (force)`));
  const url = databaseUrl(db.url, name);
  const first = await cli(['migrate', '--json'], { DATABASE_URL: url });
  assert.equal(first.code, 0, first.stderr);
  const { applied } = JSON.parse(first.stdout) as { applied: string[] };
  assert.ok(applied.length >= 4, `applied ${applied}`);
  assert.deepEqual(applied.slice(0, 4), ['0001_engine', '0002_cron', '0003_schedules', '0004_public_api']);
  const human = await cli(['migrate', '--url', url], { DATABASE_URL: undefined });
  assert.equal(human.code, 0, human.stderr);
  assert.match(human.stdout, /\(up to date\)/);
});

test('invoke: runs on a worker of --group, --wait returns the settled promise, the same --id dedups', async () => {
  const x = uid('cli-x');
  const created = await json(['invoke', 'sum', '[1,2]', '--id', x, '--group', group]);
  assert.equal(created.id, x);
  assert.equal(created.func, 'sum');
  assert.deepEqual(created.args, [1, 2]);
  assert.equal(created.kind, 'invoke');
  assert.ok(['pending', 'resolved'].includes(created.state));
  const [row] = await waitFor(async () => {
    const rows = await sql`select state, value from durably.promises where id = ${x} and state <> 'pending'`;
    return rows.length ? rows : undefined;
  }, { timeoutMs: 10_000, what: 'the worker to run the CLI invocation' });
  assert.deepEqual({ ...row }, { state: 'resolved', value: 3 });

  const y = uid('cli-y');
  const bad = uid('cli-bad');
  const [again, waited, failed, table] = await Promise.all([
    json(['invoke', 'sum', '[40,2]', '--id', x, '--group', group]),
    json(['invoke', 'sum', '[40,2]', '--id', y, '--group', `poll://any@${group}`, '--wait']),
    json(['invoke', 'fail', '--id', uid('cli-f'), '--group', group, '--wait']),
    // without --id: a generated one; a non-array JSON value is the single argument; a human table
    cli(['invoke', 'sum', '5', '--group', uid('nobody')]),
    badInputs([
      [['invoke', 'sum', '[1,', '--id', bad], /json-args is not valid JSON/],
      [['invoke', 'sum', '[]', '--id', bad, '--group', 'not a group'], /invalid target "not a group"/],
      [['invoke', 'sum', '[]', '--id', ''], /invalid promise id ''/],
    ]),
  ]);
  assert.deepEqual([again.state, again.value, again.args], ['resolved', 3, [1, 2]], 'the existing promise, nothing new');
  assert.deepEqual([waited.id, waited.state, waited.value], [y, 'resolved', 42]);
  assert.equal(failed.state, 'rejected');
  assert.equal(failed.value.message, 'it failed');
  assert.equal(table.code, 0);
  const [header, line] = table.stdout.trim().split('\n');
  assert.match(header, /^id\s+state\s+kind\s+func\s+args\s+value/);
  assert.match(line, /^sum-\S+\s+pending\s+invoke\s+sum\s+\[5\]/);
  assert.equal((await sql`select count(*)::int as n from durably.promises where id = ${bad}`)[0].n, 0, 'bad input wrote nothing');
});

test('promises get | list | resolve | reject | cancel', async () => {
  const prefix = uid('cli-p');
  for (const id of ['a', 'b', 'c', 'd'].map((s) => `${prefix}-${s}`)) {
    await sql`select durably.create_promise(${id}, 'external', null, p_timeout_ms => 600000, p_tags => '{"via": "test"}')`;
  }
  const got = await json(['promises', 'get', `${prefix}-a`]);
  assert.deepEqual([got.id, got.state, got.kind, got.tags], [`${prefix}-a`, 'pending', 'external', { via: 'test' }]);
  for (const key of ['timeout_at', 'created_at', 'root_id', 'settled_at', 'value']) assert.ok(key in got, `get has ${key}`);

  const missing = uid('missing');
  const [resolved, nullValue, rejected, canceled] = await Promise.all([
    json(['promises', 'resolve', `${prefix}-a`, '{"ok":true}']),
    json(['promises', 'resolve', `${prefix}-d`]),
    json(['promises', 'reject', `${prefix}-b`, 'denied by ops']),
    json(['promises', 'cancel', `${prefix}-c`]),
    badInputs([
      [['promises', 'get', missing], /promise "missing-[0-9a-f]+" not found/],
      [['promises', 'cancel', missing], /not found/],
      [['promises', 'list', '--state', 'done'], /invalid state "done"/],
    ]),
  ]);
  assert.deepEqual([resolved.state, resolved.value], ['resolved', { ok: true }]);
  assert.deepEqual([nullValue.state, nullValue.value], ['resolved', null]);
  assert.equal(rejected.state, 'rejected');
  assert.equal(rejected.value.message, 'denied by ops');
  assert.equal(canceled.state, 'rejected_canceled');

  const [settledAgain, onlyResolved, table] = await Promise.all([
    json(['promises', 'resolve', `${prefix}-b`, '1']),
    json<{ id: string }[]>(['promises', 'list', '--pattern', `${prefix}-*`, '--state', 'resolved']),
    cli(['promises', 'list', '--pattern', `${prefix}-*`]),
    badInputs([[['promises', 'resolve', `${prefix}-b`, '{nope'], /value is not valid JSON/]]),
  ]);
  assert.deepEqual([settledAgain.state, settledAgain.value.message], ['rejected', 'denied by ops'], 'settled promises never change');
  assert.deepEqual(onlyResolved.map((p) => p.id).sort(), [`${prefix}-a`, `${prefix}-d`]);
  const lines = table.stdout.trim().split('\n');
  assert.match(lines[0], /^id\s+state\s+kind/);
  assert.deepEqual(lines.slice(1).map((l) => l.split(/\s+/).slice(0, 2).join(' ')).sort(),
    [`${prefix}-a resolved`, `${prefix}-b rejected`, `${prefix}-c rejected_canceled`, `${prefix}-d resolved`]);
});

test('schedules create | list | get | next | pause | resume | delete', async () => {
  const id = uid('cli-s');
  const created = await json(['schedules', 'create', id, '*/10 * * * *', 'sum', '[1,2]', '--timezone', 'Asia/Kolkata', '--group', 'nightly']);
  assert.deepEqual([created.id, created.cron, created.timezone, created.func, created.args, created.group_name, created.paused],
    [id, '*/10 * * * *', 'Asia/Kolkata', 'sum', [1, 2], 'nightly', false]);
  const [same, list, got, next] = await Promise.all([
    json(['schedules', 'create', id, '*/10 * * * *', 'sum', '[1,2]', '--timezone', 'Asia/Kolkata', '--group', 'nightly']),
    json<{ id: string; cron: string; group: string; paused: boolean }[]>(['schedules', 'list']),
    json(['schedules', 'get', id]),
    json<{ next: string }[]>(['schedules', 'next', id, '3']),
    badInputs([
      [['schedules', 'create', id, '*/5 * * * *', 'sum'], /already exists with another definition/],
      [['schedules', 'create', uid('s'), '61 * * * *', 'sum'], /invalid cron expression "61 \* \* \* \*"/],
      [['schedules', 'create', uid('s'), '* * * * *', 'sum', '--timezone', 'Mars/Olympus_Mons'], /unknown timezone "Mars\/Olympus_Mons"/],
      [['schedules', 'next', id, 'lots'], /invalid count/],
    ]),
  ]);
  assert.equal(same.updated_at, created.updated_at, 're-creating the same definition is a no-op');
  const listed = list.find((s) => s.id === id);
  assert.ok(listed, 'the schedule is listed');
  assert.deepEqual([listed.cron, listed.group, listed.paused], ['*/10 * * * *', 'nightly', false]);
  assert.deepEqual([got.id, got.cron, got.created_at], [id, created.cron, created.created_at]);
  // (the test's worker drives schedules too: a tick may have advanced next_run_at meanwhile)
  assert.ok(new Date(got.next_run_at) >= new Date(created.next_run_at));
  assert.equal(next.length, 3);
  const times = next.map((n) => new Date(n.next).getTime());
  assert.ok(times[0] < times[1] && times[1] < times[2]);
  assert.deepEqual(times.slice(1).map((x, i) => x - times[i]), [600_000, 600_000], 'ten minutes apart');
  assert.equal(new Date(times[0]).getUTCMinutes() % 10, 0, 'Kolkata is UTC+5:30: :00/:10/... there is :30/:40/... in UTC');

  assert.equal((await json(['schedules', 'pause', id])).paused, true);
  assert.equal((await sql`select paused from durably.schedules where id = ${id}`)[0].paused, true);
  assert.equal((await json(['schedules', 'resume', id])).paused, false);
  assert.deepEqual(await json(['schedules', 'delete', id]), { deleted: true });
  const [deletedAgain] = await Promise.all([
    json(['schedules', 'delete', id]),
    badInputs([
      [['schedules', 'get', id], /not found/],
      [['schedules', 'pause', id], /not found/],
    ]),
  ]);
  assert.deepEqual(deletedAgain, { deleted: false }, 'deleting is idempotent');
  assert.equal((await sql`select count(*)::int as n from durably.schedules where func = 'sum' and id <> ${id}`)[0].n, 0,
    'bad input wrote nothing');
});

test('tasks list, workers list and tree <id>', async () => {
  const idle = uid('nobody');
  const waiting = uid('cli-t');
  const root = uid('cli-tree');
  await sql`select * from durably.invoke(${waiting}, 'sum', '[1, 1]', ${idle})`;
  const [tasks, workers, done] = await Promise.all([
    json<{ promise_id: string; group_name: string; state: string; attempt: number; waiting_for_worker: boolean }[]>(['tasks', 'list']),
    json<{ id: string; group_name: string; status: string; functions: string }[]>(['workers', 'list']),

    json(['invoke', 'parent', '[5]', '--id', root, '--group', group, '--wait']),
    badInputs([[['tree', uid('missing')], /not found/]]),
  ]);
  const task = tasks.find((x) => x.promise_id === waiting);
  assert.ok(task, 'the waiting invocation has a task');
  assert.deepEqual([task.group_name, task.state, task.attempt, task.waiting_for_worker], [idle, 'ready', 1, true],
    'no worker of its group registers sum: it waits for one');

  const me = workers.find((w) => w.id === worker!.workerId);
  assert.ok(me, 'this process\'s worker is listed');
  assert.deepEqual([me.group_name, me.status, me.functions], [group, 'active', 'sum, fail, parent']);
  assert.deepEqual(done.value, { doubled: 10, sum: 11 });
  const tree = await json<{ id: string; kind: string; func: string | null; state: string; ms: number }[]>(['tree', root]);
  assert.equal(tree.length, 3, JSON.stringify(tree));
  assert.deepEqual(tree[0], { ...tree[0], id: root, kind: 'invoke', func: 'parent', state: 'resolved' });
  assert.deepEqual(tree.slice(1).map((r) => [r.id.startsWith(`  ${root}.`), r.kind, r.func, r.state]),
    [[true, 'step', 'double', 'resolved'], [true, 'invoke', 'sum', 'resolved']]);
  assert.ok(tree.every((r) => typeof r.ms === 'number' && r.ms >= 0), 'durations in ms');
});

test('a database that cannot be reached exits 1', async () => {
  const r = await cli(['migrate'], { DATABASE_URL: 'postgres://postgres@127.0.0.1:1/nothing' });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /^durably: /);
});
