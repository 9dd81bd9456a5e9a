import type { BenchDatabases } from './db.js';

export interface BenchOptions {
  reps: number;
  quick: boolean;
  workerProcess: boolean;
  /** Throughput: invocations enqueued then drained. */
  throughputN: number;
  throughputConcurrency: number[];
  /** Latency: single enqueues, gapMs apart. */
  latencyN: number;
  latencyGapMs: number;
  /** Workflow steps: functions x steps. */
  stepsFunctions: number;
  stepsPerFunction: number;
  /** Loop-shaped workflows: sequential ctx.run steps, and suspending steps. */
  longflowSteps: number;
  longflowSuspends: number;
  /** Resume: ready tasks kept in the group while workflows of it suspend and resume. */
  resumeBacklog: number;
  resumeWorkflows: number;
  /** Backlog: pending sizes, and how many are drained (timed) from each. */
  backlogSizes: number[];
  backlogDrain: number;
  backlogConcurrency: number;
  /** Settled promises retained before a backlog trial (0: none). */
  retainedSettled: number;
  cronEvaluations: number;
  cronTicks: number;
  fanInCallers: number;
  ceilingSeconds: number;
}

export interface BenchContext {
  dbs: BenchDatabases;
  opts: BenchOptions;
  log: (message: string) => void;
}

/** What a workload hands back: printed tables and a JSON-able record. */
export interface WorkloadResult {
  name: string;
  tables: string[];
  data: Record<string, unknown>;
  /** Exactly-once violations seen (0 expected). */
  violations: string[];
}
