/**
 * The soak's PostgreSQL: an embedded one of its own (so it may crash and
 * restart it), or the server of DATABASE_URL (then it never restarts it).
 * Either way the soak works in a database of its own, dropped at the end.
 */
import { readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { startEmbedded, type Embedded } from '../../src/embedded.js';
import { databaseUrl, plainPool } from '../lib/db.js';
import type { Sql } from '../../src/db.js';

export interface SoakServer {
  /** The soak's database. */
  url: string;
  /** A pool on it for the soak itself (application_name soak-harness, spared by storms). */
  admin: Sql;
  /** Whether restart() crashes the server: only for a server the soak started. */
  restartable: boolean;
  /** Stops the server with `-m immediate` (no checkpoint, crash recovery on start) and starts it again on the same port. */
  restart(): Promise<{ downMs: number }>;
  close(): Promise<void>;
}

export async function soakServer(run: string, givenUrl: string | undefined): Promise<SoakServer> {
  if (givenUrl) return onGivenServer(run, givenUrl);
  return onEmbeddedServer(run);
}

async function onGivenServer(run: string, url: string): Promise<SoakServer> {
  const name = `soak_${run}`;
  const server = plainPool(url, 1, 'soak-harness');
  await server.unsafe(`create database ${name}`);
  const soakUrl = databaseUrl(url, name);
  const admin = plainPool(soakUrl, 3, 'soak-harness');
  return {
    url: soakUrl, admin, restartable: false,
    restart: () => Promise.reject(new Error('the soak does not restart a server it did not start')),
    close: async () => {
      await admin.end({ timeout: 2 });
      await server.unsafe(`drop database if exists ${name} with (force)`);
      await server.end({ timeout: 2 });
    },
  };
}

async function onEmbeddedServer(run: string): Promise<SoakServer> {
  // Directly under the temporary folder: the server's own user must reach it.
  const dir = join(tmpdir(), `durably-soak-${run}`);
  let embedded: Embedded = await startEmbedded(dir, { persistent: true });
  const port = Number(new URL(embedded.url).port);
  const url = databaseUrl(embedded.url, 'soak');
  const server = plainPool(embedded.url, 1, 'soak-harness');
  await server.unsafe('create database soak');
  // Autovacuum on (the default), looking every 10 s so a short run sees it work.
  await server.unsafe(`alter system set autovacuum_naptime = '10s'`);
  await server.unsafe('select pg_reload_conf()');
  await server.end({ timeout: 2 });
  const admin = plainPool(url, 3, 'soak-harness');
  return {
    url, admin, restartable: true,
    restart: async () => {
      const postmaster = Number(readFileSync(join(dir, 'postmaster.pid'), 'utf8').split('\n')[0]);
      const down = Date.now();
      process.kill(postmaster, 'SIGQUIT'); // immediate shutdown
      while (alive(postmaster)) await delay(20);
      embedded = await startEmbedded(dir, { persistent: true, port });
      return { downMs: Date.now() - down };
    },
    close: async () => {
      await admin.end({ timeout: 2 });
      await embedded.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
