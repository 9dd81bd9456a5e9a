/**
 * Metrics: /metrics served by a worker (metricsPort) and durably.metrics(),
 * parsed with a Prometheus text parser; exact counts after known work; the
 * database's gauges and their plans; the OpenTelemetry metrics API.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import parsePrometheusTextFormat, { type MetricFamily, type Sample } from 'parse-prometheus-text-format';
import { metrics as otelMetrics } from '@opentelemetry/api';
import { MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics';
import { Durably, InvalidArgumentError, type Context } from '../src/index.js';
import { Metrics, renderMetrics } from '../src/metrics.js';
import { testDatabase } from './helpers/db.js';
import { within } from './helpers/processes.js';

const db = await testDatabase();
const sql = db.sql;
const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;

function worker(t: TestContext, group: string, config: Partial<ConstructorParameters<typeof Durably>[0]> = {}): Durably {
  const d = new Durably({ url: db.url, group, pollMs: 100, log: () => {}, ...config });
  t.after(() => d.stop());
  return d;
}

async function freePort(): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1');
  await new Promise((ok) => server.once('listening', ok));
  const { port } = server.address() as { port: number };
  await new Promise((ok) => server.close(ok));
  return port;
}

/** The samples of family `name` whose labels include `labels`. */
function samples(families: MetricFamily[], name: string, labels: Record<string, string>): Sample[] {
  const family = families.find((f) => f.name === name);
  assert.ok(family, `no family ${name}`);
  return family.metrics.filter((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v));
}

/** The value of the one counter or gauge sample of `name` with `labels`, 0 when there is none. */
function value(families: MetricFamily[], name: string, labels: Record<string, string>): number {
  const found = samples(families, name, labels);
  assert.ok(found.length <= 1, `${name} ${JSON.stringify(labels)} matches ${found.length} samples`);
  if (found.length === 0) return 0;
  return Number(found[0].value);
}

/**
 * One series of histogram `name` (the one whose labels include `labels`):
 * its buckets, count and sum, 0 counts when there is none. The parser merges
 * the series of a histogram family and keeps count and sum only for a series
 * without labels, so it is given that series alone, its labels but `le` left out.
 */
function histogram(text: string, name: string, labels: Record<string, string>): { buckets: Record<string, string>; count: number; sum: number } {
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  const lines = text.split('\n').filter((l) => l.startsWith(`${name}_`) && wanted.every((w) => l.includes(w)))
    .map((l) => l.replace(/\{([^}]*)\}/, (_, set: string) => {
      const le = /le="[^"]*"/.exec(set);
      return le ? `{${le[0]}}` : '';
    }));
  if (lines.length === 0) return { buckets: {}, count: 0, sum: 0 };
  const [family] = parsePrometheusTextFormat(`# TYPE ${name} histogram\n${lines.join('\n')}\n`);
  assert.equal(family.metrics.length, 1, `one series of ${name} ${JSON.stringify(labels)}`);
  const [series] = family.metrics;
  return { buckets: series.buckets ?? {}, count: Number(series.count), sum: Number(series.sum) };
}

test('counters are exact: after known work on a worker, /metrics says exactly that', async (t) => {
  const group = uid('exact');
  const port = await freePort();
  const d = worker(t, group, { concurrency: 4, metricsPort: port });
  d.register('ok', async (ctx: Context) => ctx.run(async function work() { return 1; }));
  d.register('bad', async () => { throw new Error('always'); }, { retry: { kind: 'never' } });
  d.register('flaky', async (ctx: Context) => {
    if (ctx.attempt === 1) throw new Error('first attempt');
    return 'ok';
  }, { retry: { kind: 'constant', delayMs: 10, maxAttempts: 3 } });
  await d.start();

  const ids = { ok: 20, bad: 3, flaky: 2 };
  const handles = [];
  for (const [func, n] of Object.entries(ids)) {
    for (let i = 0; i < n; i++) handles.push(await d.beginRun(uid(func), func));
  }
  await within(Promise.allSettled(handles.map((h) => h.result())), 15_000, 'every invocation');

  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const text = await res.text();
  const m = parsePrometheusTextFormat(text);
  const started = (func: string) => value(m, 'durably_invocations_started_total', { function: func, group });
  const completed = (func: string, outcome: string) => value(m, 'durably_invocations_completed_total', { function: func, group, outcome });
  assert.deepEqual([started('ok'), started('bad'), started('flaky')], [20, 3, 2]);
  assert.deepEqual([completed('ok', 'resolved'), completed('bad', 'rejected'), completed('flaky', 'resolved')], [20, 3, 2]);
  assert.deepEqual([completed('ok', 'rejected'), completed('flaky', 'rejected')], [0, 0]);
  assert.equal(value(m, 'durably_retries_total', { function: 'flaky', group }), 2);
  assert.equal(value(m, 'durably_retries_total', { function: 'bad', group }), 0);
  const executions = (func: string) => histogram(text, 'durably_execution_duration_seconds', { function: func, group }).count;
  assert.deepEqual([executions('ok'), executions('bad'), executions('flaky')], [20, 3, 4]);
  assert.equal(histogram(text, 'durably_step_duration_seconds', { function: 'work' }).count, 20);
  assert.equal(histogram(text, 'durably_start_delay_seconds', { group }).count, 27);
  assert.equal(value(m, 'durably_lease_expirations_total', { group }), 0);
  const ok = histogram(text, 'durably_execution_duration_seconds', { function: 'ok', group });
  assert.equal(Number(ok.buckets['+Inf']), 20);
  assert.ok(Number(ok.buckets['0.001']) <= Number(ok.buckets['1']), 'buckets are cumulative');
  assert.ok(ok.sum > 0);
  assert.equal(value(m, 'durably_workers', { group, status: 'active' }), 1);

  // durably.metrics() is the same exposition, and other paths are not found.
  const again = parsePrometheusTextFormat(await d.metrics());
  assert.equal(value(again, 'durably_invocations_completed_total', { function: 'ok', group, outcome: 'resolved' }), 20);
  assert.equal((await fetch(`http://127.0.0.1:${port}/other`)).status, 404);
});

test('lease expirations are counted by the database, whatever becomes of the task', async (t) => {
  const group = uid('expiry');
  const [again, later, exhausted] = [uid('again'), uid('later'), uid('exhausted')];
  const policies: Record<string, unknown> = {
    [again]: { kind: 'constant', delayMs: 0 }, // run again at once, by the claim that found it
    [later]: { kind: 'constant', delayMs: 60_000 }, // put back for a minute
    [exhausted]: { kind: 'constant', delayMs: 0, maxAttempts: 1 }, // its last attempt: rejected
  };
  for (const [id, retry] of Object.entries(policies)) {
    await sql`select * from durably.invoke(${id}, 'ok', '[]', ${group}, ${sql.json({ retry } as never)})`;
  }
  // A worker that claims all three and dies.
  const dead = '00000000-0000-0000-0000-00000000de0d';
  await sql`select durably.register_worker(${dead}::uuid, ${group}, 'gone', 0, '{ok}', 200)`;
  const claimed = await sql`select id from durably.claim_tasks(${dead}::uuid, ${group}, 3, 200)`;
  assert.equal(claimed.length, 3);
  await delay(250);

  const d = worker(t, group);
  d.register('ok', async () => 'done');
  await d.start();
  assert.equal(await within((await d.get(again)).result(), 10_000, 'the task run again'), 'done');
  await assert.rejects(within((await d.get(exhausted)).result(), 10_000, 'the exhausted task'), { name: 'LeaseExpiredError' });
  const [task] = await sql`select state, available_at > now() + interval '30 seconds' as put_back from durably.tasks where promise_id = ${later}`;
  assert.deepEqual({ ...task }, { state: 'ready', put_back: true });

  // Counted once each, by any scrape (not only the process that found them).
  const scrape = async () => parsePrometheusTextFormat(await renderMetrics(sql));
  assert.equal(value(await scrape(), 'durably_lease_expirations_total', { group }), 3);
  assert.ok((await renderMetrics(sql)).includes('# TYPE durably_lease_expirations_total counter'));
  const text = await d.metrics();
  const m = parsePrometheusTextFormat(text);
  assert.equal(value(m, 'durably_lease_expirations_total', { group }), 3);
  assert.equal(value(m, 'durably_invocations_started_total', { function: 'ok', group }), 0, 'their first runs were elsewhere');
  assert.equal(value(m, 'durably_invocations_completed_total', { function: 'ok', group, outcome: 'resolved' }), 1);
  const startDelay = histogram(text, 'durably_start_delay_seconds', { group });
  assert.equal(startDelay.count, 1);
  assert.ok(startDelay.sum >= 0 && startDelay.sum < 5, `start delay ${startDelay.sum} s, counted from the lease expiry`);
});

test('gauges from the database: tasks, the oldest ready task, workers and schedule lag', async (t) => {
  const idle = uid('idle');
  const waiting = uid('waiting');
  const d = worker(t, uid('gauges'));
  await sql`select * from durably.invoke_many(array[${uid('a')}, ${uid('b')}], array['f', 'f'], array['[]', '[]']::jsonb[], ${idle},
                                              '{"delay_ms": 60000}')`;
  await sql`select * from durably.invoke(${uid('c')}, 'f', '[]', ${waiting})`;
  const schedule = uid('lagging');
  await d.schedule(schedule, { every: 1000 }, 'f', d.options({ target: idle, catchup: 'latest' }));
  await sql`update durably.schedules set next_run_at = now() - interval '5 seconds' where id = ${schedule}`;
  await delay(100);

  let m = parsePrometheusTextFormat(await d.metrics());
  assert.equal(value(m, 'durably_tasks', { group: idle, state: 'ready' }), 2);
  assert.equal(value(m, 'durably_tasks', { group: waiting, state: 'ready' }), 1);
  assert.equal(value(m, 'durably_oldest_ready_seconds', { group: idle }), 0, 'nothing due yet');
  const oldest = value(m, 'durably_oldest_ready_seconds', { group: waiting });
  assert.ok(oldest >= 0.1 && oldest < 5, `oldest ready ${oldest} s`);
  const overdue = value(m, 'durably_schedule_lag_seconds', { schedule });
  assert.ok(overdue >= 5 && overdue < 10, `an overdue schedule lags by how overdue it is: ${overdue} s`);

  await sql`select * from durably.tick()`;
  m = parsePrometheusTextFormat(await d.metrics());
  const lag = value(m, 'durably_schedule_lag_seconds', { schedule });
  assert.ok(lag >= 0 && lag < 2, `the latest tick was created ${lag} s after its time`);
  assert.equal(value(m, 'durably_workers', { group: d.group, status: 'active' }), 0, 'a client that never started is no worker');
  await d.schedules.delete(schedule);
});

test('metric_samples reads promises only by key: no sequential scan with many retained promises', async () => {
  await sql`insert into durably.promises (id, state, func, args, value, timeout_at, root_id, settled_at)
            select 'retained-' || i, 'resolved', 'f', '[]', '1', now(), 'retained-' || i, now()
              from generate_series(1, 50000) i`;
  await sql`analyze durably.promises`;
  const [{ prosrc }] = await sql`select prosrc from pg_proc where proname = 'metric_samples'`;
  const [{ 'QUERY PLAN': plan }] = await sql.unsafe(`explain (format json) ${prosrc}`);
  const scans: string[] = [];
  const walk = (node: Record<string, any>) => {
    if (node['Relation Name'] === 'promises') scans.push(node['Node Type']);
    for (const child of node.Plans ?? []) walk(child);
  };
  walk(plan[0].Plan);
  assert.ok(scans.length > 0, 'the schedule lag reads promises');
  assert.ok(scans.every((s) => s !== 'Seq Scan'), `promises read by ${scans.join(', ')}`);
});

test('role durably_app may scrape: metric_samples is a public function', async () => {
  const rows = await sql.begin(async (tx) => {
    await tx`set local role durably_app`;
    return tx`select metric from durably.metric_samples()`;
  });
  assert.ok(rows.some((r) => r.metric === 'durably_workers'));
});

test('histogram buckets are cumulative and include their upper bound', () => {
  const m = new Metrics();
  for (const seconds of [0.0005, 0.005, 0.006, 2, 1000]) m.stepEnded('s', seconds);
  const out: string[] = [];
  m.render(out);
  const text = `${out.join('\n')}\n`;
  const h = histogram(text, 'durably_step_duration_seconds', { function: 's' });
  assert.deepEqual([h.buckets['0.001'], h.buckets['0.005'], h.buckets['0.01'], h.buckets['2.5'], h.buckets['300'], h.buckets['+Inf']],
    ['1', '2', '3', '4', '4', '5']);
  assert.equal(h.count, 5);
  assert.ok(Math.abs(h.sum - 1002.0115) < 1e-9);
});

test('invalid metricsPort: a typed error, nothing started', () => {
  assert.throws(() => new Durably({ url: db.url, metricsPort: 70000 }), InvalidArgumentError);
  assert.throws(() => new Durably({ url: db.url, metricsPort: 1.5 }), /invalid metricsPort 1.5/);
});

/** Collects on demand. */
class Reader extends MetricReader {
  protected async onShutdown(): Promise<void> {}
  protected async onForceFlush(): Promise<void> {}
}

test('the same instruments through the OpenTelemetry metrics API', async (t) => {
  const reader = new Reader();
  otelMetrics.setGlobalMeterProvider(new MeterProvider({ readers: [reader] }));
  t.after(() => otelMetrics.disable());
  const group = uid('otel');
  const d = worker(t, group);
  d.register('ok', async () => 1);
  await d.start();
  for (let i = 0; i < 5; i++) await within(d.run(uid('otel'), 'ok'), 10_000, 'an invocation');
  const { resourceMetrics } = await reader.collect();
  const all = resourceMetrics.scopeMetrics.flatMap((s) => s.metrics);
  const completed = all.find((x) => x.descriptor.name === 'durably.invocations.completed');
  assert.ok(completed, `instruments: ${all.map((x) => x.descriptor.name).join(', ')}`);
  const point = completed.dataPoints.find((p) => p.attributes.group === group && p.attributes.outcome === 'resolved');
  assert.equal(point?.value, 5);
  const durations = all.find((x) => x.descriptor.name === 'durably.execution.duration');
  assert.equal(durations?.descriptor.unit, 's');
});
