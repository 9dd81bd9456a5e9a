/**
 * The `durably` command. Human tables by default, `--json` for scripts.
 * Exit codes: 0 ok, 1 failure, 2 bad usage or input.
 */
import { parseArgs } from 'node:util';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Durably } from './durably.js';
import { databaseForDev } from './database.js';
import { connect } from './db.js';
import { migrate } from './migrate.js';
import { DurablyError, InvalidArgumentError } from './errors.js';
import { parseTarget } from './options.js';
import { serveDashboard } from './dashboard/index.js';

const HELP = `durably — durable executions, promises and cron inside Postgres

usage: durably <command> [options]     (DATABASE_URL or --url picks the database)

  dev [--worker <module>] [--group g] [--port 7777]
                                        embedded Postgres when no DATABASE_URL; migrates, prints the URL,
                                        runs a worker for the module's exported functions, serves the
                                        dashboard; Ctrl-C stops
  dashboard [--host 127.0.0.1] [--port 7777] [--read-only] [--token T]
                                        the web dashboard (another host needs --token; --port 0: any free port)
  migrate                               apply the migrations in sql/
  invoke <func> [json-args] [--id id] [--group g] [--wait] [--concurrency-key k] [--priority n]
  promises get <id> | list [--state s] [--pattern p] | resolve <id> [json] | reject <id> [message] | cancel <id>
  schedules create <id> <cron> <func> [json-args] [--timezone tz] [--group g] | list | get <id>
            | delete <id> | pause <id> | resume <id> | next <id> [n]
  tasks list
  limits set <key> [--concurrency n] [--rate n/period] | list | delete <key>
                                        flow control: key is a concurrency key, function:<name> or group:<name>;
                                        --concurrency 0 pauses it; period in ms or with a unit (20/1s, 100/1m)
  workers list
  tree <id>                             the call tree of an execution

options: --url <url>  --json  --help`;

const STATES = ['pending', 'resolved', 'rejected', 'rejected_canceled', 'rejected_timedout'];

type Flags = { url?: string; json?: boolean; help?: boolean; worker?: string; group?: string; id?: string;
  wait?: boolean; state?: string; pattern?: string; timezone?: string; host?: string; port?: string;
  'read-only'?: boolean; token?: string; 'concurrency-key'?: string; priority?: string; concurrency?: string; rate?: string };

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      url: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
      worker: { type: 'string' }, group: { type: 'string' }, id: { type: 'string' }, wait: { type: 'boolean' },
      state: { type: 'string' }, pattern: { type: 'string' }, timezone: { type: 'string' },
      host: { type: 'string' }, port: { type: 'string' }, 'read-only': { type: 'boolean' }, token: { type: 'string' },
      'concurrency-key': { type: 'string' }, priority: { type: 'string' }, concurrency: { type: 'string' }, rate: { type: 'string' },
    },
  });
  const flags = values as Flags;
  const [command, ...rest] = positionals;
  if (flags.help || !command) {
    console.log(HELP);
    return command || flags.help ? 0 : 2;
  }
  if (command === 'dev') return dev(flags);

  const url = flags.url ?? process.env.DATABASE_URL;
  if (!url) throw new InvalidArgumentError('no database: set DATABASE_URL or pass --url (or use `durably dev`)');
  const out = (rows: unknown) => print(rows, flags.json);
  if (command === 'dashboard') {
    const served = await startDashboard(url, flags);
    await stopped();
    await served.close();
    return 0;
  }

  if (command === 'migrate') {
    const sql = connect(url, { max: 1 });
    try {
      const applied = await migrate(sql);
      out(flags.json ? { applied } : applied.length ? applied.map((m) => ({ applied: m })) : [{ applied: '(up to date)' }]);
    } finally {
      await sql.end();
    }
    return 0;
  }

  // --group may be a target (poll://any@g) for invoke
  const durably = new Durably({ url, group: parseTarget(flags.group ?? 'default'), poolSize: 2, log: () => {} });
  try {
    const grouped = ['promises', 'schedules', 'tasks', 'workers', 'limits'].includes(command);
    switch (grouped ? `${command} ${rest[0] ?? ''}` : command) {
      case 'invoke': {
        const [func, json = '[]'] = rest;
        if (!func) throw new InvalidArgumentError('usage: durably invoke <func> [json-args]');
        const args = parseJson(json, 'json-args');
        const id = flags.id ?? `${func}-${Date.now().toString(36)}`;
        const handle = await durably.beginRpc(id, func, ...(Array.isArray(args) ? args : [args]),
          durably.options({ target: flags.group ?? 'default', concurrencyKey: flags['concurrency-key'],
            priority: flags.priority === undefined ? undefined : integer(flags.priority, '--priority') }));
        if (flags.wait) await handle.result().catch(() => {});
        out(await durably.promises.get(handle.id));
        return 0;
      }
      case `promises get`: out(await durably.promises.get(need(rest[1], 'id'))); return 0;
      case `promises list`:
        if (flags.state !== undefined && !STATES.includes(flags.state)) {
          throw new InvalidArgumentError(`invalid state ${JSON.stringify(flags.state)}: ${STATES.join(', ')}`);
        }
        out(await durably.promises.search(flags.pattern ?? '*', { state: flags.state as never })); return 0;
      case `promises resolve`:
        out(await durably.promises.resolve(need(rest[1], 'id'), rest[2] === undefined ? null : parseJson(rest[2], 'value'))); return 0;
      case `promises reject`:
        out(await durably.promises.reject(need(rest[1], 'id'), new Error(rest[2] ?? 'rejected'))); return 0;
      case `promises cancel`: out(await durably.promises.cancel(need(rest[1], 'id'))); return 0;
      case 'schedules create': {
        const [, id, cron, func, json = '[]'] = rest;
        if (!id || !cron || !func) throw new InvalidArgumentError('usage: durably schedules create <id> <cron> <func> [json-args]');
        const args = parseJson(json, 'json-args');
        const handle = await durably.schedule(id, cron, func, ...(Array.isArray(args) ? args : [args]),
          durably.options({ timezone: flags.timezone, group: flags.group }));
        out(await handle.get());
        return 0;
      }
      case 'schedules list':
        out((await durably.schedules.list()).map(({ id, cron, every_ms, timezone, func, group_name, paused, next_run_at, last_run_at }) =>
          ({ id, cron: cron ?? `every ${every_ms} ms`, timezone, func, group: group_name, paused, next_run_at, last_run_at })));
        return 0;
      case 'schedules get': out(await durably.schedules.get(need(rest[1], 'id'))); return 0;
      case 'schedules delete': out({ deleted: await durably.schedules.delete(need(rest[1], 'id')) }); return 0;
      case 'schedules pause': out(await durably.schedules.pause(need(rest[1], 'id'))); return 0;
      case 'schedules resume': out(await durably.schedules.resume(need(rest[1], 'id'))); return 0;
      case 'schedules next':
        out((await durably.schedules.next(need(rest[1], 'id'), Number(rest[2] ?? 5))).map((t) => ({ next: t })));
        return 0;
      case 'tasks list':
        out(await durably.sql`select promise_id, func, group_name, state, attempt, available_at, worker_id, waiting_for_worker
                               from durably.task_list order by available_at limit 200`); return 0;
      case 'limits set':
        out(await durably.limits.set(need(rest[1], 'key'), {
          concurrency: flags.concurrency === undefined ? null : integer(flags.concurrency, '--concurrency'),
          rate: flags.rate === undefined ? null : parseRate(flags.rate),
        }));
        return 0;
      case 'limits list': out(await durably.limits.list()); return 0;
      case 'limits delete': out({ deleted: await durably.limits.delete(need(rest[1], 'key')) }); return 0;
      case 'workers list':
        out(await durably.sql`select id, group_name, host, pid, array_to_string(functions, ', ') as functions, status, heartbeat_at from durably.worker_status
                               order by started_at desc limit 200`); return 0;
      case 'tree': {
        await durably.promises.get(need(rest[0], 'id'));
        out(await durably.sql`
          with recursive tree as (
            select p.*, 0 as depth, array[p.id] as path from durably.promises p where p.id = ${rest[0]}
            union all
            -- children in the order they were created (ids of siblings sort 1, 10, 2 as text)
            select c.*, t.depth + 1, t.path || (to_char(c.created_at, 'YYYYMMDDHH24MISSUS') || ' ' || c.id)
              from durably.promises c join tree t on c.parent_id = t.id)
          select repeat('  ', tree.depth) || tree.id as id, kind, func, state,
                 round(extract(epoch from (coalesce(settled_at, now()) - created_at)) * 1000)::bigint as ms
            from tree order by tree.path`);
        return 0;
      }
      default:
        console.error(`unknown command: ${[command, ...rest].join(' ')}\n\n${HELP}`);
        return 2;
    }
  } finally {
    await durably.stop();
  }
}

async function dev(flags: Flags): Promise<number> {
  const db = flags.url ? { url: flags.url, stop: async () => {} } : await databaseForDev(console.log);
  const sql = connect(db.url, { max: 1 });
  await migrate(sql);
  await sql.end();
  console.log(`DATABASE_URL=${db.url}`);
  let worker: Durably | undefined;
  if (flags.worker) {
    const mod = await import(pathToFileURL(resolve(flags.worker)).href) as Record<string, unknown>;
    worker = new Durably({ url: db.url, group: flags.group ?? 'default' });
    for (const [name, fn] of Object.entries(mod)) if (typeof fn === 'function') worker.register(name, fn as never);
    await worker.start();
    console.log(`worker ${worker.workerId} of group ${worker.group} runs: ${Object.keys(mod).join(', ')}`);
  }
  const served = await startDashboard(db.url, flags);
  console.log('up; Ctrl-C stops');
  await stopped();
  await served.close();
  await worker?.stop();
  await db.stop();
  return 0;
}

/** Serves the web dashboard as the flags say and prints its address. */
async function startDashboard(url: string, flags: Flags) {
  if (flags.port !== undefined && !/^\d{1,5}$/.test(flags.port)) throw new InvalidArgumentError(`invalid --port ${flags.port}: 0 to 65535`);
  const served = await serveDashboard({
    url, host: flags.host, port: flags.port === undefined ? undefined : Number(flags.port), readOnly: flags['read-only'], token: flags.token,
  });
  console.log(`dashboard: ${served.url}`);
  return served;
}

function stopped(): Promise<void> {
  return new Promise<void>((ok) => { process.once('SIGINT', ok); process.once('SIGTERM', ok); });
}

function need(v: string | undefined, what: string): string {
  if (!v) throw new InvalidArgumentError(`missing <${what}>`);
  return v;
}

function integer(text: string, what: string): number {
  if (!/^-?\d+$/.test(text)) throw new InvalidArgumentError(`invalid ${what} ${JSON.stringify(text)}: an integer`);
  return Number(text);
}

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** `20/1s`, `100/1m`, `5/500` (ms): starts per period. */
function parseRate(text: string): { limit: number; periodMs: number } {
  const m = /^(\d+)\/(\d+)(ms|s|m|h)?$/.exec(text);
  if (!m) throw new InvalidArgumentError(`invalid --rate ${JSON.stringify(text)}: <starts>/<period>, e.g. 20/1s, 100/1m, 5/500 (ms)`);
  return { limit: Number(m[1]), periodMs: Number(m[2]) * UNIT_MS[m[3] ?? 'ms'] };
}

function parseJson(text: string, what: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new InvalidArgumentError(`${what} is not valid JSON: ${text}`);
  }
}

function print(data: unknown, json?: boolean) {
  if (json) {
    console.log(JSON.stringify(data, null, 2));
    return;
  }
  const rows = (Array.isArray(data) ? data : [data]) as Record<string, unknown>[];
  if (rows.length === 0) {
    console.log('(none)');
    return;
  }
  const cols = Object.keys(rows[0]);
  const cell = (v: unknown) => {
    const s = v instanceof Date ? v.toISOString() : typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v ?? '');
    return s.length > 60 ? `${s.slice(0, 57)}...` : s;
  };
  const widths = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  console.log(cols.map((c, i) => c.padEnd(widths[i])).join('  '));
  for (const r of rows) console.log(cols.map((c, i) => cell(r[c]).padEnd(widths[i])).join('  '));
}

// `durably promises list | head` closes the pipe early; that is not an error.
process.stdout.on('error', (err: NodeJS.ErrnoException) => { if (err.code === 'EPIPE') process.exit(0); throw err; });

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`durably: ${(err as Error).message}`);
    const badInput = err instanceof InvalidArgumentError
      || (err instanceof DurablyError && ['NOT_FOUND', 'ALREADY_EXISTS'].includes(err.code))
      // parseArgs: an unknown option, or a value missing after one
      || String((err as { code?: unknown }).code).startsWith('ERR_PARSE_ARGS');
    process.exit(badInput ? 2 : 1);
  },
);
