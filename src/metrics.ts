/**
 * Metrics: what this process counts (invocations, durations, retries) and
 * what the database knows (tasks, workers, schedule lag, lease expirations:
 * durably.metric_samples()), rendered as the Prometheus text exposition.
 * The counts are also recorded through the OpenTelemetry metrics API when
 * the application registered a meter provider.
 */
import { createServer, type Server } from 'node:http';
import { once } from 'node:events';
import { metrics as otelMetrics, type Counter as OtelCounter, type Histogram as OtelHistogram, type MeterProvider } from '@opentelemetry/api';
import type { Sql } from './db.js';
import type { ExecutionOutcome } from './tracing.js';

/** Seconds: from a millisecond step to a five-minute execution. */
const BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

interface Family {
  name: string;
  help: string;
  labels: readonly string[];
}

/** A counter: one value per combination of label values. */
class CounterFamily implements Family {
  readonly series = new Map<string, { values: string[]; value: number }>();
  constructor(readonly name: string, readonly help: string, readonly labels: readonly string[]) {}

  inc(values: string[]): void {
    const key = seriesKey(values);
    const s = this.series.get(key);
    if (s) s.value++;
    else this.series.set(key, { values, value: 1 });
  }

  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`);
    for (const s of this.series.values()) out.push(`${this.name}${labelSet(this.labels, s.values)} ${s.value}`);
  }
}

/** A histogram with the same buckets for every series; each observation counts in its own bucket, summed up when rendered. */
class HistogramFamily implements Family {
  readonly series = new Map<string, { values: string[]; counts: number[]; sum: number; count: number }>();
  constructor(readonly name: string, readonly help: string, readonly labels: readonly string[]) {}

  observe(values: string[], seconds: number): void {
    const key = seriesKey(values);
    let s = this.series.get(key);
    if (!s) this.series.set(key, s = { values, counts: BUCKETS.map(() => 0), sum: 0, count: 0 });
    let i = 0;
    while (i < BUCKETS.length && seconds > BUCKETS[i]) i++;
    if (i < BUCKETS.length) s.counts[i]++;
    s.sum += seconds;
    s.count++;
  }

  render(out: string[]): void {
    out.push(`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`);
    for (const s of this.series.values()) {
      let cumulative = 0;
      BUCKETS.forEach((le, i) => {
        cumulative += s.counts[i];
        out.push(`${this.name}_bucket${labelSet([...this.labels, 'le'], [...s.values, String(le)])} ${cumulative}`);
      });
      out.push(`${this.name}_bucket${labelSet([...this.labels, 'le'], [...s.values, '+Inf'])} ${s.count}`);
      out.push(`${this.name}_sum${labelSet(this.labels, s.values)} ${s.sum}`);
      out.push(`${this.name}_count${labelSet(this.labels, s.values)} ${s.count}`);
    }
  }
}

function seriesKey(values: string[]): string {
  return values.length === 1 ? values[0] : values.join('\u0000');
}

function labelSet(names: readonly string[], values: readonly string[]): string {
  if (names.length === 0) return '';
  return `{${names.map((n, i) => `${n}="${values[i].replace(/[\\"\n]/g, (c) => (c === '\n' ? '\\n' : `\\${c}`))}"`).join(',')}}`;
}

/** The OpenTelemetry instruments, created on the application's meter provider. */
interface OtelInstruments {
  started: OtelCounter;
  completed: OtelCounter;
  retries: OtelCounter;
  execution: OtelHistogram;
  step: OtelHistogram;
  startDelay: OtelHistogram;
}

/** What the worker counts about a claimed task when its execution starts. */
export interface StartedTask {
  func: string;
  attempt: number;
  history: unknown;
  ready_seconds: number;
}

const COMPLETED: ReadonlySet<ExecutionOutcome> = new Set(['resolved', 'rejected', 'canceled', 'timedout']);

/** The instruments of one Durably instance: what its worker counted. */
export class Metrics {
  private readonly started = new CounterFamily('durably_invocations_started_total',
    'Invocations whose first execution started in this process', ['function', 'group']);
  private readonly completed = new CounterFamily('durably_invocations_completed_total',
    'Invocations that completed in this process, by outcome', ['function', 'group', 'outcome']);
  private readonly execution = new HistogramFamily('durably_execution_duration_seconds',
    'Duration of each execution attempt (until it settled, failed, suspended or was released)', ['function', 'group']);
  private readonly step = new HistogramFamily('durably_step_duration_seconds',
    'Duration of each executed ctx.run step (steps handed back by a replay are not counted)', ['function']);
  private readonly startDelay = new HistogramFamily('durably_start_delay_seconds',
    'From a task becoming runnable (due, woken, or its lease expired) to its execution starting', ['group']);
  private readonly retries = new CounterFamily('durably_retries_total',
    'Failed executions put back for another attempt', ['function', 'group']);
  private otelProvider?: MeterProvider;
  private otel?: OtelInstruments;
  /** When to look for a registered meter provider again (a look costs more than a count). */
  private otelCheckAt = 0;

  /** A task's execution starts: its start delay, a first run. */
  executionStarted(task: StartedTask, group: string): void {
    const otel = this.instruments();
    this.startDelay.observe([group], task.ready_seconds);
    otel?.startDelay.record(task.ready_seconds, { group });
    if (task.attempt === 1 && task.history === null) {
      this.started.inc([task.func, group]);
      otel?.started.add(1, { function: task.func, group });
    }
  }

  /** An execution attempt ended after `seconds`. */
  executionEnded(func: string, group: string, outcome: ExecutionOutcome, seconds: number): void {
    const otel = this.instruments();
    this.execution.observe([func, group], seconds);
    otel?.execution.record(seconds, { function: func, group });
    if (outcome === 'retry') {
      this.retries.inc([func, group]);
      otel?.retries.add(1, { function: func, group });
    } else if (COMPLETED.has(outcome)) {
      this.completed.inc([func, group, outcome]);
      otel?.completed.add(1, { function: func, group, outcome });
    }
  }

  stepEnded(name: string, seconds: number): void {
    this.step.observe([name], seconds);
    this.instruments()?.step.record(seconds, { function: name });
  }

  /** This process's instruments in the text exposition. */
  render(out: string[]): void {
    for (const f of [this.started, this.completed, this.retries]) f.render(out);
    for (const f of [this.execution, this.step, this.startDelay]) f.render(out);
  }

  /** The instruments on the registered meter provider (looked for once a second); none without one. */
  private instruments(): OtelInstruments | undefined {
    const now = Date.now();
    if (now < this.otelCheckAt) return this.otel;
    this.otelCheckAt = now + 1000;
    const provider = otelMetrics.getMeterProvider();
    if (provider.constructor?.name === 'NoopMeterProvider') {
      this.otelProvider = this.otel = undefined;
      return undefined;
    }
    if (provider !== this.otelProvider) {
      const meter = provider.getMeter('durably');
      this.otelProvider = provider;
      this.otel = {
        started: meter.createCounter('durably.invocations.started', { description: this.started.help }),
        completed: meter.createCounter('durably.invocations.completed', { description: this.completed.help }),
        retries: meter.createCounter('durably.retries', { description: this.retries.help }),
        execution: meter.createHistogram('durably.execution.duration', { unit: 's', description: this.execution.help }),
        step: meter.createHistogram('durably.step.duration', { unit: 's', description: this.step.help }),
        startDelay: meter.createHistogram('durably.start_delay', { unit: 's', description: this.startDelay.help }),
      };
    }
    return this.otel;
  }
}

/** What durably.metric_samples() returns, in the order it is rendered: its type and help. */
const DATABASE_METRICS: Record<string, ['gauge' | 'counter', string]> = {
  durably_tasks: ['gauge', 'Tasks (pending invocations) per group and state: ready, claimed, suspended'],
  durably_oldest_ready_seconds: ['gauge', 'How long the longest-waiting runnable task of a group has waited (0: none waits)'],
  durably_workers: ['gauge', 'Workers per group and status: active, stale, stopped'],
  durably_schedule_lag_seconds: ['gauge', 'How late the latest tick of a schedule was created, or how overdue its next tick is'],
  durably_lease_expirations_total: ['counter',
    'Leases found expired by a claim, across all workers, whatever became of the task (run again, retried later, or rejected after its last attempt)'],
};

/**
 * The Prometheus text exposition: the database's gauges and counters, and the instruments
 * of `metrics` (a Durably instance's) when given. What the dashboard serves
 * at /metrics, and what `durably.metrics()` returns.
 */
export async function renderMetrics(sql: Sql, metrics?: Metrics): Promise<string> {
  const rows = await sql<{ metric: string; labels: Record<string, string>; value: number }[]>`
    select metric, labels, value from durably.metric_samples()`;
  const out: string[] = [];
  for (const [name, [type, help]] of Object.entries(DATABASE_METRICS)) {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const r of rows) {
      if (r.metric === name) out.push(`${name}${labelSet(Object.keys(r.labels), Object.values(r.labels))} ${r.value}`);
    }
  }
  metrics?.render(out);
  return `${out.join('\n')}\n`;
}

/** Serves `render()` at http://127.0.0.1:<port>/metrics. */
export async function serveMetrics(port: number, render: () => Promise<string>, onError: (err: Error) => void): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || req.url?.split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: metrics are at /metrics\n');
      return;
    }
    render().then(
      (text) => res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(text),
      (err: Error) => {
        onError(err);
        res.writeHead(503, { 'content-type': 'text/plain' }).end(`metrics unavailable: ${err.message}\n`);
      });
  });
  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
  return server;
}
