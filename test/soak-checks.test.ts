/**
 * The soak's end-of-run checks (bench/soak/checks.ts) on recorded runs made
 * up here: each passes a clean record and fails the defect it looks for.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  checkConnections, checkResults, checkRss, checkSizes, checkSteps, checkTicks,
  type Invocation, type TickSeen, type WorkerEvent,
} from '../bench/soak/checks.js';
import type { Incarnation } from '../bench/soak/workers.js';

function incarnation(name: string, extra: Partial<Incarnation> = {}): Incarnation {
  return { name, slot: 1, pid: 0, log: '', startedAt: 0, stalls: [], rss: [], ...extra } as Incarnation;
}
const at = (t: number, kind: string, id: string, inc: Incarnation): WorkerEvent => ({ at: t, kind, id, inc });
const step = (t: number, id: string, inc: Incarnation) => at(t, 'S', id, inc);

test('steps: a re-run is excused only when a kill, stall or crash caught the earlier run before its checkpoint was stored', () => {
  const other = incarnation('w3-1');
  const killed = incarnation('w2-1', { ended: { at: 150, how: 'killed', code: null, signal: 'SIGKILL' } });
  assert.equal(checkSteps([step(100, 'o-1.1', other), at(101, 'C', 'o-1.1', other),
    step(120, 'o-1.3', killed), step(200, 'o-1.3', other)], []).ok, true);

  // stored before the kill: running it again is a defect
  assert.equal(checkSteps([step(120, 'o-1.3', killed), at(140, 'C', 'o-1.3', killed), step(200, 'o-1.3', other)], []).ok, false);
  // no interruption at all
  assert.equal(checkSteps([step(120, 'o-1.3', incarnation('w2-1')), step(200, 'o-1.3', other)], []).ok, false);
  // a server crash while the checkpoint was on its way; stored once the server was back
  const w = incarnation('w2-1');
  assert.equal(checkSteps([step(120, 'o-1.3', w), at(4000, 'C', 'o-1.3', w), step(3500, 'o-1.3', other)], [130]).ok, true);

  // stalled with o-1.3 in flight (excused), then, resumed, it ran o-1.5 that the other had stored: a defect
  const stalled = incarnation('w1-1', { stalls: [{ from: 130, to: 5130 }] });
  const r = checkSteps([step(120, 'o-1.3', stalled), step(3200, 'o-1.3', other), at(3210, 'C', 'o-1.3', other),
    step(3300, 'o-1.5', other), at(3310, 'C', 'o-1.5', other), at(5140, 'C', 'o-1.3', stalled), step(5200, 'o-1.5', stalled)], []);
  assert.equal(r.ok, false);
  assert.match(r.detail, /1 re-run after .*, 1 re-runs of 1 steps otherwise/);
});

test('ticks: contiguous occurrences one second apart pass; a gap, a double or a missing tail fail', () => {
  const tick = (occurrence: number, at: number): TickSeen => ({ id: `soak-tick-${occurrence}`, occurrence, at, createdAt: at, state: 'resolved' });
  const events = (ts: TickSeen[]) => ts.map((t): WorkerEvent => ({ at: t.at, kind: 'T', id: t.id, inc: incarnation('w1-1') }));
  const good = [0, 1, 2, 3, 4].map((i) => tick(i, 1000 * i));
  assert.equal(checkTicks(good, events(good), 0, 4000).ok, true);
  const gap = good.filter((t) => t.occurrence !== 2);
  assert.equal(checkTicks(gap, events(gap), 0, 4000).ok, false);
  const doubled = [...good.slice(0, 3), tick(3, 2000), tick(4, 3000)];
  assert.equal(checkTicks(doubled, events(doubled), 0, 3000).ok, false);
  assert.equal(checkTicks(good, events(good), 0, 9000).ok, false);
  assert.equal(checkTicks(good, events(good.slice(1)), 0, 4000).ok, false); // occurrence 0 never ran
});

test('results: each invocation once, resolved, with its workflow value', () => {
  const value = (id: string) => ({ a: `a:${id}`, c: `c:${id}`, approval: `${id}.4`, b: `b:${id}` });
  const inv = (id: string, results: Invocation['results']): Invocation => ({ id, enqueuedAt: 0, results });
  const ok = (id: string) => ({ at: 1, state: 'resolved', value: value(id) });
  assert.equal(checkResults([inv('o-1', [ok('o-1')])], new Map()).ok, true);
  assert.equal(checkResults([inv('o-1', [])], new Map()).ok, false);
  assert.equal(checkResults([inv('o-1', [ok('o-1'), ok('o-1')])], new Map()).ok, false);
  assert.equal(checkResults([inv('o-1', [ok('o-2')])], new Map()).ok, false);
  assert.equal(checkResults([inv('o-1', [{ at: 1, state: 'rejected', value: { message: 'x' } }])], new Map()).ok, false);
});

test('connections: at most the pool and the listener per live process, none for ended ones', () => {
  const expected = new Map([['soak-w1-1', 7]]);
  assert.equal(checkConnections(new Map([['soak-w1-1', 7]]), expected).ok, true);
  assert.equal(checkConnections(new Map([['soak-w1-1', 8]]), expected).ok, false);
  assert.equal(checkConnections(new Map([['soak-w2-1', 1]]), expected).ok, false);
});

test('rss: a steady climb over a long enough window fails, a flat series passes', () => {
  const series = (mbPerMin: number) => Array.from({ length: 120 }, (_, i) => ({ at: i * 10_000, bytes: (100 + (mbPerMin * i) / 6) * 2 ** 20 }));
  assert.equal(checkRss([incarnation('w1-1', { rss: series(0) })], 5 * 60_000).ok, true);
  assert.equal(checkRss([incarnation('w1-1', { rss: series(3) })], 5 * 60_000).ok, false);
});

test('retention: more live promises than the bound, or none pruned, fails', () => {
  const sample = (promiseRows: number, created: number) => ({ at: 0, tables: {}, promiseRows, created });
  assert.equal(checkSizes([sample(100, 1000)], 500, 180_000, 'on')[0].ok, true);
  assert.equal(checkSizes([sample(600, 1000)], 500, 180_000, 'on')[0].ok, false);
  assert.equal(checkSizes([sample(1000, 1000)], 5000, 180_000, 'on')[0].ok, false);
  const off = checkSizes([sample(100, 1000)], 500, 180_000, 'off')[1];
  assert.equal(off.ok || !off.skipped, false, 'autovacuum off is not a pass');
});
