/**
 * OpenTelemetry traces with the SDK's in-memory span exporter: invocation,
 * execution attempts, steps, child invocations, waits and schedule ticks in
 * one trace, across a worker SIGKILLed mid-execution and the processes that
 * finish its work; no duplicate step spans after a replay; and nothing at all
 * with no SDK registered.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace-base';
import { Durably, type Context } from '../src/index.js';
import { tracingEnabled } from '../src/tracing.js';
import { triggerSchedule } from '../src/dashboard/actions.js';
import { testDatabase } from './helpers/db.js';
import { waitFor } from './helpers/wait.js';
import { spawnChild, within } from './helpers/processes.js';
import { registerTracing, toRecord, type SpanRecord } from './fixtures/spans.js';

const db = await testDatabase();
const sql = db.sql;
await sql`create table step_runs (id serial primary key, step text not null, worker_name text not null)`;

const FIXTURE = fileURLToPath(new URL('./fixtures/traced-worker.ts', import.meta.url));
const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;
const exporter = new InMemorySpanExporter();

function worker(t: TestContext, group: string, config: Partial<ConstructorParameters<typeof Durably>[0]> = {}): Durably {
  const d = new Durably({ url: db.url, group, pollMs: 100, log: () => {}, ...config });
  t.after(() => d.stop());
  return d;
}

/** The spans this process exported so far. */
function spans(): SpanRecord[] {
  return exporter.getFinishedSpans().map((s) => toRecord(s, 'test'));
}

/** The spans this process exported, once one of them matches `found`. */
function spansOnce(found: (s: SpanRecord) => boolean, what: string, timeoutMs?: number): Promise<SpanRecord[]> {
  return waitFor(() => {
    const s = spans();
    return s.some(found) ? s : null;
  }, { what, timeoutMs });
}

function only(all: SpanRecord[], name: string): SpanRecord {
  const found = all.filter((s) => s.name === name);
  assert.equal(found.length, 1, `one span ${name}, found ${found.length}: ${all.map((s) => s.name).join(', ')}`);
  return found[0];
}

test('with no SDK registered, durably makes no spans and stores no trace context', async (t) => {
  assert.equal(tracingEnabled(), false);
  const group = uid('plain');
  const d = worker(t, group);
  d.register('plain', async (ctx: Context) => ctx.run(async function one() { return 1; }));
  await d.start();
  const id = uid('plain');
  assert.equal(await within(d.run(id, 'plain'), 10_000, 'plain'), 1);
  const [{ n }] = await sql`select count(*)::int as n from durably.promises where root_id = ${id} and trace_context is not null`;
  assert.equal(n, 0);
});

test('a workflow is one trace: invocation, attempts before and after a suspension, steps, waits, a child', async (t) => {
  registerTracing(exporter);
  assert.equal(tracingEnabled(), true);
  const group = uid('wf');
  const d = worker(t, group, { inProcessSleepMs: 1000 });
  let flakyRuns = 0;
  d.register('child', async (ctx: Context, n: number) => ctx.run(async function double() { return n * 2; }));
  d.register('wf', async (ctx: Context, x: number) => {
    const a = await ctx.run(async function add_one() { return x + 1; });
    await ctx.run(async function flaky() {
      if (flakyRuns++ === 0) throw new Error('once');
      return 'ok';
    }, d.options({ retry: { kind: 'constant', delayMs: 10, maxAttempts: 3 } }));
    await ctx.sleep(20);
    const approval = await ctx.promise<string>({ id: `${ctx.id}.approval` });
    const approved = await approval.result();
    const doubled = await ctx.rpc<number>('child', a);
    return `${approved} ${doubled}`;
  });
  await d.start();

  const id = uid('wf');
  const tracer = trace.getTracer('test');
  const handle = await tracer.startActiveSpan('client operation', async (span) => {
    try {
      return await d.beginRun(id, 'wf', 1);
    } finally {
      span.end();
    }
  });
  await waitFor(async () => (await sql`select 1 from durably.task_list where promise_id = ${id} and state = 'suspended'`).length > 0,
    { what: 'the workflow to suspend on its approval' });
  await d.promises.resolve(`${id}.approval`, 'yes');
  assert.equal(await within(handle.result(), 10_000, 'the workflow'), 'yes 4');

  const all = await spansOnce((x) => x.name === 'durably.execute wf' && x.attributes['durably.outcome'] === 'resolved',
    'the span of the attempt that resolved');
  const client = only(all, 'client operation');
  const invoke = only(all, 'durably.invoke wf');
  assert.equal(invoke.kind, SpanKind.PRODUCER);
  assert.equal(invoke.parentSpanId, client.spanId);
  const [stored] = await sql`select trace_context from durably.promises where id = ${id}`;
  assert.equal(stored.trace_context.traceparent, `00-${invoke.traceId}-${invoke.spanId}-01`);

  const attempts = all.filter((s) => s.name === 'durably.execute wf');
  for (const a of attempts) {
    assert.equal(a.kind, SpanKind.CONSUMER);
    assert.equal(a.parentSpanId, invoke.spanId, 'every attempt continues the stored context');
    assert.equal(a.attributes['durably.promise_id'], id);
    assert.equal(a.attributes['durably.root_id'], id);
    assert.equal(a.attributes['durably.function'], 'wf');
    assert.equal(a.attributes['durably.group'], group);
    assert.equal(a.attributes['durably.attempt'], 1);
  }
  // Suspended on the approval; then resolved, unless it suspended once more
  // on the child (when the child had not settled by then).
  const outcomes = attempts.map((a) => [a.attributes['durably.outcome'], a.attributes['durably.replayed_steps']]);
  const expected = attempts.length === 2 ? [['suspended', 0], ['resolved', 4]] : [['suspended', 0], ['suspended', 4], ['resolved', 5]];
  assert.deepEqual(outcomes, expected);
  const [suspended, resumed] = attempts;

  // Steps: one span each, however often the function replayed; the flaky step's retry is inside its span.
  assert.equal(only(all, 'durably.step add_one').parentSpanId, suspended.spanId);
  assert.equal(only(all, 'durably.step flaky').parentSpanId, suspended.spanId);
  const sleep = only(all, 'durably.sleep');
  assert.equal(sleep.parentSpanId, suspended.spanId);
  assert.equal(sleep.attributes['durably.suspended'], false);
  const wait = only(all, 'durably.promise');
  assert.equal(wait.parentSpanId, suspended.spanId);
  assert.equal(wait.attributes['durably.promise_id'], `${id}.approval`);
  assert.equal(wait.attributes['durably.suspended'], true);

  const invokeChild = only(all, 'durably.invoke child');
  assert.equal(invokeChild.parentSpanId, resumed.spanId);
  const child = only(all, 'durably.execute child');
  assert.equal(child.parentSpanId, invokeChild.spanId);
  assert.equal(child.attributes['durably.root_id'], id);
  assert.equal(only(all, 'durably.step double').parentSpanId, child.spanId);

  for (const s of all.filter((x) => x.attributes['durably.promise_id']?.toString().startsWith(id))) {
    assert.equal(s.traceId, client.traceId, `${s.name} is in the client's trace`);
  }
});

test('a failing function: each attempt has error status and the exception; the retry replays no step span', async (t) => {
  exporter.reset();
  const group = uid('fail');
  const d = worker(t, group);
  d.register('fails', async (ctx: Context) => {
    await ctx.run(async function before() { return 'stored'; });
    throw new Error('boom');
  }, { retry: { kind: 'constant', delayMs: 10, maxAttempts: 2 } });
  await d.start();
  const id = uid('fails');
  await assert.rejects(within(d.run(id, 'fails'), 10_000, 'the failing function'), /boom/);
  const all = await waitFor(() => {
    const s = spans().filter((x) => x.name === 'durably.execute fails');
    return s.length === 2 ? spans() : null;
  }, { what: 'two attempts' });
  const attempts = all.filter((x) => x.name === 'durably.execute fails');
  assert.deepEqual(attempts.map((a) => [a.attributes['durably.attempt'], a.attributes['durably.outcome'], a.status]),
    [[1, 'retry', SpanStatusCode.ERROR], [2, 'rejected', SpanStatusCode.ERROR]]);
  for (const a of attempts) assert.deepEqual(a.events, ['exception']);
  assert.equal(attempts[1].attributes['durably.replayed_steps'], 1);
  assert.equal(only(all, 'durably.step before').parentSpanId, attempts[0].spanId);
});

test('each tick of a schedule is a span with the schedule id; its execution continues that trace', async (t) => {
  exporter.reset();
  const group = uid('ticks');
  const d = worker(t, group);
  d.register('ticked', async () => 'tick');
  await d.start();
  const schedule = uid('every');
  await d.schedule(schedule, { every: 300 }, 'ticked', d.options({ target: group }));
  const all = await spansOnce((x) => x.name === 'durably.execute ticked', 'a tick to run', 15_000);
  const execute = all.find((x) => x.name === 'durably.execute ticked')!;
  const invoke = all.find((x) => x.spanId === execute.parentSpanId)!;
  assert.equal(invoke?.name, 'durably.invoke ticked');
  const tick = all.find((x) => x.spanId === invoke.parentSpanId)!;
  assert.equal(tick?.name, `durably.tick ${schedule}`);
  assert.equal(tick.attributes['durably.schedule'], schedule);
  assert.equal(tick.attributes['durably.promise_id'], execute.attributes['durably.promise_id']);
  assert.equal(tick.parentSpanId, undefined, 'a tick starts its own trace');
  await d.schedules.delete(schedule);
});

test('a tick triggered from the dashboard is traced like the others, marked manual', async (t) => {
  exporter.reset();
  const group = uid('manual');
  const d = worker(t, group);
  d.register('by_hand', async () => 'done');
  await d.start();
  const schedule = uid('yearly');
  await d.schedule(schedule, '0 0 1 1 *', 'by_hand', d.options({ target: group }));
  t.after(() => sql`select durably.delete_schedule(${schedule})`);
  const id = await triggerSchedule(sql, schedule);
  const all = await spansOnce((x) => x.name === 'durably.execute by_hand', 'the triggered tick to run', 15_000);
  const execute = only(all, 'durably.execute by_hand');
  assert.equal(execute.attributes['durably.promise_id'], id);
  const invoke = all.find((x) => x.spanId === execute.parentSpanId)!;
  assert.equal(invoke?.name, 'durably.invoke by_hand');
  const tick = all.find((x) => x.spanId === invoke.parentSpanId)!;
  assert.equal(tick?.name, `durably.tick ${schedule}`);
  assert.equal(tick.attributes['durably.trigger'], 'manual');
  assert.equal(tick.attributes['durably.promise_id'], id);
});

test('one trace across processes: a worker SIGKILLed mid-execution, a second that finishes it, a child rpc on a third', async (t) => {
  exporter.reset();
  const file = join(tmpdir(), `durably-spans-${randomBytes(4).toString('hex')}.jsonl`);
  t.after(() => rmSync(file, { force: true }));
  const group = uid('xp');
  const childGroup = uid('xpchild');
  const env = { DATABASE_URL: db.url, GROUP: group, CHILD_GROUP: childGroup, SPANS_FILE: file, LEASE_MS: '1000', POLL_MS: '100' };
  const a = await spawnChild(t, 'worker-a', FIXTURE, { env: { ...env, WORKER_NAME: 'worker-a', HANG: '1' } });
  const client = worker(t, uid('xpclient'));
  const id = uid('xp');
  const handle = await client.beginRpc(id, 'traced_flow', id, client.options({ target: group }));
  await waitFor(async () => (await sql`select 1 from step_runs where step = 'second' and worker_name = 'worker-a'`).length > 0,
    { what: 'worker-a to hang in step second' });
  await a.kill();
  assert.equal((await a.exited).signal, 'SIGKILL');

  await spawnChild(t, 'worker-c', FIXTURE, { env: { ...env, GROUP: childGroup, WORKER_NAME: 'worker-c' } });
  await spawnChild(t, 'worker-b', FIXTURE, { env: { ...env, WORKER_NAME: 'worker-b' } });
  assert.equal(await within(handle.result(), 20_000, 'the flow'), `${id} child done`);

  const read = () => [...spans(), ...readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as SpanRecord)];
  const all = await waitFor(() => {
    const s = read();
    return s.some((x) => x.name === 'durably.execute traced_flow' && x.attributes['durably.outcome'] === 'resolved') ? s : null;
  }, { what: 'the finishing attempt\'s span' });

  const invoke = only(all, 'durably.invoke traced_flow');
  assert.equal(invoke.process, 'test');
  for (const s of all) assert.equal(s.traceId, invoke.traceId, `${s.name} (${s.process}) is in the invoker's trace`);

  const attempts = all.filter((s) => s.name === 'durably.execute traced_flow');
  assert.ok(attempts.length >= 1);
  for (const x of attempts) {
    assert.equal(x.process, 'worker-b', 'worker-a never ended its attempt');
    assert.equal(x.parentSpanId, invoke.spanId);
    assert.equal(x.attributes['durably.attempt'], 2, 'the lease expiry counted an attempt');
  }
  // Each step once: `first` by worker-a before the kill, `second` by worker-b; worker-a's
  // unfinished `second` was never exported, and the replay made no span for `first`.
  assert.equal(only(all, 'durably.step first').process, 'worker-a');
  assert.equal(only(all, 'durably.step second').process, 'worker-b');
  const runs = await sql`select step, worker_name from step_runs order by id`;
  assert.deepEqual(runs.map((r) => `${r.step}@${r.worker_name}`),
    ['first@worker-a', 'second@worker-a', 'second@worker-b', 'child_step@worker-c']);

  const invokeChild = only(all, 'durably.invoke traced_child');
  assert.equal(invokeChild.process, 'worker-b');
  const child = only(all, 'durably.execute traced_child');
  assert.equal(child.process, 'worker-c');
  assert.equal(child.parentSpanId, invokeChild.spanId);
  assert.equal(only(all, 'durably.step child_step').parentSpanId, child.spanId);
  assert.equal(only(all, 'durably.sleep').process, 'worker-b');
});
