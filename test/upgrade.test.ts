/**
 * Upgrading databases that users migrated with earlier releases. The released
 * migrations are read from the repository's history, at the last commit that
 * shipped them (each held functions and views, before sql/ kept one
 * definition of each). A database at each released schema version, holding
 * work of every kind that version knew, upgrades in place, then a worker
 * completes all of that work, and its schema equals a fresh install's.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import postgres from 'postgres';
import { testDatabase } from './helpers/db.js';
import { databaseUrl } from './helpers/url.js';
import { waitFor } from './helpers/wait.js';
import { migrate, migrations, definitions } from '../src/migrate.js';
import { Durably, type Context } from '../src/index.js';
import type { Sql } from '../src/db.js';

/** The last release whose sql/ held the migrations 0001 ... 0006 with their function bodies. */
const RELEASED = '02fb5b2';
const RELEASED_FILES = ['0001_engine', '0002_cron', '0003_schedules', '0004_public_api', '0005_retention', '0006_scale'];

const fresh = await testDatabase();
const { admin } = fresh;
const root = new URL('..', import.meta.url).pathname;

function released(name: string): string {
  return execFileSync('git', ['show', `${RELEASED}:sql/${name}.sql`], { cwd: root, encoding: 'utf8' });
}

/** A new database at released schema version `version`, migrated as the released migrator did. */
async function databaseAt(version: number, t: { after(fn: () => Promise<void>): void }): Promise<{ url: string; sql: Sql }> {
  const name = `durably_t_up${version}_${randomBytes(4).toString('hex')}`;
  await admin.unsafe(`create database ${name} template template0`);
  const url = databaseUrl(fresh.url, name);
  const sql = postgres(url, { max: 2, onnotice: () => {} }) as unknown as Sql;
  t.after(async () => {
    await sql.end({ timeout: 1 });
    await admin.unsafe(`drop database if exists ${name} with (force)`);
  });
  await sql.begin(async (tx) => {
    await tx`create schema durably`;
    await tx`create table durably.migrations (version integer primary key, name text not null, applied_at timestamptz not null default now())`;
    for (const file of RELEASED_FILES.slice(0, version)) {
      await tx.unsafe(released(file));
      await tx`insert into durably.migrations (version, name) values (${Number(file.slice(0, 4))}, ${file})`;
    }
  });
  return { url, sql };
}

const DEAD_WORKER = '00000000-0000-0000-0000-0000000000d1';

/** Work of every kind the released version knows, left as a crashed deployment leaves it. */
async function fill(sql: Sql, version: number): Promise<string[]> {
  // claimed by a worker that died: its lease runs out soon after the upgrade
  await sql`select * from durably.invoke('up-claimed', 'echo', '["claimed"]', 'up')`;
  assert.equal((await sql`select id from durably.claim_tasks(${DEAD_WORKER}, 'up', 1, 1000)`).length, 1);
  // suspended on an external promise of its own (as ctx.promise() makes it)
  await sql`select * from durably.invoke('up-suspended', 'approve', '[]', 'up')`;
  assert.equal((await sql`select id from durably.claim_tasks(${DEAD_WORKER}, 'up', 1, 60000)`).length, 1);
  await sql`select * from durably.create_promise('up-suspended.0', 'external', now() + interval '1 hour', p_parent_id => 'up-suspended')`;
  assert.equal((await sql`select durably.suspend_task(${DEAD_WORKER}, 'up-suspended', array['up-suspended.0'], null) as s`)[0].s,
    'suspended');
  // ready, an external promise of no invocation, and a settled invocation
  await sql`select * from durably.invoke('up-ready', 'echo', '["ready"]', 'up')`;
  await sql`select * from durably.create_promise('up-external', 'external', now() + interval '1 hour')`;
  await sql`select * from durably.invoke('up-settled', 'echo', '["settled"]', 'up')`;
  await sql`select * from durably.resolve('up-settled', '"settled before the upgrade"')`;
  if (version < 3) return [];
  // a schedule that ticked before the upgrade
  await sql`select * from durably.create_schedule('up-every-second', '* * * * * *', 'tick', '{"group": "up"}')`;
  const ticks = await waitFor(async () => {
    await sql`select * from durably.tick()`;
    const rows = await sql`select id from durably.promises where tags->>'durably:schedule' = 'up-every-second'`;
    return rows.length > 0 ? rows.map((r) => r.id as string) : undefined;
  }, { what: 'a tick before the upgrade' });
  assert.equal((await sql`select count(*)::int as n from durably.tasks`)[0].n, 3 + ticks.length, 'claimed, suspended, ready and the ticks');
  return ticks;
}

/**
 * The schema as the catalogs describe it, in a form that does not depend on
 * the server's version: every function and view definition with its rights,
 * every table's columns in order with defaults, identity and storage options,
 * indexes, constraints, composite types and triggers of schema durably.
 */
async function schemaOf(sql: Sql): Promise<string[]> {
  const rows = await sql<{ line: string }[]>`
    select kind || ' ' || name || ': ' || coalesce(def, '') as line from (
      select 'function' as kind, p.oid::regprocedure::text as name,
             pg_get_functiondef(p.oid) || ' acl ' || coalesce(p.proacl::text, '') as def
        from pg_proc p where p.pronamespace = 'durably'::regnamespace
      union all
      select case c.relkind when 'v' then 'view' else 'table' end, c.relname,
             case c.relkind when 'v' then pg_get_viewdef(c.oid) end || ' columns ' ||
             (select string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull || ' '
                                || a.attidentity::text || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), ''), ', ' order by a.attnum)
                from pg_attribute a left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
               where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped)
             || ' options ' || coalesce(c.reloptions::text, '') || ' acl ' || coalesce(c.relacl::text, '')
        from pg_class c where c.relnamespace = 'durably'::regnamespace and c.relkind in ('r', 'v', 'c')
      union all
      select 'index', c.relname, pg_get_indexdef(c.oid)
        from pg_class c where c.relnamespace = 'durably'::regnamespace and c.relkind = 'i'
      union all
      select 'constraint', co.conrelid::regclass::text || '.' || co.conname, pg_get_constraintdef(co.oid)
        from pg_constraint co where co.connamespace = 'durably'::regnamespace
      union all
      select 'trigger', tg.tgname, pg_get_triggerdef(tg.oid)
        from pg_trigger tg join pg_class c on c.oid = tg.tgrelid
       where c.relnamespace = 'durably'::regnamespace and not tg.tgisinternal
    ) s order by 1`;
  return rows.map((r) => r.line);
}

/** `pg_dump --schema-only` of the database, when this machine has a pg_dump of the server's major version. */
async function pgDump(sql: Sql, url: string): Promise<string | undefined> {
  const [{ major }] = await sql<{ major: number }[]>`select current_setting('server_version_num')::int / 10000 as major`;
  let text: string;
  try {
    text = execFileSync(`/usr/lib/postgresql/${major}/bin/pg_dump`, ['--schema-only', url], { encoding: 'utf8' });
  } catch {
    return undefined;
  }
  // \restrict carries a random key per run
  return text.split('\n').filter((l) => !/^\\(un)?restrict /.test(l)).join('\n');
}

const functions = {
  echo: async (_ctx: Context, x: string) => x,
  approve: async (ctx: Context) => (await ctx.promise<string>()).result(),
  tick: async () => 'ticked',
};

for (const version of RELEASED_FILES.map((_, i) => i + 1)) {
  test(`upgrade from schema version ${version} (${RELEASED_FILES[version - 1]}): work in flight completes, schema equals a fresh install's`, async (t) => {
    const { url, sql } = await databaseAt(version, t);
    const ticksBefore = await fill(sql, version);

    const applied = await migrate(sql);
    assert.deepEqual(applied, [
      ...migrations().filter((m) => m.version > version).map((m) => m.name),
      ...definitions().map((d) => d.name),
    ]);
    assert.deepEqual(await migrate(sql), [], 'a second run has nothing to apply');

    const worker = new Durably({ url, group: 'up', leaseMs: 2000, pollMs: 100, migrate: false, log: () => {} });
    for (const [name, fn] of Object.entries(functions)) worker.register(name, fn);
    await worker.start();
    t.after(() => worker.stop());
    await worker.promises.resolve('up-suspended.0', 'approved');
    await worker.promises.resolve('up-external', 'from outside');

    const results = await Promise.all(['up-ready', 'up-claimed', 'up-suspended', ...ticksBefore]
      .map((id) => worker.get(id).then((h) => h.result())));
    assert.deepEqual(results, ['ready', 'claimed', 'approved', ...ticksBefore.map(() => 'ticked')]);
    assert.equal((await worker.get('up-settled').then((h) => h.result())), 'settled before the upgrade');
    assert.equal((await worker.promises.get('up-external')).state, 'resolved');
    if (version >= 3) {
      await waitFor(async () => (await sql`
        select count(*)::int as n from durably.promises
         where tags->>'durably:schedule' = 'up-every-second' and state = 'resolved'`)[0].n > ticksBefore.length,
      { what: 'a tick after the upgrade to run' });
      await sql`select durably.pause_schedule('up-every-second')`;
    }
    await waitFor(async () => (await sql`select count(*)::int as n from durably.tasks`)[0].n === 0,
      { what: 'every task to complete' });
    await worker.stop();
    assert.equal((await sql`select count(*)::int as n from durably.deadlines d
                              join durably.promises p on p.seq = d.promise_seq where p.state = 'pending'`)[0].n,
      (await sql`select count(*)::int as n from durably.promises where state = 'pending'`)[0].n,
      'every pending promise has its deadline');

    assert.deepEqual(await schemaOf(sql), await schemaOf(fresh.sql));
    const [dumped, freshDump] = [await pgDump(sql, url), await pgDump(fresh.sql, fresh.url)];
    if (dumped !== undefined) assert.equal(dumped, freshDump, 'pg_dump --schema-only equals a fresh install\'s');
    else t.diagnostic('no pg_dump for this server version here: compared the catalogs only');
  });
}

test('a database migrated by a newer durably is refused', async () => {
  await fresh.sql`insert into durably.migrations (version, name) values (9999, '9999_from_the_future')`;
  await assert.rejects(migrate(fresh.sql), /schema is at version 9999, newer than this durably knows/);
  await fresh.sql`delete from durably.migrations where version = 9999`;
  await fresh.sql`update durably.definitions set version = '999.0.0' where name = 'tasks'`;
  await assert.rejects(migrate(fresh.sql), /sql\/tasks\.sql were applied by durably 999\.0\.0/);
  await fresh.sql`update durably.definitions set version = '0.0.1' where name = 'tasks'`;
  assert.deepEqual(await migrate(fresh.sql), [], 'an older version with the same content applies nothing');
});

test('a definition file that changed is applied again, alone, and the public API keeps its rights', async () => {
  await fresh.sql`update durably.definitions set hash = 'changed', version = '0.0.1' where name = 'promises'`;
  assert.deepEqual(await migrate(fresh.sql), ['promises']);
  const [invoke] = await fresh.sql<{ secdef: boolean; config: string[] }[]>`
    select prosecdef as secdef, proconfig as config from pg_proc where oid = 'durably.invoke(text, text, jsonb, text, jsonb)'::regprocedure`;
  assert.deepEqual(invoke, { secdef: true, config: ['search_path=pg_catalog, pg_temp'] });
});

test('every function and view of schema durably has exactly one definition under sql/', () => {
  const texts = [...migrations().map((m) => ({ file: `migrations/${m.name}.sql`, text: m.text })),
    ...definitions().map((d) => ({ file: `${d.name}.sql`, text: d.text }))];
  const seen = new Map<string, string[]>();
  for (const { file, text } of texts) {
    for (const [, kind, name] of text.matchAll(/create\s+(?:or\s+replace\s+)?(function|view|trigger)\s+(durably\.\w+)/gi)) {
      assert.ok(!file.startsWith('migrations/'), `${file} defines ${kind} ${name}: migrations hold no functions, views or triggers`);
      seen.set(name, [...(seen.get(name) ?? []), file]);
    }
  }
  const twice = [...seen].filter(([, files]) => files.length > 1);
  assert.deepEqual(twice, []);
});
