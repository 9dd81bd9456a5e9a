/**
 * The two systems under test, started the same way by every workload.
 *
 * durably: a Durably instance of group `bench` (pool concurrency + 2, poll 1 s),
 *   prefetch C + max(2C, 100): as many tasks held, running or claimed ahead,
 *   as graphile-worker holds with its local queue.
 * graphile-worker 0.18 in its best documented configuration:
 *   localQueue: { size: max(2C, 100) }, completeJobBatchDelay: 0,
 *   failJobBatchDelay: 0, pollInterval 1 s (same as durably's pollMs),
 *   maxPoolSize max(10, C + 2) (its documented recommendation), noHandleSignals.
 */
import { Durably } from '../../src/durably.js';
import type { Context } from '../../src/context.js';
import { run, makeWorkerUtils, type Runner, type TaskList, type WorkerUtils } from 'graphile-worker';
import { silentLogger } from './db.js';

export const GROUP = 'bench';
export const POLL_MS = 1000;

export type SystemName = 'durably' | 'graphile';

/** graphile-worker's local queue size. */
export function localQueueSize(concurrency: number): number {
  return Math.max(2 * concurrency, 100);
}

/**
 * durably's prefetch when tuned: as many tasks held as graphile-worker holds
 * at most. Its local queue fetches a batch of localQueueSize only once it is
 * empty, and a job handed to a worker leaves the queue: up to the queue's
 * size waiting, plus the running jobs. durably's prefetch counts both.
 */
export function tunedPrefetch(concurrency: number): number {
  return concurrency + localQueueSize(concurrency);
}

export function graphileOptions(concurrency: number) {
  return {
    concurrency,
    pollInterval: POLL_MS,
    noHandleSignals: true,
    maxPoolSize: Math.max(10, concurrency + 2),
    logger: silentLogger,
    crontab: '',
    preset: {
      worker: {
        localQueue: { size: localQueueSize(concurrency) },
        completeJobBatchDelay: 0,
        failJobBatchDelay: 0,
      },
    },
  };
}

export async function startGraphile(url: string, concurrency: number, taskList: TaskList): Promise<Runner> {
  return run({ connectionString: url, ...graphileOptions(concurrency), taskList });
}

export async function graphileUtils(url: string): Promise<WorkerUtils> {
  return makeWorkerUtils({ connectionString: url, logger: silentLogger });
}

export type DurablyFunctions = Record<string, (ctx: Context, ...args: any[]) => unknown>;

/**
 * How a durably worker is configured: `tuned` claims ahead as many tasks as
 * graphile-worker's local queue holds; `defaults` gives only concurrency
 * (and the bench's poll interval): what `new Durably({ concurrency })` does.
 */
export type DurablySetup = 'tuned' | 'defaults';

/** A durably worker (not started yet when `start` is false). */
export function makeDurably(url: string, concurrency: number, functions: DurablyFunctions = {}, setup: DurablySetup = 'tuned'): Durably {
  const d = new Durably({
    url, group: GROUP, concurrency, pollMs: POLL_MS, prefetch: setup === 'tuned' ? tunedPrefetch(concurrency) : undefined,
    log: (m) => { if (process.env.BENCH_DEBUG) console.error(`[durably] ${m}`); },
  });
  for (const [name, fn] of Object.entries(functions)) d.register(name, fn);
  return d;
}

/** Migration check and a first pooled connection, so a timed start() measures claiming, not setup. */
export async function warmDurably(d: Durably): Promise<void> {
  await d.promises.search('__warmup__', { limit: 1 });
}

/** Count of not-yet-completed work in a durably database (tasks left). */
export async function durablyTasksLeft(d: Durably): Promise<number> {
  const [{ n }] = await d.sql`select count(*)::int as n from durably.tasks`;
  return n as number;
}

export async function graphileJobsLeft(utils: WorkerUtils): Promise<number> {
  return utils.withPgClient(async (c) => Number((await c.query('select count(*)::int as n from graphile_worker._private_jobs')).rows[0].n));
}
