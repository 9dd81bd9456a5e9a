/**
 * durably_settled is sent only for promises someone waits on: a caller that
 * invokes and waits (run, rpc) marks its invocation when creating it, a
 * waiter marks the promise it waits for (durably.await_promise) after it
 * listens and before it reads. Settlements nobody waits on notify nothing;
 * a wait started as the promise settles always returns.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { Durably, type DurablyConfig } from '../src/index.js';
import { textArray } from '../src/db.js';
import { testDatabase } from './helpers/db.js';
import { within } from './helpers/processes.js';
import { waitFor } from './helpers/wait.js';

const db = await testDatabase();
const sql = db.sql;
const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;

/** The ids notified on durably_settled from now until the returned stop(). */
async function listenSettled(): Promise<{ ids: Set<string>; payloads: string[]; stop(): Promise<void> }> {
  const ids = new Set<string>();
  const payloads: string[] = [];
  const listener = await sql.listen('durably_settled', (payload) => {
    payloads.push(payload);
    for (const id of payload.split('\n')) ids.add(id);
  });
  return { ids, payloads, stop: () => listener.unlisten() };
}

async function createExternal(ids: string[]): Promise<void> {
  await sql`select count(*) from unnest(${textArray(ids)}::text[]) i,
    durably.create_promise(i, 'external', null, p_timeout_ms => 3600000)`;
}

async function settleAll(ids: string[]): Promise<void> {
  await sql`select count(*) from durably.settle_many(${textArray(ids)}::text[],
    array_fill('resolved'::text, array[${ids.length}::int]), array_fill('1'::jsonb, array[${ids.length}::int]))`;
}

/** A Durably client that never polls during a test: only a notification can wake its waits. */
function client(t: { after(fn: () => Promise<void>): void }, config: DurablyConfig = {}): Durably {
  const d = new Durably({ url: db.url, pollMs: 600_000, log: () => {}, ...config });
  t.after(() => d.stop());
  return d;
}

test('settling promises nobody waits on sends no durably_settled; a waited one is notified', async () => {
  const heard = await listenSettled();
  try {
    const unwaited = Array.from({ length: 100 }, (_, i) => uid(`free-${i}`));
    await createExternal(unwaited.slice(0, 50));
    await sql`select count(*) from durably.invoke_many(${textArray(unwaited.slice(50))}::text[],
      array_fill('f'::text, array[50]), array_fill('[]'::jsonb, array[50]), ${uid('g')})`;
    await settleAll(unwaited);

    // The waited promise settles after the others: once its notification is
    // here, any of theirs would have arrived before it (commit order).
    const waited = uid('waited');
    await createExternal([waited]);
    const [marked] = await sql`select * from durably.await_promise(${waited})`;
    assert.equal(marked.state, 'pending');
    assert.equal(marked.awaited, true);
    await sql`select * from durably.resolve(${waited}, '2')`;
    await waitFor(() => heard.ids.has(waited), { timeoutMs: 5000, what: 'the notification of the waited promise' });
    assert.deepEqual(heard.payloads, [waited], 'nothing is sent for the 100 promises nobody waits on');
  } finally {
    await heard.stop();
  }
});

test('invoke_many opts.awaited marks invocations when they are made; it must be a boolean', async () => {
  const heard = await listenSettled();
  try {
    const group = uid('g');
    const ids = [uid('run-a'), uid('run-b')];
    const made = await sql`select * from durably.invoke_many(${textArray(ids)}::text[], array['f', 'f'],
      array['[]', '[]']::jsonb[], ${group}, '{"awaited": true}')`;
    assert.deepEqual(made.map((r) => r.created), [true, true]);
    await settleAll(ids);
    await waitFor(() => ids.every((id) => heard.ids.has(id)), { timeoutMs: 5000, what: 'both notifications' });
    await assert.rejects(sql`select * from durably.invoke(${uid('bad')}, 'f', '[]', ${group}, '{"awaited": "yes"}')`,
      (err: { code?: string; message?: string }) => err.code === 'DU002' && /awaited/.test(err.message ?? ''));
  } finally {
    await heard.stop();
  }
});

test('waited ids that do not fit in one payload are notified in several, each under the 8000-byte limit', async () => {
  const heard = await listenSettled();
  try {
    const ids = Array.from({ length: 300 }, (_, i) => `${uid('long')}-${'x'.repeat(40)}-${i}`);
    await createExternal(ids);
    await sql`select count(*) from unnest(${textArray(ids)}::text[]) i, durably.await_promise(i)`;
    await settleAll(ids);
    await waitFor(() => ids.every((id) => heard.ids.has(id)), { timeoutMs: 5000, what: 'every id notified' });
    assert.ok(heard.payloads.length > 1);
    for (const p of heard.payloads) assert.ok(Buffer.byteLength(p) < 8000, `a payload of ${Buffer.byteLength(p)} bytes`);
  } finally {
    await heard.stop();
  }
});

test('await_promise returns a settled promise as it is and marks nothing; an unknown id is DU003', async () => {
  const id = uid('done');
  await createExternal([id]);
  await sql`select * from durably.resolve(${id}, '"v"')`;
  const [row] = await sql`select * from durably.await_promise(${id})`;
  assert.equal(row.state, 'resolved');
  assert.equal(row.value, 'v');
  assert.equal(row.awaited, false);
  await assert.rejects(sql`select * from durably.await_promise(${uid('nope')})`,
    (err: { code?: string }) => err.code === 'DU003');
});

test('run marks its invocation when making it; beginRun only once result() is called', async (t) => {
  const d = client(t, { group: uid('nobody-runs-it') });
  const awaited = async (id: string) => (await sql`select awaited from durably.promises where id = ${id}`)[0]?.awaited;

  const ran = uid('run');
  const running = d.run(ran, 'f');
  await waitFor(() => awaited(ran), { timeoutMs: 5000, what: 'the invocation made awaited' });
  await sql`select * from durably.resolve(${ran}, '7')`;
  assert.equal(await within(running, 5000, 'run woken by the notification'), 7);

  const begun = uid('begin');
  const handle = await d.beginRun(begun, 'f');
  assert.equal(await awaited(begun), false, 'a handle nobody waits on is not marked');
  const result = handle.result();
  await waitFor(() => awaited(begun), { timeoutMs: 5000, what: 'the promise marked by its waiter' });
  await sql`select * from durably.resolve(${begun}, '8')`;
  assert.equal(await within(result, 5000, 'result() woken by the notification'), 8);
});

test('a wait started as its promise settles always returns (no lost wake-up)', async (t) => {
  const d = client(t);
  const settler = db.sql;
  for (let round = 0; round < 20; round++) {
    const ids = Array.from({ length: 20 }, (_, i) => uid(`race-${round}-${i}`));
    await createExternal(ids);
    const handles = await Promise.all(ids.map((id) => d.get<number>(id)));
    // Each settlement lands somewhere between before the listen and after the read.
    const results = handles.map((h) => h.result());
    await Promise.all(ids.map(async (id, i) => {
      await new Promise((ok) => setTimeout(ok, (i * 7 + round) % 5));
      await settler`select * from durably.resolve(${id}, ${String(i)}::text::jsonb)`;
    }));
    const values = await within(Promise.all(results), 10_000, `round ${round}: every wait returns without polling`);
    assert.deepEqual(values, ids.map((_, i) => i));
  }
});

test('a watcher (an open dashboard page) hears of every settlement on durably_watch until it unwatches', async () => {
  const heard: string[] = [];
  const listener = await sql.listen('durably_watch', (payload) => heard.push(payload));
  const watcher = randomUUID();
  try {
    const [a, b, fence] = [uid('watched'), uid('unwatched'), uid('fence')];
    await createExternal([a, b, fence]);
    await sql`select durably.watch(${watcher})`;
    await settleAll([a]);
    await waitFor(() => heard.length === 1 || undefined, { timeoutMs: 5000, what: 'the watcher to hear of a settlement nobody waits on' });
    await sql`select durably.unwatch(${watcher})`;
    await settleAll([b]);
    // a waited settlement after it, as a fence: once it is heard, b's notification would have come before it
    const settled = await listenSettled();
    try {
      await sql`select * from durably.await_promise(${fence})`;
      await settleAll([fence]);
      await waitFor(() => settled.ids.has(fence), { timeoutMs: 5000, what: 'the fence' });
    } finally {
      await settled.stop();
    }
    assert.deepEqual(heard, ['settled'], 'nothing on durably_watch once no one watches');
  } finally {
    await listener.unlisten();
    await sql`select durably.unwatch(${watcher})`;
  }
});
