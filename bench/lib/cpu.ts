/**
 * CPU time of the PostgreSQL instance under test, read from /proc when it
 * runs on this machine: the postmaster and every process it started
 * (backends, WAL writer, checkpointer...), plus what its children that
 * exited used (the postmaster's cutime/cstime: a pool that disconnects during
 * a trial is still counted). Unavailable (undefined) for a server elsewhere.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import type { Sql } from '../../src/db.js';

/** utime, stime, cutime, cstime (clock ticks) and the parent of process `pid`; undefined if it is gone. */
function stat(pid: number): { ppid: number; comm: string; ticks: number; childTicks: number } | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // comm is in parentheses and may hold spaces: the fields after it are split from its last ')'
  const comm = text.slice(text.indexOf('(') + 1, text.lastIndexOf(')'));
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // f[0] is field 3 (state): utime is field 14, so f[11]
  return { ppid: Number(f[1]), comm, ticks: Number(f[11]) + Number(f[12]), childTicks: Number(f[13]) + Number(f[14]) };
}

function clockTicksPerSecond(): number {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
}

export class ServerCpu {
  private readonly hz = clockTicksPerSecond();

  private constructor(private readonly postmaster: number) {}

  /** The server `sql` is connected to, if it runs here. */
  static async locate(sql: Sql): Promise<ServerCpu | undefined> {
    if (process.platform !== 'linux') return undefined;
    const [{ pid, addr }] = await sql<{ pid: number; addr: string | null }[]>`
      select pg_backend_pid() as pid, host(inet_server_addr()) as addr`;
    if (addr !== null && addr !== '127.0.0.1' && addr !== '::1') return undefined;
    const backend = stat(pid);
    const postmaster = backend && stat(backend.ppid);
    return backend && postmaster && /postgres/.test(postmaster.comm) ? new ServerCpu(backend.ppid) : undefined;
  }

  /** CPU seconds the instance has used so far. */
  seconds(): number {
    const own = stat(this.postmaster);
    if (!own) return NaN;
    let ticks = own.ticks + own.childTicks;
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      const s = stat(Number(name));
      if (s?.ppid === this.postmaster) ticks += s.ticks;
    }
    return ticks / this.hz;
  }
}

/** This process's CPU seconds so far (user + system). */
export function processCpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}
