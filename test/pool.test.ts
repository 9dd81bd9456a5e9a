/**
 * Limits of the driver and the pool: the query deadline and the server's
 * statement_timeout behind it, a connection that misses its deadline
 * leaving the pool, timeouts configured on the server, an application pool
 * exhausted beside durably's, and the connections a worker opens.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as delay } from 'node:timers/promises';
import postgres from 'postgres';
import { Durably, type Context } from '../src/index.js';
import { connect } from '../src/db.js';
import { testDatabase } from './helpers/db.js';
import { databaseUrl } from './helpers/url.js';
import { freezingProxy } from './helpers/proxy.js';
import { within } from './helpers/processes.js';

const db = await testDatabase();

test('a statement that outlives its deadline is canceled by the server (statement_timeout), not left holding its locks', async (t) => {
  const sql = connect(db.url, { max: 1, deadlineMs: 1600 });
  t.after(() => sql.end());
  await db.sql`create table held (id int primary key, n int)`;
  await db.sql`insert into held values (1, 0)`;
  const started = Date.now();
  await assert.rejects(sql`update held set n = n + 1 where id = 1 returning pg_sleep(10)`, (e: { code?: string }) => e.code === '57014');
  assert.ok(Date.now() - started < 1600, 'canceled by the server before the client-side deadline');
  // the row lock is gone with the canceled statement
  await within(db.sql`update held set n = n + 1 where id = 1`, 1000, 'an update of the row');
  const [{ statement_timeout }] = await sql<{ statement_timeout: string }[]>`show statement_timeout`;
  assert.equal(statement_timeout, '1200ms');
});

test('a connection whose query missed its deadline leaves the pool at once: the next query gets a new one', async (t) => {
  const target = new URL(db.url);
  const proxy = await freezingProxy({ host: target.hostname, port: Number(target.port) });
  t.after(() => proxy.close());
  const url = new URL(db.url);
  url.port = String(proxy.port);
  const sql = connect(url.toString(), { max: 1, deadlineMs: 1600 });
  t.after(() => sql.end({ timeout: 0 }));
  await sql`select 1`;
  proxy.freeze();
  await assert.rejects(sql`select 2`, (e: { code?: string }) => e.code === 'QUERY_TIMEOUT');
  const started = Date.now();
  const [row] = await sql<{ n: number }[]>`select 3 as n`;
  assert.equal(row.n, 3);
  assert.ok(Date.now() - started < 1000, `the next query answered after ${Date.now() - started} ms`);
});

test('workers start and work where the server sets a tight statement_timeout and idle_in_transaction_session_timeout', async (t) => {
  const name = `durably_tight_${process.pid}`;
  await db.admin.unsafe(`create database ${name}`);
  t.after(() => db.admin.unsafe(`drop database if exists ${name} with (force)`));
  await db.admin.unsafe(`alter database ${name} set statement_timeout = '5ms'`);
  await db.admin.unsafe(`alter database ${name} set idle_in_transaction_session_timeout = '200ms'`);
  const url = databaseUrl(db.url, name);
  const worker = new Durably({ url, group: 'tight', pollMs: 100, log: () => {} });
  t.after(() => worker.stop());
  worker.register('steps', async (ctx: Context, i: number) => {
    const a = await ctx.run(async () => i + 1);
    await ctx.sleep(10);
    return ctx.run(async () => a * 2);
  });
  await worker.start(); // migrates a fresh database: statements far longer than 5 ms
  const handles = await Promise.all(Array.from({ length: 20 }, (_, i) => worker.beginRun(`tight-${i}`, 'steps', i)));
  assert.deepEqual(await within(Promise.all(handles.map((h) => h.result())), 30_000, 'the results'),
    Array.from({ length: 20 }, (_, i) => (i + 1) * 2));
});

test("the application's pool exhausted by long transactions does not stop durably's own pool", async (t) => {
  const app = postgres(db.url, { max: 3, onnotice: () => {} });
  t.after(() => app.end());
  const worker = new Durably({ url: db.url, group: 'beside-app', pollMs: 100, log: () => {} });
  worker.register('echo', async (_ctx: Context, x: number) => x);
  await worker.start();
  t.after(() => worker.stop());

  // Every application connection in a transaction for 4 s, and more work queued behind them.
  const appBusy = Array.from({ length: 4 }, () => app.begin((tx) => tx`select pg_sleep(4)`));
  await delay(200);
  const started = Date.now();
  const handles = await Promise.all(Array.from({ length: 50 }, (_, i) => worker.beginRun(`beside-app-${i}`, 'echo', i)));
  assert.deepEqual(await Promise.all(handles.map((h) => h.result())), Array.from({ length: 50 }, (_, i) => i));
  const took = Date.now() - started;
  assert.ok(took < 3000, `50 invocations took ${took} ms while the application's pool was busy`);
  await Promise.all(appBusy);
});

test('a worker opens at most poolSize + 1 connections (the pool and its listener), under load and after backend storms', async (t) => {
  const group = 'counted';
  const poolSize = 3;
  const worker = new Durably({ url: db.url, group, concurrency: 4, poolSize, pollMs: 100, log: () => {} });
  worker.register('work', async (ctx: Context, i: number) => {
    await ctx.run(async () => i);
    await ctx.sleep(5);
    return i;
  });
  await worker.start();
  t.after(() => worker.stop());

  const handles = await Promise.all(Array.from({ length: 100 }, (_, i) => worker.beginRun(`counted-${i}`, 'work', i)));
  let most = 0;
  let sampling = true;
  const sampler = (async () => {
    for (let round = 0; sampling; round++) {
      const [{ n }] = await db.admin<{ n: number }[]>`
        select count(*)::int as n from pg_stat_activity where application_name = ${`durably:${group}`}`;
      most = Math.max(most, n);
      if (round % 20 === 5) {
        await db.admin`select pg_terminate_backend(pid) from pg_stat_activity where application_name = ${`durably:${group}`}`;
      }
      await delay(20);
    }
  })();
  await within(Promise.all(handles.map((h) => h.result())), 60_000, 'the results');
  sampling = false;
  await sampler;
  console.log(`# connections of a worker with poolSize ${poolSize}: at most ${most}`);
  assert.ok(most <= poolSize + 1, `${most} connections`);
  assert.ok(most >= 2, 'the sampler saw the worker');
});
