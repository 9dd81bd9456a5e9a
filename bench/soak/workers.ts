/**
 * The soak's worker processes: a fixed number of slots, each running one
 * process (an incarnation) at a time, started with test/helpers/processes.ts.
 * Each incarnation connects as application_name `soak-<incarnation>`, appends
 * its events to its own log file, and has its RSS sampled from /proc.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { spawnChild, type Child } from '../../test/helpers/processes.js';

export interface Incarnation {
  /** `w<slot>-<n>`: the n-th process of a slot. */
  name: string;
  slot: number;
  pid: number;
  log: string;
  startedAt: number;
  /** When it ended and how: SIGKILLed by the soak, stopped by SIGTERM, or exited by itself. */
  ended?: { at: number; how: 'killed' | 'stopped' | 'exited'; code: number | null; signal: string | null };
  /** SIGSTOP → SIGCONT intervals. */
  stalls: { from: number; to: number }[];
  rss: { at: number; bytes: number }[];
  child: Child;
}

export interface WorkerEnv {
  url: string;
  logDir: string;
  /** Passed to every process (LEASE_MS, CONCURRENCY, ...). */
  env: Record<string, string>;
}

/** The application_name a process connects with. */
export const appName = (incarnation: string) => `soak-${incarnation}`;

export function withAppName(url: string, name: string): string {
  const u = new URL(url);
  u.searchParams.set('application_name', name);
  return u.toString();
}

export class WorkerPool {
  readonly all: Incarnation[] = [];
  private readonly current = new Map<number, Incarnation>();
  private readonly counts = new Map<number, number>();
  private readonly cleanups: (() => unknown)[] = [];
  /** spawnChild's scope: what a test's `after` would run, run by close(). */
  private readonly scope = { after: (fn: () => unknown) => { this.cleanups.push(fn); } } as unknown as TestContext;
  private stopping = false;

  constructor(private readonly config: WorkerEnv, private readonly onExit: (i: Incarnation) => void) {}

  live(): Incarnation[] {
    return [...this.current.values()];
  }

  async start(slot: number): Promise<Incarnation> {
    const n = (this.counts.get(slot) ?? 0) + 1;
    this.counts.set(slot, n);
    const name = `w${slot}-${n}`;
    const log = join(this.config.logDir, `${name}.log`);
    const child = await spawnChild(this.scope, name, 'bench/soak/worker.ts', {
      env: { ...this.config.env, DATABASE_URL: withAppName(this.config.url, appName(name)), WORKER_NAME: name, SOAK_LOG: log },
      ready: /ready \S+/, readyTimeoutMs: 60_000,
    });
    const inc: Incarnation = { name, slot, pid: child.proc.pid!, log, startedAt: Date.now(), stalls: [], rss: [], child };
    this.all.push(inc);
    this.current.set(slot, inc);
    void child.exited.then(({ code, signal }) => {
      inc.ended ??= { at: Date.now(), how: 'exited', code, signal };
      if (this.current.get(slot) === inc) this.current.delete(slot);
      if (inc.ended.how === 'exited' && !this.stopping) this.onExit(inc);
    });
    return inc;
  }

  async kill(inc: Incarnation): Promise<void> {
    inc.ended = { at: Date.now(), how: 'killed', code: null, signal: 'SIGKILL' };
    await inc.child.kill();
  }

  /** SIGSTOP for `ms`, then SIGCONT. */
  async stall(inc: Incarnation, ms: number): Promise<void> {
    const from = Date.now();
    inc.child.proc.kill('SIGSTOP');
    await new Promise((ok) => setTimeout(ok, ms));
    inc.child.proc.kill('SIGCONT');
    inc.stalls.push({ from, to: Date.now() });
  }

  sampleRss(): void {
    for (const inc of this.live()) {
      try {
        const kb = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${inc.pid}/status`, 'utf8'));
        if (kb) inc.rss.push({ at: Date.now(), bytes: Number(kb[1]) * 1024 });
      } catch { /* it just ended */ }
    }
  }

  /** SIGTERM to every live process; returns those that did not stop cleanly within `ms`. */
  async stopAll(ms: number): Promise<{ name: string; why: string }[]> {
    this.stopping = true;
    const bad: { name: string; why: string }[] = [];
    await Promise.all(this.live().map(async (inc) => {
      inc.child.proc.kill('SIGTERM');
      const timer = new Promise<'late'>((ok) => setTimeout(() => ok('late'), ms).unref());
      const r = await Promise.race([inc.child.exited, timer]);
      inc.ended = { at: Date.now(), how: 'stopped', code: r === 'late' ? null : r.code, signal: r === 'late' ? null : r.signal };
      if (r === 'late') bad.push({ name: inc.name, why: `still running ${ms} ms after SIGTERM` });
      else if (r.code !== 0 || !inc.child.stdout.includes('stopped')) bad.push({ name: inc.name, why: `exit ${r.code ?? r.signal}: ${inc.child.stderr.slice(-300)}` });
    }));
    return bad;
  }

  async close(): Promise<void> {
    this.stopping = true;
    for (const fn of this.cleanups.splice(0)) await fn();
  }
}
