/**
 * Child processes for tests: long-running ones (workers, consumers) started
 * with `spawnChild` and waited on by their output, short ones (CLI commands,
 * scripts) run to completion with `runProcess`; `within` bounds any wait.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { TestContext } from 'node:test';
import { waitFor } from './wait.js';

export interface Child {
  name: string;
  proc: ChildProcess;
  /** Everything printed so far. */
  stdout: string;
  stderr: string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  alive(): boolean;
  /** Waits until stdout matches (a string is looked for as is); returns the match. */
  waitForOutput(pattern: string | RegExp, timeoutMs?: number): Promise<RegExpMatchArray | string>;
  /** SIGKILL, and wait for the exit. */
  kill(): Promise<void>;
}

export interface SpawnOptions {
  /** Added to the parent's environment (NODE_TEST_CONTEXT is removed). */
  env?: Record<string, string | undefined>;
  /** Arguments after the script. */
  args?: string[];
  /** Waits for this on stdout before returning (default `ready`; null: do not wait). */
  ready?: string | RegExp | null;
  readyTimeoutMs?: number;
  cwd?: string;
}

function childEnv(env: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = { ...process.env, ...env };
  // a child started by a test is not a test runner's child itself
  delete out.NODE_TEST_CONTEXT;
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete out[k];
  return out;
}

/**
 * Starts `node --import tsx <script>` and waits for its ready line; the child
 * is killed (SIGKILL) after the test if it still runs. Exiting before ready
 * fails with its stderr.
 */
export async function spawnChild(t: TestContext, name: string, script: string, opts: SpawnOptions = {}): Promise<Child> {
  const proc = spawn(process.execPath, ['--import', 'tsx', script, ...(opts.args ?? [])], {
    env: childEnv(opts.env), cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((ok) =>
    proc.once('exit', (code, signal) => ok({ code, signal })));
  const child: Child = {
    name, proc, stdout: '', stderr: '', exited,
    alive: () => proc.exitCode === null && proc.signalCode === null,
    waitForOutput: async (pattern, timeoutMs = 20_000) => {
      const match = () => (typeof pattern === 'string' ? (child.stdout.includes(pattern) ? pattern : null) : child.stdout.match(pattern));
      const found = await Promise.race([
        waitFor(match, { timeoutMs, what: `${name} to print ${pattern}` }),
        exited.then(async ({ code, signal }) => {
          await new Promise((ok) => setTimeout(ok, 50)); // the last output may still be in the pipe
          const m = match();
          if (m) return m;
          throw new Error(`${name} exited (${code ?? signal}) before printing ${pattern}:\n${child.stdout}\n${child.stderr}`);
        }),
      ]);
      return found;
    },
    kill: async () => {
      if (child.alive()) proc.kill('SIGKILL');
      await exited;
    },
  };
  proc.stdout!.setEncoding('utf8').on('data', (s: string) => { child.stdout += s; });
  proc.stderr!.setEncoding('utf8').on('data', (s: string) => { child.stderr += s; });
  t.after(() => child.kill());
  if (opts.ready !== null) await child.waitForOutput(opts.ready ?? 'ready', opts.readyTimeoutMs ?? 30_000);
  return child;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end (killed after `timeoutMs`, which fails). */
export async function runProcess(
  command: string, args: string[], opts: { env?: Record<string, string | undefined>; timeoutMs?: number; cwd?: string } = {},
): Promise<RunResult> {
  const proc = spawn(command, args, { env: childEnv(opts.env), cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s; });
  proc.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
  const timeoutMs = opts.timeoutMs ?? 30_000;
  let timer: NodeJS.Timeout | undefined;
  const done = new Promise<RunResult>((ok, fail) => {
    proc.once('error', fail);
    proc.once('close', (code, signal) => ok({ code, signal, stdout, stderr }));
  });
  try {
    return await Promise.race([
      done,
      new Promise<never>((_, fail) => {
        timer = setTimeout(() => {
          proc.kill('SIGKILL');
          fail(new Error(`${command} ${args.join(' ')} did not finish within ${timeoutMs} ms\n${stdout}\n${stderr}`));
        }, timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** `p`, or a failure naming `what` after `ms`. */
export async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, fail) => { timer = setTimeout(() => fail(new Error(`timed out after ${ms} ms: ${what}`)), ms); }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
