import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import type { Sql, TransactionSql } from './db.js';
import { DurablyError } from './errors.js';

const SQL_DIR = fileURLToPath(new URL('../sql/', import.meta.url));

/**
 * The definition files (`sql/<name>.sql`), in the order they are applied:
 * each holds the current definition of every function and view of one
 * concept, written to be applied again at any time. A file may use what the
 * files before it define (metrics reads the public API's worker_status).
 */
export const DEFINITIONS = ['cron', 'promises', 'tasks', 'workers', 'schedules', 'retention', 'limits', 'public_api', 'metrics'] as const;

export interface Migration {
  version: number;
  name: string;
  text: string;
}

export interface Definition {
  name: string;
  text: string;
  hash: string;
}

/** The numbered migrations shipped with this version, in order (`sql/migrations/NNNN_name.sql`). */
export function migrations(): Migration[] {
  const dir = join(SQL_DIR, 'migrations');
  return readdirSync(dir)
    .filter((f) => /^\d{4}_.*\.sql$/.test(f))
    .sort()
    .map((f) => ({
      version: Number(f.slice(0, 4)),
      name: f.replace(/\.sql$/, ''),
      text: readFileSync(join(dir, f), 'utf8'),
    }));
}

/** The definition files shipped with this version, in the order they are applied. */
export function definitions(): Definition[] {
  return DEFINITIONS.map((name) => {
    const text = readFileSync(join(SQL_DIR, `${name}.sql`), 'utf8');
    return { name, text, hash: createHash('sha256').update(text).digest('hex') };
  });
}

const VERSION: string = JSON.parse(readFileSync(fileURLToPath(new URL('../package.json', import.meta.url)), 'utf8')).version;

/**
 * Brings schema `durably` up to date: the pending numbered migrations (tables,
 * indexes, types, roles, data), then every definition file whose content
 * differs from the one recorded (all of them after a migration, which may
 * have dropped or changed what they define). One transaction under an
 * advisory lock, so many processes may start at once and each applies only
 * what is missing. Refuses a database migrated by a newer durably.
 */
export async function migrate(sql: Sql): Promise<string[]> {
  const known = migrations();
  const defined = definitions();
  return sql.begin(async (tx) => {
    // Migrations of large tables, and waiting for another migrator, may take
    // longer than the statement_timeout durably's connections carry (db.ts).
    await tx`set local statement_timeout = 0`;
    await tx`select pg_advisory_xact_lock(hashtext('durably.migrate'))`;
    await tx`create schema if not exists durably`;
    await tx`create table if not exists durably.migrations (
      version integer primary key, name text not null, applied_at timestamptz not null default now())`;
    await tx`create table if not exists durably.definitions (
      name text primary key, hash text not null, version text not null, applied_at timestamptz not null default now())`;
    const applied = new Set((await tx`select version from durably.migrations`).map((r) => r.version as number));
    const recorded = new Map((await tx`select name, hash, version from durably.definitions`)
      .map((r) => [r.name as string, r as unknown as { hash: string; version: string }]));
    refuseNewer(applied, known, recorded);

    const done: string[] = [];
    for (const m of known) {
      if (applied.has(m.version)) continue;
      await tx.unsafe(m.text);
      await tx`insert into durably.migrations (version, name) values (${m.version}, ${m.name})`;
      done.push(m.name);
    }
    const changed = done.length > 0 ? defined : defined.filter((d) => recorded.get(d.name)?.hash !== d.hash);
    for (const d of changed) {
      await tx.unsafe(d.text);
      await record(tx, d);
      done.push(d.name);
    }
    if (changed.length > 0) await tx`select durably.grant_public_api()`;
    return done;
  });
}

function refuseNewer(applied: Set<number>, known: Migration[], recorded: Map<string, { version: string }>): void {
  const newest = Math.max(0, ...applied);
  const latest = known.at(-1)?.version ?? 0;
  if (newest > latest) {
    throw new DurablyError('SCHEMA_TOO_NEW',
      `the database schema is at version ${newest}, newer than this durably knows (${latest}); upgrade durably`);
  }
  for (const [name, { version }] of recorded) {
    if (compareVersions(version, VERSION) > 0) {
      throw new DurablyError('SCHEMA_TOO_NEW',
        `the definitions in sql/${name}.sql were applied by durably ${version}, newer than this one (${VERSION}); upgrade durably`);
    }
  }
}

function record(tx: TransactionSql, d: Definition) {
  return tx`insert into durably.definitions (name, hash, version) values (${d.name}, ${d.hash}, ${VERSION})
            on conflict (name) do update set hash = excluded.hash, version = excluded.version, applied_at = now()`;
}

/** Compares dotted numeric versions (`0.10.1` > `0.9.3`); pre-release suffixes are ignored. */
function compareVersions(a: string, b: string): number {
  const pa = a.split(/[.-]/).map(Number);
  const pb = b.split(/[.-]/).map(Number);
  for (let i = 0; i < 3; i++) {
    const d = (pa[i] || 0) - (pb[i] || 0);
    if (d !== 0) return d;
  }
  return 0;
}
