/**
 * durably.install_pg_cron() against the real pg_cron extension (the Debian
 * package postgresql-<major>-cron, which .ci/run installs), on a server the
 * test starts with shared_preload_libraries = 'pg_cron'. No Node process
 * ticks until the end: the ticks come from the database alone.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import postgres from 'postgres';
import { Durably } from '../src/index.js';
import { binaries, Cluster } from './helpers/cluster.js';
import { waitFor } from './helpers/wait.js';

const cluster = new Cluster();
after(() => cluster.destroy());

function pgCronMissing(): string | false {
  const { dir } = binaries();
  const pgConfig = join(dir, 'pg_config');
  const share = existsSync(pgConfig) ? execFileSync(pgConfig, ['--sharedir']).toString().trim() : '';
  return share && existsSync(join(share, 'extension', 'pg_cron.control'))
    ? false
    : `the pg_cron extension is not installed for the PostgreSQL in ${dir} (apt-get install postgresql-<major>-cron)`;
}

interface Tick { id: string; at: Date; created_at: Date }

test('pg_cron drives every-second ticks with no Node process, each at most about a second late; uninstall_pg_cron removes the job', {
  skip: pgCronMissing(),
  timeout: 120_000,
}, async (t) => {
  const server = await cluster.primary('cron', {
    shared_preload_libraries: `'pg_cron'`, 'cron.database_name': `'postgres'`, 'cron.host': `'127.0.0.1'`,
  });
  const sql = postgres(server.url(), { max: 2, onnotice: () => {} });
  t.after(() => sql.end());
  const client = new Durably({ url: server.url(), group: 'cron', pollMs: 200, log: () => {} });
  t.after(() => client.stop());
  await client.schedule('every-second', '* * * * * *', 'noop');
  await sql`create extension pg_cron`;
  const [{ version }] = await sql<{ version: string }[]>`select extversion as version from pg_extension where extname = 'pg_cron'`;
  const [major, minor] = version.split('-')[0].split('.').map(Number);
  const secondsNative = major > 1 || minor >= 5; // second intervals arrived in pg_cron 1.5

  const [{ job }] = await sql<{ job: number }[]>`select durably.install_pg_cron() as job`;
  const [installed] = await sql<{ schedule: string; command: string }[]>`select schedule, command from cron.job where jobid = ${job}`;
  assert.deepEqual(installed, secondsNative
    ? { schedule: '1 second', command: 'select durably.tick()' }
    : { schedule: '* * * * *', command: 'call durably.tick_through_minute(1)' });
  // installing again replaces the job
  const [{ again }] = await sql<{ again: number }[]>`select durably.install_pg_cron() as again`;
  assert.equal(again, job);
  await assert.rejects(sql`select durably.install_pg_cron('0 seconds')`, (e: { code?: string }) => e.code === 'DU002');

  // pg_cron's first run (at the next minute boundary before 1.5), then five seconds of ticks.
  const started = await waitFor(async () => (await sql<{ start_time: Date }[]>`
    select start_time from cron.job_run_details where jobid = ${job} order by start_time limit 1`)[0]?.start_time,
  { timeoutMs: 70_000, intervalMs: 200, what: "pg_cron's first run of durably-tick" });
  const since = Math.floor(started.getTime() / 1000) * 1000;
  const ticksSince = () => sql<Tick[]>`
    select id, (tags->>'durably:tick')::timestamptz as at, created_at from durably.promises
     where tags->>'durably:schedule' = 'every-second' and (tags->>'durably:tick')::timestamptz >= ${new Date(since)} order by at`;
  await waitFor(async () => (await ticksSince()).length >= 6, { timeoutMs: 10_000, intervalMs: 200, what: 'six ticks from pg_cron' });
  const onTime = await ticksSince();
  console.log(`# pg_cron ${version}: first run at ${started.toISOString()}, ${onTime.length} ticks since, ` +
    `lateness max ${Math.max(...onTime.map((x) => x.created_at.getTime() - x.at.getTime()))} ms`);
  for (let i = 1; i < onTime.length; i++) assert.equal(onTime[i].at.getTime() - onTime[i - 1].at.getTime(), 1000, 'no tick missing');
  for (const x of onTime) assert.ok(x.created_at.getTime() - x.at.getTime() < 1500, `${x.id} created ${x.created_at.getTime() - x.at.getTime()} ms late`);

  // uninstall removes the job, and the ticking stops
  assert.equal((await sql<{ removed: boolean }[]>`select durably.uninstall_pg_cron() as removed`)[0].removed, true);
  assert.equal((await sql`select jobid from cron.job where jobname = 'durably-tick'`).length, 0);
  assert.equal((await sql<{ removed: boolean }[]>`select durably.uninstall_pg_cron() as removed`)[0].removed, false);
  await delay(2000);
  const [{ n: stoppedAt }] = await sql<{ n: number }[]>`select count(*)::int as n from durably.promises where tags->>'durably:schedule' = 'every-second'`;
  await delay(2000);
  const [{ n: later }] = await sql<{ n: number }[]>`select count(*)::int as n from durably.promises where tags->>'durably:schedule' = 'every-second'`;
  assert.equal(later, stoppedAt, 'no ticks after uninstall');

  // a worker started later runs the ticks pg_cron created
  await client.schedules.pause('every-second');
  const worker = new Durably({ url: server.url(), group: 'cron', pollMs: 200, log: () => {} });
  t.after(() => worker.stop());
  worker.register('noop', async () => 'ran');
  await worker.start();
  await waitFor(async () => (await sql`select 1 from durably.promises
      where tags->>'durably:schedule' = 'every-second' and state = 'pending'`).length === 0,
  { timeoutMs: 20_000, what: 'the worker to run every tick' });
  const [{ resolved }] = await sql<{ resolved: number }[]>`
    select count(*)::int as resolved from durably.promises where tags->>'durably:schedule' = 'every-second' and value = '"ran"'`;
  assert.equal(resolved, later);
});
