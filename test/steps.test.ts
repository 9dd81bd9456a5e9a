/**
 * Durable functions in one process: ctx.run/beginRun checkpoints and replay,
 * step retries, non-determinism, external promises, long sleeps that suspend,
 * child invocations (rpc), cancel, timeout, dedup by id, recorded now/random.
 * Real Postgres, real timers made short by configuration.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import {
  Durably, options, PromiseRejectedError, type Context, type DurablyConfig,
} from '../src/index.js';
import { testDatabase } from './helpers/db.js';
import { waitFor } from './helpers/wait.js';
import { within } from './helpers/processes.js';

const db = await testDatabase();
const sql = db.sql;

const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;

type Row = Record<string, any>;

/** A started Durably (worker + client) on a group of its own, stopped after the test. */
async function worker(
  t: TestContext, fns: Record<string, (ctx: Context, ...args: any[]) => unknown>,
  config: DurablyConfig = {},
): Promise<Durably & { logs: string[] }> {
  const logs: string[] = [];
  const d = new Durably({
    url: db.url, group: uid('g'), pollMs: 100, leaseMs: 3000, graceMs: 200,
    log: (m) => logs.push(m), ...config,
  }) as Durably & { logs: string[] };
  d.logs = logs;
  for (const [name, fn] of Object.entries(fns)) d.register(name, fn as any, { retry: { kind: 'constant', delayMs: 50, maxAttempts: 3 } });
  t.after(() => d.stop());
  await d.start();
  return d;
}

async function promiseRow(id: string): Promise<Row | undefined> {
  const [row] = await sql<Row[]>`select * from durably.promises where id = ${id}`;
  return row;
}

async function taskRow(id: string): Promise<Row | undefined> {
  const [row] = await sql<Row[]>`select *, available_at = 'infinity' as forever from durably.tasks where promise_id = ${id}`;
  return row;
}

async function children(id: string): Promise<Row[]> {
  return [...await sql<Row[]>`select * from durably.promises where parent_id = ${id} order by created_at, id`];
}

/** Counts calls by key. */
class Counter {
  readonly counts = new Map<string, number>();
  hit(key: string): number {
    const n = (this.counts.get(key) ?? 0) + 1;
    this.counts.set(key, n);
    return n;
  }
  get(key: string): number {
    return this.counts.get(key) ?? 0;
  }
}

const rejection = async (p: Promise<unknown>): Promise<PromiseRejectedError> => {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof PromiseRejectedError, `a PromiseRejectedError, got ${(err as Error)?.stack ?? err}`);
    return err;
  }
  assert.fail('expected a rejection');
};

test('parallel steps: beginRun x10 then await all; every step runs once, concurrently, and is stored', async (t) => {
  const runs = new Counter();
  let inFlight = 0;
  let maxInFlight = 0;
  async function square(ctx: Context, x: number) {
    runs.hit(ctx.id);
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    await delay(100);
    inFlight--;
    return x * x;
  }
  const d = await worker(t, {
    fanout: async (ctx: Context) => {
      const futures = Array.from({ length: 10 }, (_, i) => ctx.beginRun(square, i));
      assert.deepEqual(futures.map((f) => f.id), Array.from({ length: 10 }, (_, i) => `${ctx.id}.${i}`));
      return Promise.all(futures);
    },
  });
  const id = uid('fanout');
  const started = Date.now();
  const result = await within(d.run<number[]>(id, 'fanout'), 10_000, 'fanout result');
  const took = Date.now() - started;
  assert.deepEqual(result, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
  assert.equal(runs.counts.size, 10);
  for (let i = 0; i < 10; i++) assert.equal(runs.get(`${id}.${i}`), 1, `step ${id}.${i} ran once`);
  assert.ok(maxInFlight > 1, `the steps ran concurrently (at most ${maxInFlight} at once)`);
  t.diagnostic(`10 x 100 ms steps took ${took} ms, ${maxInFlight} at once`);

  const kids = await children(id);
  assert.equal(kids.length, 10);
  for (const k of kids) {
    const i = Number(k.id.slice(id.length + 1));
    assert.equal(k.kind, 'step');
    assert.equal(k.func, 'square');
    assert.equal(k.state, 'resolved');
    assert.equal(k.value, i * i);
    assert.equal(k.root_id, id);
  }
  assert.equal((await promiseRow(id))?.state, 'resolved');
  assert.equal(await taskRow(id), undefined, 'the task is gone once settled');
});

test('replay: a function that fails after 3 steps is retried and the steps are not executed again', async (t) => {
  const runs = new Counter();
  const attempts: number[] = [];
  async function stepOne(_: Context, x: number) { runs.hit('one'); return x + 1; }
  async function stepTwo(_: Context, x: number) { runs.hit('two'); return x * 10; }
  async function stepThree(_: Context, x: number) { runs.hit('three'); return { total: x }; }
  const d = await worker(t, {
    threeSteps: async (ctx: Context, start: number) => {
      attempts.push(ctx.attempt);
      const a = await ctx.run(stepOne, start);
      const b = await ctx.run(stepTwo, a);
      const c = await ctx.run(stepThree, b);
      if (ctx.attempt === 1) throw new Error('boom after three steps');
      return { a, b, c, attempt: ctx.attempt };
    },
  });
  const id = uid('replay');
  const result = await within(d.run(id, 'threeSteps', 4), 10_000, 'replayed result');
  assert.deepEqual(result, { a: 5, b: 50, c: { total: 50 }, attempt: 2 });
  assert.deepEqual(attempts, [1, 2], 'the function body ran twice: the failure was retried');
  assert.deepEqual(Object.fromEntries(runs.counts), { one: 1, two: 1, three: 1 }, 'no step ran again on replay');
  const kids = await children(id);
  assert.deepEqual(kids.map((k) => [k.id, k.func, k.state]),
    [[`${id}.0`, 'stepOne', 'resolved'], [`${id}.1`, 'stepTwo', 'resolved'], [`${id}.2`, 'stepThree', 'resolved']]);
});

test('step retry: a flaky step is retried in place; a step that always fails rejects the function once, without function retries', async (t) => {
  const runs = new Counter();
  const flakyAttempts: { attempt: number; at: number }[] = [];
  const fnAttempts = new Counter();
  class PaymentDeclined extends Error {
    override name = 'PaymentDeclined';
  }
  async function prepare(_: Context) { runs.hit('prepare'); return 'prepared'; }
  async function flaky(ctx: Context, label: string) {
    flakyAttempts.push({ attempt: ctx.attempt, at: Date.now() });
    if (ctx.attempt < 3) throw new Error(`flaky failure ${ctx.attempt}`);
    return `${label} ok on attempt ${ctx.attempt}`;
  }
  async function finish(_: Context, v: string) { runs.hit('finish'); return `${v}!`; }
  async function charge(ctx: Context) {
    runs.hit(`charge attempt ${ctx.attempt}`);
    throw new PaymentDeclined('card declined');
  }
  const d = await worker(t, {
    withFlaky: async (ctx: Context) => {
      fnAttempts.hit(ctx.id);
      const p = await ctx.run(prepare);
      const f = await ctx.run(flaky, p, options({ retry: { kind: 'constant', delayMs: 20, maxAttempts: 5 } }));
      return ctx.run(finish, f);
    },
    withFailing: async (ctx: Context) => {
      fnAttempts.hit(ctx.id);
      await ctx.run(prepare);
      await ctx.run(charge, options({ retry: { kind: 'constant', delayMs: 20, maxAttempts: 3 } }));
      return 'unreachable';
    },
  });

  const okId = uid('flaky');
  const ok = await within(d.run(okId, 'withFlaky'), 10_000, 'flaky function result');
  assert.equal(ok, 'prepared ok on attempt 3!');
  assert.deepEqual(flakyAttempts.map((a) => a.attempt), [1, 2, 3]);
  for (let i = 1; i < flakyAttempts.length; i++) {
    const gap = flakyAttempts[i].at - flakyAttempts[i - 1].at;
    assert.ok(gap >= 15, `step retries wait their 20 ms delay (gap ${gap} ms)`);
  }
  assert.equal(runs.get('prepare'), 1, 'the step before the flaky one ran once');
  assert.equal(runs.get('finish'), 1);
  assert.equal(fnAttempts.get(okId), 1, 'the function itself did not fail');
  const okKids = await children(okId);
  assert.deepEqual(okKids.map((k) => [k.func, k.state]), [['prepare', 'resolved'], ['flaky', 'resolved'], ['finish', 'resolved']]);

  const failId = uid('failing');
  const err = await rejection(within(d.run(failId, 'withFailing'), 10_000, 'failing function result'));
  assert.equal(err.message, 'card declined', 'the function rejects with the step\'s error message');
  assert.equal(err.name, 'PaymentDeclined');
  assert.equal(err.state, 'rejected');
  assert.equal(runs.get('charge attempt 1') + runs.get('charge attempt 2') + runs.get('charge attempt 3'), 3);
  assert.equal(runs.get('charge attempt 4'), 0, 'maxAttempts 3: no fourth attempt');
  assert.equal(runs.get('prepare'), 2, 'prepare ran once for each of the two functions');
  assert.equal(fnAttempts.get(failId), 1,
    'the function (retry: constant 50 ms, 3 attempts) is not retried: its replay would hit the same stored error');

  const step = await promiseRow(`${failId}.1`);
  assert.equal(step?.kind, 'step');
  assert.equal(step?.func, 'charge');
  assert.equal(step?.state, 'rejected');
  assert.equal(step?.value.name, 'PaymentDeclined');
  assert.equal(step?.value.message, 'card declined');
  assert.equal(step?.value.attempt, 3);
  const fn = await promiseRow(failId);
  assert.equal(fn?.state, 'rejected');
  assert.equal(fn?.value.message, 'card declined');
  assert.equal(fn?.value.name, 'PaymentDeclined');
  assert.equal(await taskRow(failId), undefined);
  // A pointless retry would run the body again after 50 ms: give it the time to show up.
  await delay(300);
  assert.equal(fnAttempts.get(failId), 1);
});

let nondeterministicFirstRun = true;

test('non-determinism: a replay that reaches another step at a stored position fails with NonDeterminismError and overwrites nothing', async (t) => {
  const runs = new Counter();
  async function stepA(_: Context) { runs.hit('A'); return 'value of A'; }
  async function stepB(_: Context) { runs.hit('B'); return 'value of B'; }
  const bodies: number[] = [];
  const d = await worker(t, {
    drifting: async (ctx: Context) => {
      bodies.push(ctx.attempt);
      if (nondeterministicFirstRun) {
        await ctx.run(stepA);
        nondeterministicFirstRun = false;
        throw new Error('force a replay');
      }
      await ctx.run(stepB);
      return 'should not get here';
    },
  });
  const id = uid('nondet');
  const err = await rejection(within(d.run(id, 'drifting'), 10_000, 'non-deterministic function result'));
  assert.equal(err.name, 'NonDeterminismError');
  assert.match(err.message, /non-deterministic/);
  assert.deepEqual(bodies, [1, 2]);
  assert.equal(runs.get('A'), 1);
  assert.equal(runs.get('B'), 0, 'step B never ran');

  const row = await promiseRow(id);
  assert.equal(row?.state, 'rejected');
  assert.equal(row?.value.name, 'NonDeterminismError');
  assert.equal(row?.value.code, 'NON_DETERMINISM');
  const kids = await children(id);
  assert.equal(kids.length, 1);
  assert.deepEqual([kids[0].id, kids[0].func, kids[0].state, kids[0].value], [`${id}.0`, 'stepA', 'resolved', 'value of A'],
    'the stored step A is not overwritten');
  await delay(200);
  assert.equal(bodies.length, 2, 'a NonDeterminismError is final: no further retries');
});

test('external promise: the execution suspends, resolving from SQL resumes it; a rejection throws into the function', async (t) => {
  const bodies = new Counter();
  const d = await worker(t, {
    approval: async (ctx: Context, promiseId: string) => {
      bodies.hit(ctx.id);
      const p = await ctx.promise<string>({ id: promiseId });
      assert.equal(p.id, promiseId);
      try {
        return { approved: await p.result() };
      } catch (err) {
        return { rejected: (err as Error).message, name: (err as Error).name };
      }
    },
  });

  const id = uid('approve');
  const h = await d.beginRun(id, 'approval', 'approval-x');
  const suspended = await waitFor(async () => {
    const task = await taskRow(id);
    return task?.state === 'suspended' ? task : undefined;
  }, { timeoutMs: 5000, what: 'the execution to suspend on approval-x' });
  assert.equal(suspended.worker_id, null, 'no worker holds a suspended task');
  assert.equal(suspended.forever, true, 'no timer: it waits for the promise only');
  const ext = await promiseRow('approval-x');
  assert.deepEqual([ext?.kind, ext?.state, ext?.parent_id, ext?.root_id], ['external', 'pending', id, id]);
  const [cb] = await sql<Row[]>`select * from durably.callbacks where promise_id = 'approval-x'`;
  assert.equal(cb?.task_id, id);
  assert.equal(await h.done(), false);

  const [resolved] = await sql<Row[]>`select * from durably.resolve('approval-x', '"yes"')`;
  assert.equal(resolved.state, 'resolved');
  assert.deepEqual(await within(h.result(), 5000, 'approval result'), { approved: 'yes' });
  assert.equal(bodies.get(id), 2, 'ran once, suspended, replayed once after the resolution');

  const id2 = uid('deny');
  const h2 = await d.beginRun(id2, 'approval', 'approval-y');
  await waitFor(async () => (await taskRow(id2))?.state === 'suspended', { timeoutMs: 5000, what: 'the second execution to suspend' });
  await d.promises.reject('approval-y', new Error('denied by a human'));
  assert.deepEqual(await within(h2.result(), 5000, 'denial result'), { rejected: 'denied by a human', name: 'Error' });
  assert.equal((await promiseRow('approval-y'))?.state, 'rejected');
  assert.equal((await sql`select count(*)::int as n from durably.callbacks`)[0].n, 0, 'no callbacks left behind');
});

test('a 1-hour sleep suspends and frees the worker slot; moving the deadline into the past resumes and completes it', async (t) => {
  const events: string[] = [];
  const d = await worker(t, {
    nap: async (ctx: Context) => {
      events.push(`start ${ctx.attempt}`);
      await ctx.sleep(3_600_000);
      events.push('woke');
      return 'rested';
    },
    quick: async (_: Context, x: number) => x + 1,
  }, { concurrency: 1 });

  const id = uid('nap');
  const h = await d.beginRun(id, 'nap');
  const task = await waitFor(async () => {
    const row = await taskRow(id);
    return row?.state === 'suspended' ? row : undefined;
  }, { timeoutMs: 5000, what: 'the 1-hour sleep to suspend' });
  assert.equal(task.worker_id, null);
  const sleepId = `${id}.0`;
  const timer = await promiseRow(sleepId);
  assert.equal(timer?.kind, 'sleep');
  assert.equal(timer?.state, 'pending');
  const aheadMs = timer!.timeout_at.getTime() - Date.now();
  assert.ok(aheadMs > 3_500_000 && aheadMs <= 3_600_000, `the timer is due in about an hour (${aheadMs} ms)`);
  assert.equal(task.available_at.getTime(), timer!.timeout_at.getTime(), 'the task wakes at the timer');

  // The only slot is free: another invocation runs at once.
  assert.equal(await within(d.run(uid('quick'), 'quick', 41), 5000, 'a quick invocation on the concurrency-1 worker'), 42);
  assert.deepEqual(events, ['start 1']);

  await sql.begin(async (tx) => {
    await tx`update durably.promises set timeout_at = now() where id = ${sleepId}`;
    await tx`update durably.tasks set available_at = now() where promise_id = ${id}`;
  });
  assert.equal(await within(h.result(), 5000, 'the nap to finish once due'), 'rested');
  assert.deepEqual(events, ['start 1', 'start 1', 'woke'], 'replayed from the top once, as the same attempt');
  const woken = await promiseRow(sleepId);
  assert.ok(woken?.state === 'pending' || woken?.state === 'resolved', `the timer is not rejected (${woken?.state})`);
});

test('child rpc: rpc and 3 parallel beginRpc combine; children carry parent_id and root_id', async (t) => {
  const childRuns = new Counter();
  const d = await worker(t, {
    child: async (ctx: Context, x: number) => {
      childRuns.hit(ctx.id);
      await delay(50);
      return x * 100;
    },
    parent: async (ctx: Context, base: number) => {
      const first = await ctx.rpc<number>('child', base);
      const futures = [1, 2, 3].map((i) => ctx.beginRpc<number>('child', base + i));
      const rest = await Promise.all(futures);
      return { first, rest, sum: first + rest.reduce((a, b) => a + b, 0) };
    },
    root: async (ctx: Context) => ctx.rpc('parent', 1),
  });
  const rootId = uid('root');
  const result = await within(d.run(rootId, 'root'), 10_000, 'root result');
  assert.deepEqual(result, { first: 100, rest: [200, 300, 400], sum: 1000 });

  const parentId = `${rootId}.0`;
  const parent = await promiseRow(parentId);
  assert.deepEqual([parent?.kind, parent?.func, parent?.state, parent?.parent_id, parent?.root_id],
    ['invoke', 'parent', 'resolved', rootId, rootId]);
  const kids = await children(parentId);
  assert.deepEqual(kids.map((k) => k.id).sort(), [0, 1, 2, 3].map((i) => `${parentId}.${i}`));
  for (const k of kids) {
    assert.equal(k.kind, 'invoke');
    assert.equal(k.func, 'child');
    assert.equal(k.state, 'resolved');
    assert.equal(k.parent_id, parentId);
    assert.equal(k.root_id, rootId);
    assert.equal(childRuns.get(k.id), 1, `child ${k.id} ran once`);
  }
  assert.deepEqual(kids.map((k) => k.args[0]).sort(), [1, 2, 3, 4]);
});

test('cancel: a running execution sees ctx.signal fire; it and its pending children end rejected_canceled', async (t) => {
  const aborted = new Map<string, unknown>();
  const started = new Set<string>();
  const waitForAbort = (id: string, signal: AbortSignal) => new Promise<never>((_, reject) => {
    started.add(id);
    signal.addEventListener('abort', () => { aborted.set(id, signal.reason); reject(signal.reason); }, { once: true });
  });
  const d = await worker(t, {
    hang: async (ctx: Context) => waitForAbort(ctx.id, ctx.signal),
    longRunning: async (ctx: Context) => {
      await ctx.promise({ id: `${ctx.id}.approval` });
      void ctx.beginRpc('hang');
      return ctx.run(async function longOperation(c: Context) { return waitForAbort(ctx.id, c.signal); });
    },
  }, { heartbeatMs: 100, leaseMs: 3000 });

  const id = uid('cancel');
  const h = await d.beginRun(id, 'longRunning');
  const hangId = `${id}.0`; // an explicit id takes no position
  await waitFor(() => started.has(id) && started.has(hangId), { timeoutMs: 5000, what: 'the parent and its child to be running' });
  assert.equal((await taskRow(id))?.state, 'claimed');
  assert.equal((await promiseRow(`${id}.approval`))?.state, 'pending');

  const canceledAt = Date.now();
  const row = await d.promises.cancel(id, 'no longer needed');
  assert.equal(row.state, 'rejected_canceled');
  await waitFor(() => aborted.has(id) && aborted.has(hangId), { timeoutMs: 3000, what: 'ctx.signal to fire in parent and child' });
  const latency = Date.now() - canceledAt;
  assert.ok(latency < 2000, `seen at the next heartbeat (${latency} ms; heartbeat 100 ms)`);
  assert.equal((aborted.get(id) as { code?: string }).code, 'CANCELED');
  assert.equal((aborted.get(hangId) as { code?: string }).code, 'CANCELED');

  const err = await rejection(within(h.result(), 3000, 'canceled result'));
  assert.equal(err.state, 'rejected_canceled');
  assert.equal(err.code, 'CANCELED');
  assert.equal((await promiseRow(id))?.value.message, 'no longer needed');
  for (const child of [`${id}.approval`, hangId]) {
    const c = await promiseRow(child);
    assert.equal(c?.state, 'rejected_canceled', `${child} was canceled with its parent`);
    assert.equal(c?.parent_id, id);
  }
  assert.equal(await promiseRow(`${id}.1`), undefined, 'the aborted step stored nothing');
  await waitFor(async () => (await sql`select count(*)::int as n from durably.tasks where promise_id like ${`${id}%`}`)[0].n === 0,
    { timeoutMs: 3000, what: 'no tasks left' });
  // Nothing the aborted runs do afterwards overwrites the cancellation.
  await delay(300);
  assert.equal((await promiseRow(id))?.state, 'rejected_canceled');
  assert.equal((await promiseRow(hangId))?.state, 'rejected_canceled');
});

test('timeout: options({ timeout: 500 }) ends a 3 s in-process sleep as rejected_timedout and fires ctx.signal', async (t) => {
  const aborted = new Map<string, { code?: string }>();
  const after = new Set<string>();
  const d = await worker(t, {
    slow: async (ctx: Context) => {
      ctx.signal.addEventListener('abort', () => aborted.set(ctx.id, ctx.signal.reason), { once: true });
      await ctx.sleep(3000);
      after.add(ctx.id);
      return 'too late';
    },
  }, { inProcessSleepMs: 5000 });
  const id = uid('timeout');
  const started = Date.now();
  const h = await d.beginRun(id, 'slow', options({ timeout: 500 }));
  const err = await rejection(within(h.result(), 5000, 'timed-out result'));
  const took = Date.now() - started;
  assert.equal(err.state, 'rejected_timedout');
  assert.equal(err.code, 'TIMED_OUT');
  assert.ok(took >= 400 && took < 2500, `settled at about the 500 ms timeout, not after the 3 s sleep (${took} ms)`);
  await waitFor(() => aborted.has(id), { timeoutMs: 2000, what: 'ctx.signal to fire' });
  assert.equal(aborted.get(id)?.code, 'TIMED_OUT');
  const row = await promiseRow(id);
  assert.equal(row?.state, 'rejected_timedout');
  assert.equal(await taskRow(id), undefined);
  assert.equal(after.size, 0, 'the code after the sleep did not run');
});

test('dedup: invoking the same id while it runs attaches to the running execution', async (t) => {
  const bodies: string[] = [];
  let release!: () => void;
  const gate = new Promise<void>((ok) => { release = ok; });
  const d = await worker(t, {
    once: async (ctx: Context, label: string) => {
      bodies.push(label);
      await gate;
      return { label, n: bodies.length };
    },
  });
  const id = uid('dedup');
  const h1 = await d.beginRun(id, 'once', 'first');
  await waitFor(() => bodies.length === 1, { timeoutMs: 5000, what: 'the first invocation to start' });
  const h2 = await d.beginRun(id, 'once', 'second');
  assert.equal(h2.id, id);
  assert.equal((await taskRow(id))?.state, 'claimed');
  await delay(300); // a second execution, if one were started, would show up here
  assert.deepEqual(bodies, ['first']);
  release();
  const [r1, r2] = await within(Promise.all([h1.result(), h2.result()]), 5000, 'both results');
  assert.deepEqual(r1, { label: 'first', n: 1 });
  assert.deepEqual(r2, r1);
  assert.deepEqual(bodies, ['first'], 'the body ran once');
  const rows = await sql`select count(*)::int as n from durably.promises where id = ${id}`;
  assert.equal(rows[0].n, 1);
  assert.deepEqual((await promiseRow(id))?.args, ['first']);
});

test('ctx.now() and ctx.random() return their recorded values on replay', async (t) => {
  const seen: { attempt: number; now: number; random: number; again: number }[] = [];
  const d = await worker(t, {
    clocked: async (ctx: Context) => {
      const now = await ctx.now();
      const random = await ctx.random();
      const again = await ctx.random();
      seen.push({ attempt: ctx.attempt, now, random, again });
      if (ctx.attempt === 1) {
        await delay(30); // Date.now() moves on before the replay
        throw new Error('force a replay');
      }
      return { now, random, again };
    },
  });
  const id = uid('clock');
  const before = Date.now();
  const result = await within(d.run<{ now: number; random: number; again: number }>(id, 'clocked'), 10_000, 'clocked result');
  assert.equal(seen.length, 2);
  assert.deepEqual(seen.map((s) => s.attempt), [1, 2]);
  assert.equal(seen[1].now, seen[0].now, 'now() is the recorded time on replay');
  assert.equal(seen[1].random, seen[0].random, 'random() is the recorded number on replay');
  assert.equal(seen[1].again, seen[0].again);
  assert.notEqual(seen[0].random, seen[0].again, 'each call records its own value');
  assert.ok(seen[0].now >= before && seen[0].now <= Date.now(), 'now() is the time of the first run');
  assert.ok(seen[0].random >= 0 && seen[0].random < 1);
  assert.deepEqual(result, { now: seen[0].now, random: seen[0].random, again: seen[0].again });
  const kids = await children(id);
  assert.deepEqual(kids.map((k) => [k.func, k.value]).sort(),
    [['@now', seen[0].now], ['@random', seen[0].random], ['@random', seen[0].again]].sort());
});
