import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import type { Sql } from './db.js';
import { DurablyError } from './errors.js';

const SQL_DIR = fileURLToPath(new URL('../sql/', import.meta.url));

export interface Migration {
  version: number;
  name: string;
  text: string;
}

/** The migrations shipped with this version, in order (`sql/NNNN_name.sql`). */
export function migrations(): Migration[] {
  return readdirSync(SQL_DIR)
    .filter((f) => /^\d{4}_.*\.sql$/.test(f))
    .sort()
    .map((f) => ({
      version: Number(f.slice(0, 4)),
      name: f.replace(/\.sql$/, ''),
      text: readFileSync(join(SQL_DIR, f), 'utf8'),
    }));
}

/**
 * Brings schema `durably` up to date. Safe with many processes at once: a
 * transaction-scoped advisory lock makes them take turns, and each one applies
 * only what is missing. Refuses a database migrated by a newer durably.
 */
export async function migrate(sql: Sql): Promise<string[]> {
  const known = migrations();
  return sql.begin(async (tx) => {
    await tx`select pg_advisory_xact_lock(hashtext('durably.migrate'))`;
    await tx`create schema if not exists durably`;
    await tx`create table if not exists durably.migrations (
      version integer primary key, name text not null, applied_at timestamptz not null default now())`;
    const applied = new Set((await tx`select version from durably.migrations`).map((r) => r.version as number));
    const newest = Math.max(0, ...applied);
    const latest = known.at(-1)?.version ?? 0;
    if (newest > latest) {
      throw new DurablyError('SCHEMA_TOO_NEW',
        `the database schema is at version ${newest}, newer than this durably knows (${latest}); upgrade durably`);
    }
    const done: string[] = [];
    for (const m of known) {
      if (applied.has(m.version)) continue;
      await tx.unsafe(m.text);
      await tx`insert into durably.migrations (version, name) values (${m.version}, ${m.name})`;
      done.push(m.name);
    }
    return done;
  });
}
