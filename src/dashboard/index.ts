/**
 * The web dashboard: `dashboard(options)` is a Node `(req, res)` handler to
 * mount in an application's server; `serveDashboard` runs it on its own
 * server (the `durably dashboard` and `durably dev` commands).
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { connect, defaultUrl, type Sql } from '../db.js';
import { InvalidArgumentError } from '../errors.js';
import { createHandler } from './handler.js';

export interface DashboardOptions {
  /** Postgres URL (default DATABASE_URL), or */
  url?: string;
  /** a postgres.js pool of the application's (not closed by close()). */
  sql?: Sql;
  /** No action buttons; every action answers 403. */
  readOnly?: boolean;
  /** Every request needs it: `Authorization: Bearer <token>`, or `?token=<token>` once (sets a cookie). */
  token?: string;
  /** Where the handler is mounted, e.g. `/admin/durably` (default: the root). */
  basePath?: string;
}

/** A Node request handler; close() ends its event streams (and its pool, when it made one). */
export type DashboardHandler = ((req: IncomingMessage, res: ServerResponse) => void) & { close(): Promise<void> };

export function dashboard(options: DashboardOptions = {}): DashboardHandler {
  if (options.token !== undefined && (typeof options.token !== 'string' || options.token.length < 8)) {
    throw new InvalidArgumentError('the dashboard token must be a string of at least 8 characters');
  }
  const basePath = options.basePath ?? '';
  if (basePath !== '' && !/^\/[A-Za-z0-9._~\-/]*$/.test(basePath)) {
    throw new InvalidArgumentError(`invalid basePath ${JSON.stringify(basePath)}: a path such as /admin/durably`);
  }
  const url = options.sql ? undefined : options.url ?? defaultUrl();
  if (!options.sql && !url) throw new InvalidArgumentError('no database: pass { url } or { sql }, or set DATABASE_URL');
  const sql = options.sql ?? connect(url!, { max: 4, name: 'durably-dashboard' });
  const { handle, close } = createHandler({ sql, readOnly: options.readOnly ?? false, token: options.token, basePath });
  return Object.assign((req: IncomingMessage, res: ServerResponse) => void handle(req, res), {
    close: async () => {
      await close();
      if (!options.sql) await sql.end({ timeout: 1 });
    },
  });
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1']);

export interface ServeOptions extends Omit<DashboardOptions, 'basePath'> {
  /** Default 127.0.0.1; any other host needs a token. */
  host?: string;
  /** Default 7777; 0 picks a free port. */
  port?: number;
}

/** Serves the dashboard on its own HTTP server; `url` is its address (with the real port). */
export async function serveDashboard(options: ServeOptions = {}): Promise<{ url: string; close(): Promise<void> }> {
  const host = options.host ?? '127.0.0.1';
  const port = options.port ?? 7777;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new InvalidArgumentError(`invalid port ${port}: 0 to 65535`);
  if (!LOOPBACK.has(host) && !options.token) {
    throw new InvalidArgumentError(`refusing to serve the dashboard on ${host} without a token: anyone who reaches it could read and cancel work; pass --token or bind to 127.0.0.1`);
  }
  const handler = dashboard(options);
  const server = createServer(handler);
  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen(port, host, () => ok());
  });
  const { port: real } = server.address() as AddressInfo;
  const shown = host.includes(':') ? `[${host}]` : host;
  return {
    url: `http://${shown}:${real}/`,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((ok) => server.close(() => ok()));
      await handler.close();
    },
  };
}
