/**
 * A worker process of the soak (bench/soak.ts):
 *   node --import tsx bench/soak/worker.ts
 * Configured by the environment of test/fixtures/env.ts (DATABASE_URL,
 * WORKER_NAME, CONCURRENCY, LEASE_MS, HEARTBEAT_MS, POLL_MS, GRACE_MS,
 * IN_PROCESS_SLEEP_MS) plus RETENTION_MS and SOAK_LOG, the file this process
 * appends one line per event to, written before the event's effect so that a
 * SIGKILL loses none:
 *   <ms> B <promise id>   a function body begins (order, child)
 *   <ms> T <promise id>   a schedule tick runs
 *   <ms> S <step id>      a step body begins
 *   <ms> E <step id>      a step body returned (its checkpoint comes after)
 *   <ms> C <step id>      the checkpoint of a step this process ran is stored
 * Prints `ready <worker id>` once started, `stopped` after SIGTERM.
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { setTimeout as delay } from 'node:timers/promises';
import type { Context } from '../../src/index.js';
import { durablyFromEnv, envNumber } from '../../test/fixtures/env.js';

const log = openSync(process.env.SOAK_LOG ?? '/dev/null', 'a');
const record = (event: string, id: string) => writeSync(log, `${Date.now()} ${event} ${id}\n`);

const durably = durablyFromEnv({
  group: 'soak', concurrency: 4, pollMs: 500, inProcessSleepMs: 1000, graceMs: 2000,
  retentionMs: envNumber('RETENTION_MS', 30_000),
});

/** Per function promise, the step whose body this process ran and whose checkpoint is on its way. */
const ran = new Map<string, string>();

/** A step body: long enough that kills land inside some of them. */
async function stepBody(ctx: Context, value: string): Promise<string> {
  record('S', ctx.id);
  ran.set(ctx.id.slice(0, ctx.id.lastIndexOf('.')), ctx.id);
  await delay(20 + (value.length % 5) * 10);
  record('E', ctx.id);
  return value;
}
const reserve = (ctx: Context, id: string) => stepBody(ctx, `a:${id}`);
const pack = (ctx: Context, id: string) => stepBody(ctx, `c:${id}`);
const ship = (ctx: Context, id: string) => stepBody(ctx, `b:${id}`);

/** ctx.run, recording C when it returns for a step whose body ran here. */
async function step(ctx: Context, fn: typeof reserve, id: string): Promise<string> {
  const value = await ctx.run(fn, id);
  const stepId = ran.get(ctx.id);
  if (stepId) {
    ran.delete(ctx.id);
    record('C', stepId);
  }
  return value;
}

/** The soak's workflow: a step, a durable sleep, a child call, an external promise settled from SQL, a step. */
async function order(ctx: Context, id: string, sleepMs: number) {
  record('B', ctx.id);
  const a = await step(ctx, reserve, id);
  await ctx.sleep(sleepMs);
  const c = await ctx.rpc<string>('child', id);
  const approval = await (await ctx.promise<{ ok: string }>()).result();
  const b = await step(ctx, ship, id);
  return { a, c, approval: approval.ok, b };
}

async function child(ctx: Context, id: string) {
  record('B', ctx.id);
  return step(ctx, pack, id);
}

async function tick(ctx: Context) {
  record('T', ctx.id);
  return ctx.id;
}

durably.register(order).register(child).register(tick);
await durably.start();
process.stdout.write(`ready ${durably.workerId}\n`);

process.once('SIGTERM', () => {
  void durably.stop().then(() => {
    closeSync(log);
    process.stdout.write('stopped\n');
    process.exit(0);
  }, (err) => {
    process.stderr.write(`stop failed: ${(err as Error)?.stack ?? err}\n`);
    process.exit(1);
  });
});
