/**
 * Soak under chaos: `npm run soak -- --minutes N [--rate R] [--workers K] [--keep]`.
 *
 * Keeps a mixed load going for N minutes (default 3): R invocations per
 * second (default 5) of a workflow with steps, a durable sleep, a child call
 * and an external promise settled from SQL, plus a schedule ticking every
 * second; K worker processes (default 3). Meanwhile, at random: a worker
 * SIGKILLed and restarted, a storm of pg_terminate_backend on every durably
 * connection, a worker SIGSTOPped past its lease then SIGCONTed, and a server
 * crash (`-m immediate`) and restart when the soak started the server itself
 * (without DATABASE_URL: an embedded PostgreSQL; with it, that server, never
 * restarted). The chaos stops 20 s before the load, the work drains, and the
 * checks print and decide the exit code (0 all passed, 1 a check failed).
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { setTimeout as delay } from 'node:timers/promises';
import { Durably, PromiseRejectedError } from '../src/index.js';
import { fmt } from './lib/stats.js';
import { soakServer } from './soak/server.js';
import { WorkerPool, appName, withAppName, type Incarnation } from './soak/workers.js';
import {
  checkConnections, checkResults, checkRss, checkSizes, checkSteps, checkTicks, latency, readEvents, sizeTable,
  type Check, type Invocation, type SizeSample, type TickSeen,
} from './soak/checks.js';

const { values: argv } = parseArgs({
  options: {
    minutes: { type: 'string', default: '3' },
    rate: { type: 'string', default: '5' },
    workers: { type: 'string', default: '3' },
    keep: { type: 'boolean', default: false },
  },
});
const minutes = Number(argv.minutes);
const rate = Number(argv.rate);
const slots = Number(argv.workers);
if (!(minutes > 0) || !(rate > 0) || !Number.isInteger(slots) || slots < 2) {
  console.error('usage: npm run soak -- --minutes N (> 0) [--rate invocations/s (> 0)] [--workers K (>= 2)] [--keep]');
  process.exit(2);
}

const LEASE_MS = 3000;
const CONCURRENCY = 4;
const POOL = CONCURRENCY + 2; // Durably's default pool size
const RETENTION_MS = 30_000;
const PRUNE_EVERY_MS = 60_000; // how often workers prune (src/worker.ts)
const STALL_MS = LEASE_MS + 2000;
const QUIET_MS = 20_000;
const DRAIN_MS = 120_000;
const CLIENT_POOL = 4;
/** Promises one workflow leaves: itself, 3 steps, a sleep, a child, the external promise. */
const PROMISES_PER_ORDER = 7;

const run = randomBytes(3).toString('hex');
const logDir = join(tmpdir(), `durably-soak-${run}-logs`);
mkdirSync(logDir, { recursive: true });
const chaosLog: string[] = [];
const note = (line: string) => chaosLog.push(`${new Date().toISOString()} ${line}`);

const server = await soakServer(run, process.env.DATABASE_URL || undefined);
const admin = server.admin;
const crashes: string[] = [];
const pool = new WorkerPool({
  url: server.url, logDir,
  env: {
    CONCURRENCY: String(CONCURRENCY), LEASE_MS: String(LEASE_MS), HEARTBEAT_MS: '1000', POLL_MS: '500',
    GRACE_MS: '2000', RETENTION_MS: String(RETENTION_MS),
  },
}, (inc) => {
  // A worker that ends by itself is a failure; the slot gets a new process so the soak goes on.
  crashes.push(`${inc.name} exited (${inc.ended?.code ?? inc.ended?.signal}): ${inc.child.stderr.slice(-500)}`);
  note(`${inc.name} exited by itself`);
  void delay(1000).then(() => pool.start(inc.slot)).catch((e) => crashes.push(`restarting slot ${inc.slot}: ${e}`));
});
const client = new Durably({
  url: withAppName(server.url, appName('client')), group: 'soak', poolSize: CLIENT_POOL, pollMs: 500,
  retentionMs: RETENTION_MS, log: (m) => note(`client: ${m}`),
});

let cleaned = false;
async function cleanup(): Promise<void> {
  if (cleaned) return;
  cleaned = true;
  await pool.close();
  await client.stop().catch(() => {});
  await server.close().catch((e) => console.error(`closing the server: ${e}`));
}
process.once('SIGINT', () => void cleanup().finally(() => process.exit(130)));
process.once('uncaughtException', (err) => {
  console.error(`soak aborted: ${err.stack ?? err}`);
  void cleanup().finally(() => process.exit(1));
});

console.log(`soak: ${minutes} min, ${rate} invocations/s, ${slots} workers × concurrency ${CONCURRENCY} (lease ${LEASE_MS / 1000} s), `
  + `retention ${RETENTION_MS / 1000} s, ${server.restartable ? 'its own embedded PostgreSQL (crashed and restarted)' : 'the server of DATABASE_URL'}`);
if (!server.restartable) console.log('server restarts skipped: the soak restarts only a server it started itself (run without DATABASE_URL for them)');

await client.schedules.list(); // migrates
await Promise.all(Array.from({ length: slots }, (_, i) => pool.start(i + 1)));
await client.schedule('soak-tick', { every: 1000 }, 'tick', client.options({ idTemplate: 'soak-tick-{occurrence}' }));

const loadStart = Date.now();
const loadEnd = loadStart + minutes * 60_000;
const quietAt = loadEnd - QUIET_MS;
const invocations: Invocation[] = [];
const ticks = new Map<string, TickSeen>();
const sizes: SizeSample[] = [];
let clientErrors = 0;
let running = true;

/** Invokes at a steady rate; each invocation's result is awaited by the client (NOTIFY, polling as fallback). */
async function load(): Promise<void> {
  for (let n = 1, next = Date.now(); Date.now() < loadEnd; n++) {
    const inv: Invocation = { id: `o-${n}`, enqueuedAt: Date.now(), results: [] };
    invocations.push(inv);
    void invokeAndWait(inv, n % 3 === 0 ? 2500 : 300); // 2.5 s suspends (past inProcessSleepMs), 300 ms sleeps in process
    next += 1000 / rate;
    await delay(Math.max(0, next - Date.now()));
  }
}

async function invokeAndWait(inv: Invocation, sleepMs: number): Promise<void> {
  for (;;) {
    try {
      const handle = await client.beginRun(inv.id, 'order', inv.id, sleepMs);
      const value = await handle.result();
      inv.results.push({ at: Date.now(), state: 'resolved', value });
      return;
    } catch (err) {
      if (err instanceof PromiseRejectedError) {
        inv.results.push({ at: Date.now(), state: err.state, value: err.value });
        return;
      }
      clientErrors++; // a transient error after the client's own retries: invoke again (same id) and wait again
      if (!running) return;
      await delay(500);
    }
  }
}

/** External promises settled from SQL, as an application would. */
async function settleExternals(): Promise<void> {
  while (running) {
    await admin`select count(*) from (select durably.resolve(p.id, jsonb_build_object('ok', p.id))
                  from durably.promises p where p.state = 'pending' and p.kind = 'external') s`.catch(() => {});
    await delay(300);
  }
}

/** Records every tick promise before retention may delete it. */
async function observeTicks(): Promise<void> {
  while (running) {
    const rows = await admin<{ id: string; state: string; at: string; created_at: Date }[]>`
      select id, state, tags->>'durably:tick' as at, created_at from durably.promises where id like 'soak-tick-%'`.catch(() => []);
    for (const r of rows) {
      ticks.set(r.id, { id: r.id, occurrence: Number(r.id.slice('soak-tick-'.length)), at: Date.parse(r.at), createdAt: r.created_at.getTime(), state: r.state });
    }
    await delay(2000);
  }
}

async function sampleSizes(): Promise<void> {
  const rows = await admin<{ name: string; total: string; indexes: string }[]>`
    select c.relname as name, pg_total_relation_size(c.oid) as total, pg_indexes_size(c.oid) as indexes
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname = 'durably' and c.relkind = 'r'`;
  const [count] = await admin<{ rows: number; created: string }[]>`
    select count(*)::int as rows, coalesce(max(seq), 0) as created from durably.promises`;
  sizes.push({
    at: Date.now(),
    tables: Object.fromEntries(rows.map((r) => [r.name, { total: Number(r.total), indexes: Number(r.indexes) }])),
    promiseRows: count.rows, created: Number(count.created),
  });
}

async function sample(): Promise<void> {
  for (let i = 0; running; i++) {
    pool.sampleRss();
    if (i % 3 === 0) await sampleSizes().catch(() => {});
    await delay(5000);
  }
}

const chaosCounts = { kill: 0, storm: 0, stall: 0, restart: 0, terminated: 0, downMs: [] as number[], crashes: [] as number[] };
let lastRestart = 0;

async function kill(): Promise<void> {
  const victims = pool.live().filter((i) => i.slot !== 1); // slot 1 lives through the run: its RSS is the long series
  const victim = pick(victims);
  if (!victim) return;
  note(`SIGKILL ${victim.name}`);
  await pool.kill(victim);
  chaosCounts.kill++;
  await delay(500 + Math.random() * 2500);
  const next = await pool.start(victim.slot);
  note(`started ${next.name}`);
}

async function storm(): Promise<void> {
  let n = 0;
  for (let round = 0; round < 3; round++) {
    const [row] = await admin<{ n: number }[]>`
      select count(pg_terminate_backend(pid))::int as n from pg_stat_activity
       where application_name like 'soak-%' and application_name <> 'soak-harness'`;
    n += row.n;
    await delay(200);
  }
  note(`storm: ${n} backends terminated`);
  chaosCounts.storm++;
  chaosCounts.terminated += n;
}

async function stall(): Promise<void> {
  const victim = pick(pool.live());
  if (!victim) return;
  note(`SIGSTOP ${victim.name} for ${STALL_MS} ms`);
  await pool.stall(victim, STALL_MS);
  chaosCounts.stall++;
}

async function restart(): Promise<void> {
  note('server crash (immediate) and restart');
  chaosCounts.crashes.push(Date.now());
  const { downMs } = await server.restart();
  note(`server back after ${downMs} ms`);
  lastRestart = Date.now();
  chaosCounts.restart++;
  chaosCounts.downMs.push(downMs);
}

/** Each kind of chaos once, in random order, then at random until the quiet period. */
async function chaos(): Promise<void> {
  const kinds = server.restartable ? [kill, storm, stall, restart] : [kill, storm, stall];
  const first = [...kinds].sort(() => Math.random() - 0.5);
  await delay(10_000);
  while (Date.now() < quietAt) {
    let action = first.shift();
    if (!action) {
      const r = Math.random();
      action = r < 0.35 ? kill : r < 0.65 ? storm : r < 0.85 || !server.restartable || Date.now() - lastRestart < 90_000 ? stall : restart;
    }
    try {
      await action();
    } catch (err) {
      note(`chaos ${action.name} failed: ${(err as Error).message}`);
    }
    await delay(Math.min(4000 + Math.random() * 8000, Math.max(0, quietAt - Date.now())));
  }
}

function pick<T>(xs: T[]): T | undefined {
  return xs[Math.floor(Math.random() * xs.length)];
}

const background = [settleExternals(), observeTicks(), sample()];
await Promise.all([load(), chaos()]);
note('load and chaos over: draining');
const drainEnd = Date.now() + DRAIN_MS;
while (Date.now() < drainEnd && invocations.some((i) => i.results.length === 0)) await delay(500);
const drained = Date.now();

// Connections per process, now that the chaos is over (a few seconds to settle).
const expected = new Map<string, number>([[appName('client'), CLIENT_POOL + 1]]);
for (const inc of pool.live()) expected.set(appName(inc.name), POOL + 1); // the pool plus the LISTEN connection
let connections: Check;
for (const until = Date.now() + 10_000; ;) {
  const rows = await admin<{ name: string; n: number }[]>`
    select application_name as name, count(*)::int as n from pg_stat_activity
     where application_name like 'soak-%' and application_name <> 'soak-harness' group by 1`;
  connections = checkConnections(new Map(rows.map((r) => [r.name, r.n])), expected);
  if (connections.ok || Date.now() > until) break;
  await delay(1000);
}
await sampleSizes();
const [{ autovacuum }] = await admin<{ autovacuum: string }[]>`select current_setting('autovacuum') as autovacuum`;
const vacuums = await admin<{ name: string; n: number; dead: number }[]>`
  select relname as name, (autovacuum_count + autoanalyze_count)::int as n, n_dead_tup::int as dead
    from pg_stat_user_tables where schemaname = 'durably' order by relname`;
const unsettled = invocations.filter((i) => i.results.length === 0).map((i) => i.id);
const dbState = new Map((await admin<{ id: string; state: string; task_state: string | null }[]>`
  select id, state, task_state from durably.promise_list where id = any(${unsettled})`)
  .map((r) => [r.id, `${r.state}${r.task_state ? `, task ${r.task_state}` : ''}`]));

running = false;
const stopProblems = await pool.stopAll(15_000);
await Promise.all(background);
await client.stop().catch(() => {});

const events = readEvents(pool.all);
const lat = latency(invocations, events, loadStart);
const checks: Check[] = [
  checkResults(invocations, dbState),
  checkSteps(events, chaosCounts.crashes),
  checkTicks([...ticks.values()], events, loadStart, loadEnd),
  connections,
  checkRss(pool.all, 5 * 60_000),
  ...checkSizes(sizes, Math.ceil((rate * PROMISES_PER_ORDER + 1) * (RETENTION_MS + 2 * PRUNE_EVERY_MS + 30_000) / 1000),
    loadEnd - loadStart, autovacuum),
  lat.check,
  { name: 'workers', ok: crashes.length === 0 && stopProblems.length === 0,
    detail: `${pool.all.length} processes, ${crashes.length} ended by themselves, ${stopProblems.length} did not stop cleanly on SIGTERM`,
    examples: [...crashes, ...stopProblems.map((p) => `${p.name}: ${p.why}`)].slice(0, 5) },
];

const down = chaosCounts.downMs;
console.log(`chaos: ${chaosCounts.kill} SIGKILLs, ${chaosCounts.storm} backend storms (${chaosCounts.terminated} backends terminated), `
  + `${chaosCounts.stall} stalls of ${STALL_MS / 1000} s, ${chaosCounts.restart} server restarts`
  + `${down.length ? ` (down ${down.map((d) => fmt(d / 1000, 1)).join(', ')} s)` : ''}; drained ${fmt((drained - loadEnd) / 1000, 1)} s after the load`);
console.log(`client: ${clientErrors} errors retried; workers: ${logSummary(pool.all)}`);
console.log(`autovacuum/autoanalyze runs: ${vacuums.map((v) => `${v.name} ${v.n} (${v.dead} dead)`).join(', ')}`);
for (const c of checks) {
  console.log(`${c.skipped ? 'SKIP' : c.ok ? 'PASS' : 'FAIL'} ${c.name}: ${c.skipped ? `${c.skipped}; ` : ''}${c.detail}`);
  if (!c.ok) for (const e of c.examples ?? []) console.log(`     ${e.replace(/\s*\n\s*/g, ' | ').slice(0, 300)}`);
}
console.log(lat.text);
console.log(sizeTable(sizes));

const failed = checks.filter((c) => !c.ok && !c.skipped).map((c) => c.name);
writeFileSync(join(logDir, 'chaos.log'), `${chaosLog.join('\n')}\n`);
for (const inc of pool.all) writeFileSync(join(logDir, `${inc.name}.stderr`), inc.child.stderr);
await cleanup();
if (failed.length || argv.keep) console.log(`\nlogs: ${logDir}`);
else rmSync(logDir, { recursive: true, force: true });
console.log(failed.length ? `\nsoak FAILED: ${failed.join(', ')}` : '\nsoak passed');
process.exit(failed.length ? 1 : 0);

/** How much the workers logged (retries, reconnects), and the most frequent kinds of line. */
function logSummary(incs: Incarnation[]): string {
  const kinds = new Map<string, number>();
  let n = 0;
  for (const inc of incs) {
    for (const line of inc.child.stderr.split('\n')) {
      if (!line) continue;
      n++;
      const kind = line.replace(/^\[[^\]]*\]\s*/, '').replace(/[0-9a-f]{8}-[0-9a-f-]{27}|\d+/g, 'N').slice(0, 80);
      kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
    }
  }
  const top = [...kinds].sort((a, b) => b[1] - a[1]).slice(0, 3).map(([k, c]) => `${c}× "${k}"`);
  return `${n} log lines${top.length ? `; most frequent: ${top.join('; ')}` : ''}`;
}
