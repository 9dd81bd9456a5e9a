/**
 * A client waiting for results through lost connections: terminated
 * backends, a server that is down when the wait starts, a wait that times
 * out.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as delay } from 'node:timers/promises';
import { Durably, type Context } from '../src/index.js';
import type { Settlements } from '../src/promises.js';
import { testDatabase } from './helpers/db.js';
import { binaries, Cluster } from './helpers/cluster.js';
import { within } from './helpers/processes.js';
import { waitFor } from './helpers/wait.js';

const db = await testDatabase();
const cluster = new Cluster();
after(() => cluster.destroy());

function durably(url: string, group: string): Durably {
  return new Durably({ url, group, pollMs: 100, leaseMs: 2000, log: () => {} });
}

test('result() is never CONNECTION_CLOSED: clients waiting while their backends are terminated get every invocation\'s value', async (t) => {
  const worker = durably(db.url, 'storm');
  worker.register('slow', async (_ctx: Context, i: number) => { await delay(200); return i * 2; });
  await worker.start();
  t.after(() => worker.stop());
  const clients = Array.from({ length: 4 }, (_, c) => durably(db.url, `storm-client-${c}`));
  t.after(() => Promise.all(clients.map((c) => c.stop())));

  const handles = await Promise.all(clients.flatMap((client, c) => Array.from({ length: 25 }, (_, j) =>
    client.beginRpc<number>(`storm-${c * 100 + j}`, 'slow', c * 100 + j, client.options({ target: 'storm' })))));

  // Every wait starts (and listens) while the clients' backends are being terminated.
  let storming = true;
  const storm = (async () => {
    while (storming) {
      await db.admin`select pg_terminate_backend(pid) from pg_stat_activity
        where application_name like 'durably:storm-client-%' and pid <> pg_backend_pid()`.catch(() => {});
      await delay(5);
    }
  })();
  // The storm goes on for 3 s after every wait started (a storm that never
  // lets up lets no query through: a new connection lives a few milliseconds).
  // No wait may fail meanwhile; every value arrives, during it or after.
  const results = Promise.all(handles.map((h) => h.result()));
  results.catch(() => {}); // asserted below
  let failed: unknown;
  results.catch((e) => { failed = e; });
  try {
    await delay(3000);
    assert.equal(failed, undefined, 'no wait failed during the storm');
  } finally {
    storming = false;
    await storm;
  }
  assert.deepEqual(await within(results, 30_000, 'every result'), handles.map((h) => Number(h.id.slice('storm-'.length)) * 2));
});

test('a failed listen is not kept: result() started while the server is down waits for it, and later waits work', {
  skip: binaries().dir ? false : 'no PostgreSQL binaries',
}, async (t) => {
  const server = await cluster.primary('down');
  const client = durably(server.url(), 'down');
  t.after(() => client.stop());
  const handle = await client.beginRun('while-down', 'echo', 'x');

  await server.stop('fast');
  const waiting = handle.result();
  waiting.catch(() => {}); // asserted below
  await delay(500);
  await server.start();

  const worker = durably(server.url(), 'down');
  worker.register('echo', async (_ctx: Context, x: string) => x);
  await worker.start();
  t.after(() => worker.stop());
  assert.equal(await within(waiting, 20_000, 'the result awaited while the server was down'), 'x');
  const later = await client.beginRun('after-up', 'echo', 'y');
  assert.equal(await within(later.result(), 20_000, 'a result awaited after the server came back'), 'y');
});

test('wait() that times out stops waiting: its promise is no longer polled', async (t) => {
  const client = durably(db.url, 'waits');
  t.after(() => client.stop());
  await client.promises.create('never-settled');
  await assert.rejects(client.wait('never-settled', 300), (e: { code?: string }) => e.code === 'TIMED_OUT');
  const settlements = (client as unknown as { settlements: Settlements }).settlements;
  assert.equal(settlements.waitedFor, 0);
  // a wait that is still going is polled
  const pending = client.wait('never-settled', 60_000);
  pending.catch(() => {});
  await waitFor(() => settlements.waitedFor === 1 || undefined, { timeoutMs: 5000, what: 'the wait to start polling' });
  await client.promises.resolve('never-settled', 7);
  assert.equal(await pending, 7);
  assert.equal(settlements.waitedFor, 0);
});
