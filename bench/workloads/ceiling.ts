/**
 * The ceiling: raw single-statement commit rate of this Postgres, pgbench
 * style (one one-row INSERT per transaction, autocommit), from Node through
 * postgres.js, with 1 and 10 concurrent connections, for a few seconds each.
 */
import postgres from 'postgres';
import { fmtSummary, summarize, table, type Summary } from '../lib/stats.js';
import type { BenchContext, WorkloadResult } from '../lib/context.js';

export interface Ceiling { c1: Summary; c10: Summary }

async function commitRate(url: string, clients: number, seconds: number): Promise<number> {
  const sql = postgres(url, { max: clients, onnotice: () => {}, connection: { application_name: 'bench-ceiling' } });
  try {
    // open every connection and prepare the statement
    await Promise.all(Array.from({ length: clients }, () => sql`insert into ceiling (v) values (0)`));
    let commits = 0;
    const end = performance.now() + seconds * 1000;
    const t0 = performance.now();
    await Promise.all(Array.from({ length: clients }, async () => {
      while (performance.now() < end) {
        await sql`insert into ceiling (v) values (1)`;
        commits++;
      }
    }));
    return (commits / (performance.now() - t0)) * 1000;
  } finally {
    await sql.end({ timeout: 2 });
  }
}

export async function ceiling(ctx: BenchContext): Promise<WorkloadResult & { ceiling: Ceiling }> {
  const { dbs, opts, log } = ctx;
  const r1: number[] = [];
  const r10: number[] = [];
  const url = await dbs.empty('ceiling');
  try {
    const sql = postgres(url, { max: 1, onnotice: () => {} });
    await sql`create table ceiling (id bigserial primary key, v integer not null)`;
    await sql.end();
    for (let rep = 0; rep < opts.reps; rep++) {
      await dbs.checkpoint();
      r1.push(await commitRate(url, 1, opts.ceilingSeconds));
      await dbs.checkpoint();
      r10.push(await commitRate(url, 10, opts.ceilingSeconds));
      log(`ceiling rep ${rep + 1}: 1 connection ${r1.at(-1)!.toFixed(0)} commits/s, 10 connections ${r10.at(-1)!.toFixed(0)} commits/s`);
    }
  } finally {
    await dbs.drop(url);
  }
  const c = { c1: summarize(r1), c10: summarize(r10) };
  return {
    name: 'ceiling',
    ceiling: c,
    tables: [table(`0. Ceiling: one-row INSERT per transaction from Node (postgres.js), ${opts.ceilingSeconds} s each — median (min–max) of ${opts.reps}`,
      ['connections', 'commits /s', 'one commit, ms'], [
        ['1', fmtSummary(c.c1), (1000 / c.c1.median).toFixed(3)],
        ['10', fmtSummary(c.c10), ''],
      ])],
    data: c as unknown as Record<string, unknown>,
    violations: [],
  };
}
