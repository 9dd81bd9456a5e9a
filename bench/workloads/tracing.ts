/**
 * 8. Tracing cost: the throughput trial (no-op invocations, one worker at
 * concurrency 50) with no OpenTelemetry SDK registered, and with one
 * registered (AsyncLocalStorage context, batch span processor) whose exporter
 * drops the spans; the order alternates between repetitions. The worker runs
 * in the bench process, where the SDK is registered. Besides completed/s, the
 * bench process's CPU time per invocation (enqueue, claim, run, settle):
 * steadier than throughput on a loaded machine.
 */
import { context, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { BasicTracerProvider, BatchSpanProcessor, type ReadableSpan, type SpanExporter } from '@opentelemetry/sdk-trace-base';
import { throughputTrial, type ThroughputTrial } from './throughput.js';
import { fmtSummary, summarize, table } from '../lib/stats.js';
import { processCpuSeconds } from '../lib/cpu.js';
import type { BenchContext, WorkloadResult } from '../lib/context.js';

const CONCURRENCY = 50;
type Variant = 'none' | 'sdk';

/** Counts the spans it is handed and drops them. */
class DroppingExporter implements SpanExporter {
  spans = 0;
  export(spans: ReadableSpan[], done: (result: { code: number }) => void): void {
    this.spans += spans.length;
    done({ code: 0 });
  }
  async shutdown(): Promise<void> {}
}

/** Runs `fn` with an SDK registered; returns its result and how many spans were exported. */
async function withSdk<T>(fn: () => Promise<T>): Promise<{ result: T; spans: number }> {
  const exporter = new DroppingExporter();
  const provider = new BasicTracerProvider({ spanProcessors: [new BatchSpanProcessor(exporter)] });
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  trace.setGlobalTracerProvider(provider);
  try {
    const result = await fn();
    await provider.forceFlush();
    return { result, spans: exporter.spans };
  } finally {
    trace.disable();
    context.disable();
    await provider.shutdown();
  }
}

export async function tracing(ctx: BenchContext): Promise<WorkloadResult> {
  const { opts, log } = ctx;
  const n = opts.throughputN;
  const local = { ...ctx, opts: { ...opts, workerProcess: false } };
  const trials: Record<Variant, ThroughputTrial[]> = { none: [], sdk: [] };
  const cpu: Record<Variant, number[]> = { none: [], sdk: [] };
  const violations: string[] = [];
  for (let rep = 0; rep < opts.reps; rep++) {
    const order: Variant[] = rep % 2 === 0 ? ['none', 'sdk'] : ['sdk', 'none'];
    for (const variant of order) {
      const run = () => throughputTrial(local, 'durably', n, CONCURRENCY, `trace${variant}`);
      const before = processCpuSeconds();
      const { result, spans } = variant === 'sdk' ? await withSdk(run) : { result: await run(), spans: 0 };
      trials[variant].push(result);
      cpu[variant].push(((processCpuSeconds() - before) / n) * 1e6);
      if (result.violation) violations.push(result.violation);
      if (variant === 'sdk' && spans < n) violations.push(`tracing: ${spans} spans exported for ${n} executions`);
      log(`tracing rep ${rep + 1} ${variant}: completed ${result.completedPerSec.toFixed(0)}/s, ${cpu[variant].at(-1)!.toFixed(0)} µs CPU per invocation${variant === 'sdk' ? `, ${spans} spans` : ''}`);
    }
  }
  const none = summarize(trials.none.map((t) => t.completedPerSec));
  const sdk = summarize(trials.sdk.map((t) => t.completedPerSec));
  const ratio = sdk.median / none.median;
  const cpuNone = summarize(cpu.none);
  const cpuSdk = summarize(cpu.sdk);
  return {
    name: 'tracing',
    tables: [table(`8. Tracing cost: ${n.toLocaleString('en-US')} no-op invocations drained at concurrency ${CONCURRENCY}, without and with an OpenTelemetry SDK (spans exported to a no-op exporter) — median (min–max) of ${opts.reps}`,
      ['variant', 'completed /s', 'CPU µs per invocation'],
      [['no SDK registered', fmtSummary(none), fmtSummary(cpuNone)], ['SDK, no-op exporter', fmtSummary(sdk), fmtSummary(cpuSdk)],
        ['ratio SDK ÷ no SDK', `${(ratio * 100).toFixed(0)} %`, `${((cpuSdk.median / cpuNone.median) * 100).toFixed(0)} %`]])],
    data: { n, concurrency: CONCURRENCY, none, sdk, ratio, cpuNone, cpuSdk },
    violations,
  };
}
