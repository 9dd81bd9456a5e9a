/**
 * Databases for the benchmarks: every run makes its own (bench_<run>_*), never
 * touching test databases, and drops them at the end. Two migrated templates
 * (durably, graphile-worker) are made once per run; each trial copies one, so
 * every trial starts from an empty, freshly migrated database.
 */
import { randomBytes } from 'node:crypto';
import postgres from 'postgres';
import { connect, textArray, type Sql } from '../../src/db.js';
import { migrate } from '../../src/migrate.js';
import { makeWorkerUtils, Logger } from 'graphile-worker';

export const silentLogger = new Logger(() => () => {});

export function databaseUrl(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

/** A postgres.js pool with array types fetched (bench-only helper pools). */
export function plainPool(url: string, max = 2, name = 'bench'): Sql {
  return postgres(url, { max, onnotice: () => {}, connection: { application_name: name } }) as unknown as Sql;
}

export class BenchDatabases {
  readonly run = randomBytes(3).toString('hex');
  private readonly admin: Sql;
  private readonly created = new Set<string>();
  private seq = 0;
  private templates?: Promise<{ durably: string; graphile: string }>;

  constructor(readonly adminUrl: string) {
    this.admin = plainPool(adminUrl, 1, 'bench-admin');
  }

  get sql(): Sql {
    return this.admin;
  }

  private async create(name: string, template = 'template0'): Promise<void> {
    // CREATE DATABASE fails when someone else is connected to the template at that instant: retry.
    for (let i = 0; ; i++) {
      try {
        await this.admin.unsafe(`create database ${name} template ${template}`);
        this.created.add(name);
        return;
      } catch (err) {
        if (i >= 20 || !/being accessed by other users/.test((err as Error).message)) throw err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  private makeTemplates() {
    this.templates ??= (async () => {
      const durably = `bench_${this.run}_tpl_durably`;
      const graphile = `bench_${this.run}_tpl_graphile`;
      await this.create(durably);
      await this.create(graphile);
      const sql = connect(databaseUrl(this.adminUrl, durably), { max: 1, name: 'bench-migrate' });
      await migrate(sql);
      await sql.end();
      const utils = await makeWorkerUtils({ connectionString: databaseUrl(this.adminUrl, graphile), logger: silentLogger });
      await utils.migrate();
      await utils.release();
      return { durably, graphile };
    })();
    return this.templates;
  }

  /** A fresh migrated database for one trial; its URL. */
  async fresh(system: 'durably' | 'graphile', label: string): Promise<string> {
    const tpl = (await this.makeTemplates())[system];
    const name = `bench_${this.run}_${system === 'durably' ? 'd' : 'g'}_${label.replace(/[^a-z0-9]/gi, '').toLowerCase()}_${++this.seq}`;
    await this.create(name, tpl);
    return databaseUrl(this.adminUrl, name);
  }

  /** An empty database (no schema). */
  async empty(label: string): Promise<string> {
    const name = `bench_${this.run}_${label}_${++this.seq}`;
    await this.create(name);
    return databaseUrl(this.adminUrl, name);
  }

  async drop(url: string): Promise<void> {
    const name = new URL(url).pathname.slice(1);
    // Let pools that are closing disconnect by themselves first: a forced drop
    // terminates their idle connections, which some pools report as errors.
    for (let i = 0; i < 100; i++) {
      const [{ n }] = await this.admin`select count(*)::int as n from pg_stat_activity where datname = ${name}`;
      if (n === 0) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    await this.admin.unsafe(`drop database if exists ${name} with (force)`);
    this.created.delete(name);
  }

  /** Flushes dirty buffers so a trial does not pay for the previous one's writes. */
  async checkpoint(): Promise<void> {
    await this.admin.unsafe('checkpoint').catch(() => {});
  }

  async dropAll(): Promise<void> {
    // Drop trial databases before the templates they were copied from.
    const names = [...this.created].sort((a, b) => Number(a.includes('_tpl_')) - Number(b.includes('_tpl_')));
    for (const name of names) {
      await this.admin.unsafe(`drop database if exists ${name} with (force)`).catch((e) => {
        console.error(`could not drop ${name}: ${(e as Error).message}`);
      });
    }
    this.created.clear();
    await this.admin.end({ timeout: 5 });
  }

  async serverInfo(): Promise<{ version: string; synchronousCommit: string; maxConnections: string }> {
    const [{ version }] = await this.admin`select version()`;
    const [{ synchronous_commit }] = await this.admin`show synchronous_commit`;
    const [{ max_connections }] = await this.admin`show max_connections`;
    return { version, synchronousCommit: synchronous_commit, maxConnections: max_connections };
  }
}

/** Enqueues `ids` through durably.invoke_many in chunks (one statement, one NOTIFY per chunk). */
export async function invokeMany(sql: Sql, ids: string[], func: string, args: (i: number) => unknown[], group: string,
  chunk = 1000): Promise<number> {
  let created = 0;
  for (let i = 0; i < ids.length; i += chunk) {
    const part = ids.slice(i, i + chunk);
    const [{ n }] = await sql`
      select count(*) filter (where created)::int as n from durably.invoke_many(
        ${textArray(part)}::text[], ${textArray(part.map(() => func))}::text[],
        ${textArray(part.map((_, j) => JSON.stringify(args(i + j))))}::text[]::jsonb[], ${group})`;
    created += n;
  }
  return created;
}
