/**
 * Failover and half-open connections, on servers the tests start themselves
 * (test/helpers/cluster.ts), whatever DATABASE_URL says: a primary and a
 * synchronous streaming standby behind a multi-host URL, the primary crashed
 * (`pg_ctl stop -m immediate`) and the standby promoted while workers run;
 * and workers behind a TCP proxy that goes silent on every open connection.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as delay } from 'node:timers/promises';
import postgres from 'postgres';
import { Durably, InvalidArgumentError, type Context } from '../src/index.js';
import { binaries, Cluster, type PgServer } from './helpers/cluster.js';
import { connect, retryTransient } from '../src/db.js';
import { freezingProxy } from './helpers/proxy.js';
import { spawnChild, within, type Child } from './helpers/processes.js';
import { waitFor } from './helpers/wait.js';

const FIXTURE = 'test/fixtures/failover-worker.ts';
const cluster = new Cluster();
after(() => cluster.destroy());

interface Event { kind: 'ran' | 'stored' | 'done'; id: string; t: number; worker: string }

/** The events the workers printed (see the fixture), in time order. */
function events(workers: Child[]): Event[] {
  return workers.flatMap((w) => [...w.stdout.matchAll(/^(ran|stored|done) (\S+) (\d+)$/gm)]
    .map((m) => ({ kind: m[1] as Event['kind'], id: m[2], t: Number(m[3]), worker: w.name })))
    .sort((a, b) => a.t - b.t);
}

/** A primary and an asynchronous standby, started once for the tests that only read their roles. */
let pair: Promise<{ primary: PgServer; standby: PgServer }> | undefined;
function replicaPair() {
  pair ??= cluster.primary('rw-primary').then(async (primary) => ({ primary, standby: await cluster.standby(primary, 'rw-standby') }));
  return pair;
}

function fatal(workers: Child[]): string {
  return workers.filter((w) => /FATAL/.test(w.stderr)).map((w) => `--- ${w.name}:\n${w.stderr}`).join('\n');
}

test('failover: a primary crashed mid-run and its synchronous standby promoted lose no acknowledged invocation and re-run no stored step', {
  skip: binaries().standbys ? false : `no pg_basebackup in ${binaries().dir}: a standby needs the machine's PostgreSQL`,
}, async (t) => {
  const primary = await cluster.primary('primary', { synchronous_standby_names: `'standby'` });
  const standby = await cluster.standby(primary, 'standby', { synchronous_standby_names: `''` });
  const admin = postgres(primary.url(), { max: 1, onnotice: () => {} });
  await waitFor(async () => (await admin`select 1 from pg_stat_replication where application_name = 'standby' and sync_state = 'sync'`).length > 0,
    { timeoutMs: 20_000, what: 'the standby to replicate synchronously' });
  await admin.end();
  const url = `postgres://postgres@${primary.hostPort},${standby.hostPort}/postgres?target_session_attrs=primary`;

  const env = { DATABASE_URL: url, LEASE_MS: '3000', POLL_MS: '200', STEP_MS: '20' };
  const workers = await Promise.all(['fw-1', 'fw-2'].map((name) => spawnChild(t, name, FIXTURE, { env: { ...env, WORKER_NAME: name } })));
  const client = new Durably({ url, group: 'failover', pollMs: 200, log: () => {} });
  t.after(() => client.stop());

  // 300 invocations at a steady rate; those whose beginRun returned must complete.
  const acknowledged = new Map<string, Promise<unknown>>();
  const results = new Map<string, number>();
  const rejected: string[] = [];
  const invoking = (async () => {
    for (let i = 0; i < 300; i++) {
      const id = `job-${i}`;
      void client.beginRun(id, 'job', id).then((h) => {
        acknowledged.set(id, h.result().then((v) => {
          assert.equal(v, id);
          results.set(id, (results.get(id) ?? 0) + 1);
        }));
      }, () => rejected.push(id));
      await delay(20);
    }
  })();

  await waitFor(() => results.size >= 30, { timeoutMs: 30_000, what: '30 invocations to complete' });
  await primary.stop('immediate');
  const crashedAt = Date.now();
  await standby.promote();
  const promotedAt = Date.now();

  await invoking;
  await within(waitFor(() => acknowledged.size + rejected.length === 300, { timeoutMs: 30_000, what: 'every beginRun to answer' }), 35_000, 'beginRun');
  await within(Promise.all(acknowledged.values()), 45_000, 'the results of every acknowledged invocation').catch(async (err) => {
    // which ones, and where the new primary has them
    const missing = [...acknowledged.keys()].filter((id) => !results.has(id));
    const q = postgres(standby.url(), { max: 1, onnotice: () => {} });
    const rows = await q`select p.id, p.state, t.state as task, t.worker_id, t.handed, t.available_at, t.attempt
                           from durably.promises p left join durably.tasks t on t.promise_seq = p.seq
                          where p.id = any(${missing}::text[])`.finally(() => q.end());
    throw new Error(`${(err as Error).message}; unfinished: ${JSON.stringify(rows)}`);
  });
  assert.equal(fatal(workers), '');

  const all = events(workers);
  const resumedAt = all.find((e) => e.t > promotedAt && (e.kind === 'stored' || e.kind === 'done'))?.t;
  assert.ok(resumedAt, 'work resumed after the promotion');
  console.log(`# failover: ${acknowledged.size} acknowledged (${rejected.length} beginRun calls failed during the failover), ` +
    `promotion took ${promotedAt - crashedAt} ms, work resumed ${resumedAt - promotedAt} ms after it`);
  assert.ok(resumedAt - promotedAt < 5000, `work resumed ${resumedAt - promotedAt} ms after the promotion`);

  // Every acknowledged invocation has exactly one result, and it is stored on the new primary.
  for (const [id, n] of results) assert.equal(n, 1, id);
  assert.equal(results.size, acknowledged.size);
  const sql = postgres(standby.url(), { max: 1, onnotice: () => {} });
  t.after(() => sql.end());
  const stored = await sql<{ id: string; state: string }[]>`
    select id, state from durably.promises where id = any(${[...acknowledged.keys()]}::text[])`;
  assert.equal(stored.length, acknowledged.size);
  assert.deepEqual(stored.filter((r) => r.state !== 'resolved'), []);

  // A step whose result was stored never runs again.
  const storedAt = new Map<string, number>();
  for (const e of all) {
    if (e.kind === 'stored' && !storedAt.has(e.id)) storedAt.set(e.id, e.t);
    if (e.kind === 'ran' && storedAt.has(e.id)) assert.fail(`step ${e.id} ran again on ${e.worker} after its result was stored`);
  }
});

test('half-open: workers whose every connection goes silent recover in seconds through new connections', async (t) => {
  const server = await cluster.primary('halfopen');
  const proxy = await freezingProxy({ host: '127.0.0.1', port: server.port });
  t.after(() => proxy.close());
  const url = `postgres://postgres@127.0.0.1:${proxy.port}/postgres`;
  const direct = new Durably({ url: server.url(), group: 'failover', pollMs: 200, log: () => {} });
  t.after(() => direct.stop());
  await direct.promises.search('none'); // migrates

  // Pool size 2: after the first jobs every pool connection is open, and all of them freeze.
  const env = { DATABASE_URL: url, POOL_SIZE: '2', POLL_MS: '200', LEASE_MS: '3000', STEP_MS: '5' };
  const workers = await Promise.all(['hw-1', 'hw-2'].map((name) => spawnChild(t, name, FIXTURE, { env: { ...env, WORKER_NAME: name } })));
  const before = await Promise.all(Array.from({ length: 20 }, (_, i) => direct.beginRun(`before-${i}`, 'job', `before-${i}`)));
  await within(Promise.all(before.map((h) => h.result())), 20_000, 'the jobs before the freeze');

  proxy.freeze();
  const frozenAt = Date.now();
  const afterFreeze = await Promise.all(Array.from({ length: 20 }, (_, i) => direct.beginRun(`after-${i}`, 'job', `after-${i}`)));
  await within(Promise.all(afterFreeze.map((h) => h.result())), 30_000, 'the jobs after the freeze');
  const recovered = Date.now() - frozenAt;
  if (recovered >= 10_000) console.log(workers.map((w) => w.stderr).join("\n"));
  console.log(`# half-open: 20 jobs done through new connections ${recovered} ms after every connection went silent`);
  assert.equal(fatal(workers), '');
  assert.ok(recovered < 10_000, `recovered after ${recovered} ms`);
  // Both workers' heartbeats go through again.
  const ids = workers.map((w) => w.stdout.match(/ready (\S+)/)![1]);
  const since = new Date();
  await waitFor(async () => (await direct.sql`select 1 from durably.workers where id::text = any(${`{${ids.join(',')}}`}::text[]) and heartbeat_at > ${since}`).length === 2,
    { timeoutMs: 10_000, what: 'both workers to heartbeat again' });
});

test('multi-host URLs reach the primary with read-write or no target_session_attrs even when a standby is listed first; asking for a standby is refused', {
  skip: binaries().standbys ? false : `no pg_basebackup in ${binaries().dir}: a standby needs the machine's PostgreSQL`,
}, async (t) => {
  const { primary, standby } = await replicaPair();
  for (const query of ['?target_session_attrs=read-write', '']) {
    const d = new Durably({ url: `postgres://postgres@${standby.hostPort},${primary.hostPort}/postgres${query}`, group: 'rw', pollMs: 100, log: () => {} });
    t.after(() => d.stop());
    d.register('echo', async (_ctx: Context, x: string) => x);
    await d.start();
    assert.equal(await within(d.run(`rw${query}`, 'echo', 'ok'), 20_000, `a run with ${query || 'no target_session_attrs'}`), 'ok');
  }
  assert.throws(() => new Durably({ url: `postgres://postgres@${standby.hostPort}/postgres?target_session_attrs=standby` }),
    (e: Error) => e instanceof InvalidArgumentError && /target_session_attrs=primary/.test(e.message));
});

test('a server found read-only (SQLSTATE 25006, a name that still points at the standby) is left: the pool reconnects and the statement is retried', {
  skip: binaries().standbys ? false : `no pg_basebackup in ${binaries().dir}: a standby needs the machine's PostgreSQL`,
}, async (t) => {
  const { primary, standby } = await replicaPair();
  const proxy = await freezingProxy({ host: '127.0.0.1', port: standby.port });
  t.after(() => proxy.close());
  const sql = connect(`postgres://postgres@127.0.0.1:${proxy.port}/postgres`, { max: 2 });
  t.after(() => sql.end({ timeout: 0 }));
  await Promise.all([sql`select pg_sleep(0.05)`, sql`select pg_sleep(0.05)`]); // both connections open on the standby
  await assert.rejects(sql.listen('after_failover', () => {}), (e: { code?: string }) => e.code === '25006'); // cannot execute LISTEN during recovery

  proxy.retarget(primary.port);
  await retryTransient(() => sql`create table if not exists written_after_failover (x int)`);
  const [{ recovery }] = await sql<{ recovery: boolean }[]>`select pg_is_in_recovery() as recovery`;
  assert.equal(recovery, false);
  const heard: string[] = [];
  await sql.listen('after_failover', (x) => heard.push(x));
  await sql`select pg_notify('after_failover', 'on the primary')`;
  await waitFor(() => heard.length > 0, { what: 'the notification' });
  assert.deepEqual(heard, ['on the primary']);
});
