/**
 * A worker of either system running the no-op function `noop`, counting runs
 * per invocation id (exactly-once check). Used in the bench process, or in a
 * child process (bench/child.ts) with --worker-process.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Runner } from 'graphile-worker';
import type { Durably } from '../../src/durably.js';
import { RunCounter } from './stats.js';
import { makeDurably, startGraphile, warmDurably, type DurablySetup, type SystemName } from './systems.js';

export interface DrainCheck { duplicates: number; missing: number; ok: boolean; ran: number }

export interface Drainer {
  /** Starts claiming. */
  start(): Promise<void>;
  /** Resolves true once `n` handler runs happened (false after timeoutMs). */
  reach(n: number, timeoutMs: number): Promise<boolean>;
  /**
   * graphile-worker: the job ids of the runs, in run order (durably's runs
   * are found by sequence number instead). In-process drainers only.
   */
  jobIds(): string[];
  /** Stops the worker (in-flight work finishes or is released); exactly-once check of `expected` ids. */
  stop(expected: string[] | null): Promise<DrainCheck>;
}

export async function localDrainer(system: SystemName, url: string, concurrency: number, setup: DurablySetup = 'tuned'): Promise<Drainer> {
  const counter = new RunCounter();
  const jobIds: string[] = [];
  let d: Durably | undefined;
  let runner: Runner | undefined;
  if (system === 'durably') {
    d = makeDurably(url, concurrency, { noop: async (ctx) => { counter.hit(ctx.id); return null; } }, setup);
    await warmDurably(d);
  }
  return {
    async start() {
      if (d) await d.start();
      else runner = await startGraphile(url, concurrency, { noop: async (payload: any, helpers) => { counter.hit(payload.id); jobIds.push(helpers.job.id); } });
    },
    reach: (n, timeoutMs) => counter.reach(n, timeoutMs),
    jobIds: () => jobIds.slice(),
    async stop(expected) {
      if (d) await d.stop();
      if (runner) await runner.stop();
      const check = expected ? counter.check(expected) : { duplicates: [...counter.counts.values()].filter((c) => c > 1).length, missing: 0, ok: true };
      return { ...check, ok: check.ok && (expected ? true : check.duplicates === 0), ran: counter.total };
    },
  };
}

/** The same, in a child process (tsx bench/child.ts), driven over IPC. */
export async function childDrainer(system: SystemName, url: string, concurrency: number, setup: DurablySetup = 'tuned'): Promise<Drainer> {
  const child: ChildProcess = fork(fileURLToPath(new URL('../child.ts', import.meta.url)), [JSON.stringify({ system, url, concurrency, setup })], {
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const waiting = new Map<string, (msg: any) => void>();
  let ran = 0;
  const reachWaiters: { n: number; ok: (v: boolean) => void }[] = [];
  child.on('message', (msg: any) => {
    if (msg.type === 'progress') {
      ran = msg.ran;
      for (const w of reachWaiters.splice(0)) (ran >= w.n ? w.ok(true) : reachWaiters.push(w));
      return;
    }
    waiting.get(msg.type)?.(msg);
    waiting.delete(msg.type);
  });
  const expect = (type: string) => new Promise<any>((ok, fail) => {
    waiting.set(type, ok);
    child.once('exit', (code) => fail(new Error(`bench child exited (${code}) before ${type}`)));
  });
  await expect('ready');
  return {
    async start() {
      const started = expect('started');
      child.send({ type: 'start' });
      await started;
    },
    reach(n, timeoutMs) {
      if (ran >= n) return Promise.resolve(true);
      child.send({ type: 'notify-at', n });
      return new Promise((ok) => {
        const t = setTimeout(() => ok(false), timeoutMs);
        reachWaiters.push({ n, ok: (v) => { clearTimeout(t); ok(v); } });
      });
    },
    jobIds() {
      throw new Error('jobIds: not available for a worker in a child process');
    },
    async stop(expected) {
      const stopped = expect('stopped');
      child.send({ type: 'stop', expected });
      const msg = await stopped;
      await new Promise((ok) => (child.exitCode !== null ? ok(null) : child.once('exit', ok)));
      return msg.check as DrainCheck;
    },
  };
}
