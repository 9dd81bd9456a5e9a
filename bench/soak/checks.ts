/**
 * The soak's end-of-run checks, over what it recorded: the workers' event
 * logs (bench/soak/worker.ts), the results the client saw, the ticks and the
 * table sizes sampled from the database, RSS sampled from /proc.
 */
import { readFileSync } from 'node:fs';
import { fmt, percentiles, table } from '../lib/stats.js';
import type { Incarnation } from './workers.js';

export interface Check {
  name: string;
  ok: boolean;
  /** Why it could not be judged here (printed as SKIP). */
  skipped?: string;
  detail: string;
  /** Examples of what failed (a few). */
  examples?: string[];
}

export interface Invocation {
  id: string;
  enqueuedAt: number;
  /** Results delivered to the client for this id. */
  results: { at: number; state: string; value: unknown }[];
}

export interface TickSeen {
  id: string;
  occurrence: number;
  at: number;
  createdAt: number;
  state: string;
}

export interface SizeSample {
  at: number;
  /** Per table of schema durably: bytes with indexes and TOAST, and of the indexes alone. */
  tables: Record<string, { total: number; indexes: number }>;
  promiseRows: number;
  /** Promises ever created (the highest sequence number). */
  created: number;
}

export interface WorkerEvent {
  at: number;
  kind: string;
  id: string;
  inc: Incarnation;
}

const MB = 1024 * 1024;
const few = <T>(xs: T[], n = 5) => xs.slice(0, n);

export function readEvents(incs: Incarnation[]): WorkerEvent[] {
  const out: WorkerEvent[] = [];
  for (const inc of incs) {
    let text = '';
    try { text = readFileSync(inc.log, 'utf8'); } catch { continue; }
    for (const line of text.split('\n')) {
      const [at, kind, id] = line.split(' ');
      if (id) out.push({ at: Number(at), kind, id, inc });
    }
  }
  return out.sort((a, b) => a.at - b.at);
}

/** Every invocation settled exactly once, resolved, with the value its workflow computes. */
export function checkResults(invocations: Invocation[], dbState: Map<string, string>): Check {
  const missing: string[] = [];
  const doubled: string[] = [];
  const wrong: string[] = [];
  for (const inv of invocations) {
    if (inv.results.length === 0) { missing.push(`${inv.id} (in the database: ${dbState.get(inv.id) ?? 'absent'})`); continue; }
    if (inv.results.length > 1) doubled.push(`${inv.id} ×${inv.results.length}`);
    const r = inv.results[0];
    const v = r.value as { a?: string; c?: string; approval?: string; b?: string } | null;
    const ok = r.state === 'resolved' && v?.a === `a:${inv.id}` && v.c === `c:${inv.id}` && v.b === `b:${inv.id}`
      && typeof v.approval === 'string' && v.approval.startsWith(`${inv.id}.`);
    if (!ok) wrong.push(`${inv.id} ${r.state} ${JSON.stringify(r.value).slice(0, 200)}`);
  }
  return {
    name: 'results',
    ok: missing.length + doubled.length + wrong.length === 0 && invocations.length > 0,
    detail: `${invocations.length} invocations: ${invocations.length - missing.length} settled, ${missing.length} not settled, `
      + `${doubled.length} settled twice, ${wrong.length} rejected or wrong`,
    examples: few([...missing, ...doubled, ...wrong]),
  };
}

/**
 * A step runs again only when its earlier run was in flight when its process
 * was SIGKILLed or stalled, or the server crashed: that interruption came
 * after the run began and before the process had its checkpoint stored (C).
 * A step whose checkpoint was stored and ran again is a defect, whatever
 * happened later.
 */
export function checkSteps(events: WorkerEvent[], serverCrashes: number[]): Check {
  const runs = new Map<string, WorkerEvent[]>();
  const stored = new Map<string, number>(); // `${incarnation} ${step}` → when its checkpoint was stored
  for (const e of events) {
    if (e.kind === 'S') (runs.get(e.id) ?? runs.set(e.id, []).get(e.id)!).push(e);
    if (e.kind === 'C') stored.set(`${e.inc.name} ${e.id}`, e.at);
  }
  let excused = 0;
  let reruns = 0;
  const unexcused: string[] = [];
  for (const [id, list] of runs) {
    const why: string[] = [];
    for (const run of list.slice(0, -1)) {
      const inc = run.inc;
      const interruptions = [
        ...(inc.ended?.how === 'killed' ? [inc.ended.at] : []), ...inc.stalls.map((s) => s.from), ...serverCrashes,
      ].filter((t) => t >= run.at);
      const first = Math.min(...interruptions);
      const storedAt = stored.get(`${inc.name} ${id}`) ?? Infinity;
      if (first < storedAt) excused++;
      else why.push(`${inc.name} had its checkpoint stored ${storedAt - run.at} ms after it began`);
    }
    reruns += why.length;
    if (why.length) unexcused.push(`${id} ran ${list.length}× (${list.map(describeRun).join(', ')}): ${why[0]}`);
  }
  return {
    name: 'steps',
    ok: unexcused.length === 0 && runs.size > 0,
    detail: `${runs.size} steps, ${excused} re-run after a kill, stall or crash caught them in flight, `
      + `${reruns} re-runs of ${unexcused.length} steps otherwise`,
    examples: few(unexcused),
  };
}

/** Where a run happened, and whether its process had just come back from a stall (its lease lost meanwhile). */
function describeRun(run: WorkerEvent): string {
  const resumed = run.inc.stalls.find((s) => s.to <= run.at && run.at - s.to < 5000);
  return `${run.inc.name} at ${new Date(run.at).toISOString().slice(11, 23)}${resumed ? `, ${run.at - resumed.to} ms after its SIGCONT` : ''}`;
}

/** Every-second ticks: contiguous occurrences one second apart, one promise each, each settled and run, up to the end. */
export function checkTicks(ticks: TickSeen[], events: WorkerEvent[], from: number, to: number): Check {
  const sorted = [...ticks].sort((a, b) => a.occurrence - b.occurrence);
  const ran = new Set(events.filter((e) => e.kind === 'T').map((e) => e.id));
  const problems: string[] = [];
  for (let i = 1; i < sorted.length; i++) {
    const [p, q] = [sorted[i - 1], sorted[i]];
    if (q.occurrence !== p.occurrence + 1) problems.push(`occurrences ${p.occurrence + 1}..${q.occurrence - 1} missing`);
    else if (q.at - p.at !== 1000) problems.push(`${q.id} at ${new Date(q.at).toISOString()}, ${q.at - p.at} ms after ${p.id}${q.at === p.at ? ' (doubled)' : ''}`);
  }
  const first = sorted[0];
  const last = sorted[sorted.length - 1];
  if (!first || first.at > from + 5000) problems.push(`the first tick came ${first ? first.at - from : '∞'} ms after the start`);
  if (!last || last.at < to - 3000) problems.push(`the last tick came ${last ? to - last.at : '∞'} ms before the end`);
  const unsettled = sorted.filter((t) => t.at <= to && t.state !== 'resolved');
  const notRun = sorted.filter((t) => t.at <= to && !ran.has(t.id));
  for (const t of few(unsettled, 3)) problems.push(`${t.id} ${t.state}`);
  for (const t of few(notRun, 3)) problems.push(`${t.id} never ran`);
  const late = percentiles(sorted.map((t) => t.createdAt - t.at));
  return {
    name: 'ticks',
    ok: problems.length === 0,
    detail: `${sorted.length} ticks (occurrences ${first?.occurrence}..${last?.occurrence}), ${unsettled.length} unsettled, `
      + `${notRun.length} never ran; created late by p50 ${fmt(late.p50, 0)} ms, p99 ${fmt(late.p99, 0)} ms, max ${fmt(late.max, 0)} ms`,
    examples: few(problems),
  };
}

/** Connections per process once the chaos is over: at most its pool plus the listener, none for ended processes. */
export function checkConnections(counts: Map<string, number>, expected: Map<string, number>): Check {
  const problems: string[] = [];
  const shown: string[] = [];
  for (const [name, n] of counts) {
    const max = expected.get(name) ?? 0;
    shown.push(`${name} ${n}/${max}`);
    if (n > max) problems.push(`${name}: ${n} connections, at most ${max} expected${max === 0 ? ' (the process has ended)' : ''}`);
  }
  return { name: 'connections', ok: problems.length === 0, detail: shown.sort().join(', ') || 'none', examples: problems };
}

/** Least-squares slope of RSS (MB per minute) after a warm-up; judged when the window is long enough. */
export function checkRss(incs: Incarnation[], judgeAfterMs: number): Check {
  const lines: string[] = [];
  const problems: string[] = [];
  for (const inc of incs) {
    const end = inc.rss[inc.rss.length - 1]?.at ?? inc.startedAt;
    const life = end - inc.startedAt;
    if (life < 120_000) continue;
    const warm = inc.startedAt + Math.max(60_000, life * 0.2);
    const xs = inc.rss.filter((s) => s.at >= warm);
    if (xs.length < 5) continue;
    const slope = slopePerMinute(xs.map((s) => [s.at, s.bytes / MB]));
    const growth = (xs[xs.length - 1].bytes - xs[0].bytes) / MB;
    const windowMs = xs[xs.length - 1].at - xs[0].at;
    const judged = windowMs >= judgeAfterMs;
    lines.push(`${inc.name} ${fmt(xs[0].bytes / MB, 0)}→${fmt(xs[xs.length - 1].bytes / MB, 0)} MB over ${fmt(windowMs / 60_000, 1)} min, `
      + `slope ${fmt(slope, 2)} MB/min${judged ? '' : ' (too short to judge)'}`);
    if (judged && slope > 1 && growth > 16) problems.push(`${inc.name} grows ${fmt(slope, 2)} MB/min (${fmt(growth, 0)} MB)`);
  }
  return { name: 'rss', ok: problems.length === 0, detail: lines.join('; ') || 'no process lived long enough to measure', examples: problems };
}

function slopePerMinute(points: [number, number][]): number {
  const n = points.length;
  const mx = points.reduce((s, [x]) => s + x, 0) / n;
  const my = points.reduce((s, [, y]) => s + y, 0) / n;
  let num = 0;
  let den = 0;
  for (const [x, y] of points) { num += (x - mx) * (y - my); den += (x - mx) ** 2; }
  return den === 0 ? 0 : (num / den) * 60_000;
}

/**
 * Retention keeps the promises table to what the last minutes created; sizes
 * stop growing once retention and autovacuum keep up (judged on long runs).
 */
export function checkSizes(samples: SizeSample[], rowBound: number, runMs: number, autovacuum: string): Check[] {
  const over = samples.filter((s) => s.promiseRows > rowBound);
  const last = samples[samples.length - 1];
  const pruned = last ? last.created - last.promiseRows : 0;
  const rows: Check = {
    name: 'retention',
    ok: over.length === 0 && (runMs < 120_000 || pruned > 0),
    detail: `promises: ${last?.promiseRows} rows of ${last?.created} created (${pruned} pruned), `
      + `at most ${Math.max(...samples.map((s) => s.promiseRows))} at once, bound ${rowBound}`,
    examples: few(over.map((s) => `${s.promiseRows} rows at ${new Date(s.at).toISOString()}`)),
  };
  const total = (s: SizeSample) => Object.values(s.tables).reduce((n, t) => n + t.total, 0);
  const third = (k: number) => samples.filter((s) => s.at >= samples[0].at + (k * runMs) / 3 && s.at < samples[0].at + ((k + 1) * runMs) / 3);
  const middle = Math.max(0, ...third(1).map(total));
  const end = Math.max(0, ...third(2).map(total));
  const judged = runMs >= 10 * 60_000;
  const bytes: Check = {
    name: 'sizes',
    ok: autovacuum === 'on' && (!judged || end <= 1.5 * middle + 2 * MB),
    // a server the soak did not start may have autovacuum off (a CI configuration, say): nothing to judge
    skipped: autovacuum === 'on' ? undefined : 'autovacuum is off on this server',
    detail: `durably tables with indexes: largest ${fmt(middle / MB, 1)} MB in the middle third, ${fmt(end / MB, 1)} MB in the last`
      + `${judged ? '' : ' (too short to judge)'}; autovacuum ${autovacuum}`,
  };
  return [rows, bytes];
}

/** Table of sizes at a few points of the run. */
export function sizeTable(samples: SizeSample[]): string {
  const picks = [...new Set([0, Math.floor(samples.length / 2), samples.length - 1])].map((i) => samples[i]).filter(Boolean);
  const names = Object.keys(picks[picks.length - 1]?.tables ?? {}).sort();
  const t0 = samples[0]?.at ?? 0;
  return table('table sizes (KB, with indexes / indexes alone)', ['table', ...picks.map((s) => `+${fmt((s.at - t0) / 60_000, 1)} min`)],
    [...names.map((n) => [n, ...picks.map((s) => s.tables[n] ? `${fmt(s.tables[n].total / 1024, 0)} / ${fmt(s.tables[n].indexes / 1024, 0)}` : '—')]),
      ['promise rows', ...picks.map((s) => String(s.promiseRows))]]);
}

/** Enqueue → first start per minute of the run; p50 must not drift (p99 shows the chaos). */
export function latency(invocations: Invocation[], events: WorkerEvent[], from: number): { check: Check; text: string } {
  const started = new Map<string, number>();
  for (const e of events) if (e.kind === 'B' && !started.has(e.id)) started.set(e.id, e.at);
  const minutes: number[][] = [];
  for (const inv of invocations) {
    const s = started.get(inv.id);
    if (s === undefined) continue;
    const m = Math.floor((inv.enqueuedAt - from) / 60_000);
    (minutes[m] ??= []).push(s - inv.enqueuedAt);
  }
  const stats = Array.from(minutes, (xs) => percentiles(xs ?? []));
  const text = table('enqueue → start per minute (ms)', ['minute', 'n', 'p50', 'p99', 'max'],
    stats.map((p, i) => [String(i + 1), String(p.n), fmt(p.p50, 0), fmt(p.p99, 0), fmt(p.max, 0)]));
  // full minutes only: the last one is cut by the end of the load
  const full = stats.slice(0, -1).filter((p) => p.n > 0);
  const judged = full.length >= 3;
  const [first, lastFull] = [full[0], full[full.length - 1]];
  const ok = !judged || lastFull.p50 <= 2 * first.p50 + 20;
  return {
    check: {
      name: 'latency',
      ok,
      detail: judged ? `p50 ${fmt(first.p50, 0)} ms in minute 1, ${fmt(lastFull.p50, 0)} ms in minute ${full.length}` : 'too short to judge drift',
    },
    text,
  };
}
