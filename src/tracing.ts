/**
 * OpenTelemetry traces through `@opentelemetry/api` alone: the application
 * registers and configures its SDK. With none registered, nothing here
 * allocates a span: every entry point first asks `tracingEnabled()`.
 *
 * An invocation stores the W3C trace context of its `durably.invoke <function>`
 * producer span (`{ traceparent, tracestate }`, in p_opts.trace and then
 * durably.promises.trace_context). Each execution attempt, in whichever
 * process claims it and after any number of crashes, is a consumer span
 * `durably.execute <function>` whose parent is that stored context; steps,
 * child invocations and waits are its children.
 */
import {
  context, trace, ProxyTracerProvider, ROOT_CONTEXT, SpanKind, SpanStatusCode, createTraceState, isSpanContextValid,
  type Attributes, type Context as TraceContext, type Span, type Tracer,
} from '@opentelemetry/api';
import { textArray, type Sql, type TransactionSql } from './db.js';

export type { TraceContext };

/** A W3C trace context as stored with an invocation. */
export interface TraceCarrier {
  traceparent: string;
  tracestate?: string;
}

/** How an execution attempt ended, as its span and its metrics report it. */
export type ExecutionOutcome = 'resolved' | 'rejected' | 'canceled' | 'timedout' | 'retry' | 'suspended' | 'released';

const NOOP_PROVIDER = new ProxyTracerProvider().getDelegate();
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/** Whether the application registered a tracer provider. */
export function tracingEnabled(): boolean {
  const provider = trace.getTracerProvider() as ProxyTracerProvider;
  // Another copy of the API may hold the global provider: its no-op has another identity.
  const delegate = typeof provider.getDelegate === 'function' ? provider.getDelegate() : provider;
  return delegate !== NOOP_PROVIDER && delegate.constructor?.name !== 'NoopTracerProvider';
}

function tracer(): Tracer {
  return trace.getTracer('durably');
}

/** The carrier of a span's context, to store with an invocation. */
function carrierOf(span: Span): TraceCarrier | undefined {
  const sc = span.spanContext();
  if (!isSpanContextValid(sc)) return undefined;
  const carrier: TraceCarrier = { traceparent: `00-${sc.traceId}-${sc.spanId}-${sc.traceFlags.toString(16).padStart(2, '0')}` };
  const state = sc.traceState?.serialize();
  if (state) carrier.tracestate = state;
  return carrier;
}

/** The context a stored carrier describes (a remote parent), or the root context for none or a malformed one. */
export function contextOf(carrier: unknown): TraceContext {
  const c = carrier as Partial<TraceCarrier> | null | undefined;
  const m = typeof c?.traceparent === 'string' ? TRACEPARENT.exec(c.traceparent) : null;
  if (!m) return ROOT_CONTEXT;
  const sc = {
    traceId: m[1], spanId: m[2], traceFlags: parseInt(m[3], 16), isRemote: true,
    traceState: typeof c?.tracestate === 'string' ? createTraceState(c.tracestate) : undefined,
  };
  return isSpanContextValid(sc) ? trace.setSpanContext(ROOT_CONTEXT, sc) : ROOT_CONTEXT;
}

/** Runs `fn` with `ctx` as the active context (for the application's own spans), or as it is without one. */
export function withContext<T>(ctx: TraceContext | undefined, fn: () => T): T {
  return ctx ? context.with(ctx, fn) : fn();
}

function fail(span: Span, error: unknown): void {
  if (error instanceof Error) span.recordException(error);
  span.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
}

/**
 * Runs `invoke` under a producer span `durably.invoke <func>` (child of
 * `parent`, default the active context) and hands it the carrier to store;
 * with no SDK registered, runs it with none.
 */
export async function traceInvoke<T>(
  func: string, attributes: Attributes, invoke: (carrier: TraceCarrier | undefined) => Promise<T>, parent?: TraceContext,
): Promise<T> {
  if (!tracingEnabled()) return invoke(undefined);
  const span = tracer().startSpan(`durably.invoke ${func}`, { kind: SpanKind.PRODUCER, attributes }, parent ?? context.active());
  try {
    return await invoke(carrierOf(span));
  } catch (err) {
    fail(span, err);
    throw err;
  } finally {
    span.end();
  }
}

/** What the execution span needs of a claimed task. */
export interface TracedTask {
  id: string;
  func: string;
  root_id: string;
  attempt: number;
  trace_context: unknown;
}

/** The span of one execution attempt, and the waits still open in it. */
export class ExecutionSpan {
  /** Stored operations handed back by the replay instead of running again. */
  replayedSteps = 0;
  readonly context: TraceContext;
  private readonly waits = new Set<Span>();

  constructor(private readonly span: Span) {
    this.context = trace.setSpan(ROOT_CONTEXT, span);
  }

  /**
   * Opens a wait span (`durably.sleep`, `durably.promise`) under `parent`:
   * ended by the caller (at `endTime`, default now), or with the execution
   * when it suspends first.
   */
  wait(name: string, parent: TraceContext | undefined, attributes: Attributes): { end(endTime?: Date): void } {
    const span = tracer().startSpan(name, { attributes }, parent ?? this.context);
    this.waits.add(span);
    return {
      end: (endTime) => {
        if (this.waits.delete(span)) span.end(endTime);
      },
    };
  }

  end(outcome: ExecutionOutcome, error?: unknown): void {
    // Waits still open when the execution suspends go on elsewhere: the
    // resumed attempt is the next span of the same trace.
    for (const w of this.waits) {
      w.setAttribute('durably.suspended', outcome === 'suspended');
      w.end();
    }
    this.waits.clear();
    this.span.setAttribute('durably.replayed_steps', this.replayedSteps);
    this.span.setAttribute('durably.outcome', outcome);
    if (outcome === 'rejected' || outcome === 'timedout' || outcome === 'retry') fail(this.span, error ?? outcome);
    this.span.end();
  }
}

/** Starts the consumer span of an execution attempt, child of the invocation's stored context; undefined with no SDK. */
export function startExecution(task: TracedTask, group: string): ExecutionSpan | undefined {
  if (!tracingEnabled()) return undefined;
  const span = tracer().startSpan(`durably.execute ${task.func}`, {
    kind: SpanKind.CONSUMER,
    attributes: {
      'durably.promise_id': task.id,
      'durably.root_id': task.root_id,
      'durably.function': task.func,
      'durably.group': group,
      'durably.attempt': task.attempt,
    },
  }, contextOf(task.trace_context));
  return new ExecutionSpan(span);
}

/** A span around one executed step (not for steps the replay hands back). */
export class StepSpan {
  readonly context: TraceContext;

  constructor(private readonly span: Span) {
    this.context = trace.setSpan(ROOT_CONTEXT, span);
  }

  fail(error: unknown): void {
    fail(this.span, error);
  }

  end(): void {
    this.span.end();
  }
}

/** Starts `durably.step <name>` under `parent` (the execution's or an enclosing step's span); undefined when not traced. */
export function startStep(parent: TraceContext | undefined, id: string, name: string): StepSpan | undefined {
  if (!parent) return undefined;
  return new StepSpan(tracer().startSpan(`durably.step ${name}`, { attributes: { 'durably.promise_id': id } }, parent));
}

interface Tick {
  seq: number;
  id: string;
  func: string;
  schedule: string;
  tick: string;
  trigger: string | null;
}

/**
 * Tick invocations the transaction `tx` created: the one with id `id`, or
 * all (roots created in this transaction, now() being its start, found by the
 * created_at index of roots).
 */
function createdTicks(tx: TransactionSql, id?: string): Promise<Tick[]> {
  return tx<Tick[]>`
    select p.seq, p.id, p.func, p.tags->>'durably:schedule' as schedule, p.tags->>'durably:tick' as tick,
           p.tags->>'durably:trigger' as trigger
      from durably.promises p
     where ${id === undefined ? tx`p.parent_id is null and p.created_at = now()` : tx`p.id = ${id}`}
       and p.tags ? 'durably:schedule' and p.trace_context is null`;
}

/**
 * Gives every tick a span `durably.tick <schedule>` (attribute
 * `durably.schedule`) with its `durably.invoke <function>` span, and stores
 * that context on the tick's invocation, in the transaction that created it:
 * no worker can claim it before.
 */
async function traceTicks(tx: TransactionSql, ticks: Tick[]): Promise<void> {
  if (ticks.length === 0) return;
  const carriers: string[] = [];
  for (const t of ticks) {
    const span = tracer().startSpan(`durably.tick ${t.schedule}`, {
      attributes: {
        'durably.schedule': t.schedule, 'durably.tick': t.tick, 'durably.promise_id': t.id,
        ...(t.trigger ? { 'durably.trigger': t.trigger } : {}),
      },
    }, ROOT_CONTEXT);
    const invoke = tracer().startSpan(`durably.invoke ${t.func}`, {
      kind: SpanKind.PRODUCER, attributes: { 'durably.promise_id': t.id, 'durably.function': t.func },
    }, trace.setSpan(ROOT_CONTEXT, span));
    carriers.push(JSON.stringify(carrierOf(invoke) ?? null));
    invoke.end();
    span.end();
  }
  await tx`
    update durably.promises p set trace_context = c.carrier
      from unnest(${textArray(ticks.map((t) => String(t.seq)))}::text[]::bigint[],
                  ${textArray(carriers)}::text[]::jsonb[]) as c(seq, carrier)
     where p.seq = c.seq`;
}

/** Runs durably.tick(); with an SDK registered, its ticks are traced (traceTicks). */
export async function tick(sql: Sql): Promise<{ created: number; next_run_at: Date | null }[]> {
  if (!tracingEnabled()) return sql<{ created: number; next_run_at: Date | null }[]>`select * from durably.tick()`;
  return sql.begin(async (tx) => {
    const result = await tx<{ created: number; next_run_at: Date | null }[]>`select * from durably.tick()`;
    if (!(result[0]?.created > 0)) return result;
    await traceTicks(tx, await createdTicks(tx));
    return result;
  });
}

/** Creates one tick of schedule `id` now (durably.trigger_schedule), traced like the others; returns its promise id. */
export async function triggerSchedule(sql: Sql, id: string): Promise<string> {
  if (!tracingEnabled()) return (await sql<{ id: string }[]>`select id from durably.trigger_schedule(${id})`)[0].id;
  return sql.begin(async (tx) => {
    const [r] = await tx<{ id: string; created: boolean }[]>`select id, created from durably.trigger_schedule(${id})`;
    if (r.created) await traceTicks(tx, await createdTicks(tx, r.id));
    return r.id;
  });
}
