/**
 * Upgrading a database that holds work: every migration after the first
 * landing must keep pending, claimed and suspended tasks where they were.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import postgres from 'postgres';
import { testDatabase } from './helpers/db.js';
import { databaseUrl } from './helpers/url.js';
import { migrate, migrations } from '../src/migrate.js';
import type { Sql } from '../src/db.js';

const { admin, url: someUrl } = await testDatabase();

test('0006 (sequence keys, deadlines): ready, claimed and suspended tasks survive the upgrade and still run', async (t) => {
  const name = `durably_t_up_${randomBytes(4).toString('hex')}`;
  await admin.unsafe(`create database ${name} template template0`);
  const sql = postgres(databaseUrl(someUrl, name), { max: 2, onnotice: () => {} }) as unknown as Sql;
  t.after(async () => {
    await sql.end({ timeout: 1 });
    await admin.unsafe(`drop database if exists ${name} with (force)`);
  });

  // The schema as it was before 0006, applied as the migrator does.
  await sql.begin(async (tx) => {
    await tx`create schema durably`;
    await tx`create table durably.migrations (version integer primary key, name text not null, applied_at timestamptz not null default now())`;
    for (const m of migrations().filter((m) => m.version < 6)) {
      await tx.unsafe(m.text);
      await tx`insert into durably.migrations (version, name) values (${m.version}, ${m.name})`;
    }
  });
  const worker = '00000000-0000-0000-0000-0000000000a1';
  for (const id of ['up-ready', 'up-claimed', 'up-suspended', 'up-awaited']) {
    await sql`select * from durably.invoke(${id}, 'f', '[]', 'up')`;
  }
  await sql`update durably.tasks set available_at = now() - interval '1 minute' where promise_id = 'up-claimed'`;
  assert.deepEqual((await sql`select id from durably.claim_tasks(${worker}, 'up', 2, 60000)`).map((r) => r.id).sort(),
    ['up-claimed', 'up-ready']);
  await sql`select durably.release_tasks(${worker})`;
  await sql`select id from durably.claim_tasks(${worker}, 'up', 4, 60000)`;
  assert.equal((await sql`select durably.suspend_task(${worker}, 'up-suspended', array['up-awaited'], null) as s`)[0].s, 'suspended');

  assert.deepEqual(await migrate(sql), ['0006_scale']);

  const tasks = await sql`select t.promise_id, t.state, t.promise_seq = p.seq as keyed
                            from durably.tasks t join durably.promises p on p.id = t.promise_id order by 1`;
  assert.deepEqual(tasks.map((r) => [r.promise_id, r.state, r.keyed]), [
    ['up-awaited', 'claimed', true], ['up-claimed', 'claimed', true],
    ['up-ready', 'claimed', true], ['up-suspended', 'suspended', true]]);

  const deadlines = await sql`select p.id from durably.deadlines d join durably.promises p on p.seq = d.promise_seq order by 1`;
  assert.deepEqual(deadlines.map((r) => r.id), ['up-awaited', 'up-claimed', 'up-ready', 'up-suspended'],
    'every pending promise has its deadline');

  // Settling the awaited promise wakes the suspended task; the rest settle too.
  await sql`select durably.settle_many(array['up-awaited', 'up-claimed', 'up-ready'],
              array['resolved', 'resolved', 'resolved'], array['1', '2', '3']::jsonb[])`;
  const woke = await sql`select id from durably.claim_tasks(${worker}, 'up', 10, 60000)`;
  assert.deepEqual(woke.map((r) => r.id), ['up-suspended']);
  await sql`select durably.resolve('up-suspended', '4')`;
  assert.equal((await sql`select count(*)::int as n from durably.tasks`)[0].n, 0);
  assert.equal((await sql`select count(*)::int as n from durably.deadlines`)[0].n, 0);
  assert.deepEqual((await sql`select id, state from durably.promise_list order by id`).map((r) => [r.id, r.state]), [
    ['up-awaited', 'resolved'], ['up-claimed', 'resolved'], ['up-ready', 'resolved'], ['up-suspended', 'resolved']]);
});
