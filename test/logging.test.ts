/**
 * The log option: a structured (pino-like) logger gets every line with its
 * fields, and every line about an execution carries promise_id, function,
 * group and attempt; a function gets concise text for warnings and errors;
 * anything else is a typed error.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Durably, InvalidArgumentError, type Context } from '../src/index.js';
import { toLogger, type Logger, type LogOption } from '../src/log.js';
import { testDatabase } from './helpers/db.js';
import { waitFor } from './helpers/wait.js';
import { within } from './helpers/processes.js';

const db = await testDatabase();
const uid = (prefix: string) => `${prefix}-${randomBytes(4).toString('hex')}`;

interface Line {
  level: string;
  fields: Record<string, unknown>;
  message: string;
}

/** Keeps its lines in a private field: its methods work only when called on it, as pino's do. */
class RecordingLogger implements Logger {
  #lines: Line[] = [];
  get lines(): Line[] { return this.#lines; }
  debug(fields: Record<string, unknown>, message: string) { this.#lines.push({ level: 'debug', fields, message }); }
  info(fields: Record<string, unknown>, message: string) { this.#lines.push({ level: 'info', fields, message }); }
  warn(fields: Record<string, unknown>, message: string) { this.#lines.push({ level: 'warn', fields, message }); }
  error(fields: Record<string, unknown>, message: string) { this.#lines.push({ level: 'error', fields, message }); }
}

function worker(t: TestContext, group: string, log: LogOption): Durably {
  const d = new Durably({ url: db.url, group, pollMs: 100, log });
  t.after(() => d.stop());
  return d;
}

test('a structured logger: every line about an execution carries promise_id, function, group and attempt', async (t) => {
  const logger = new RecordingLogger();
  const group = uid('structured');
  const d = worker(t, group, logger);
  d.register('flaky', async (ctx: Context) => {
    if (ctx.attempt === 1) throw new Error('first attempt fails');
    return 'ok';
  }, { retry: { kind: 'constant', delayMs: 10, maxAttempts: 2 } });
  await d.start();
  const id = uid('flaky');
  assert.equal(await within(d.run(id, 'flaky'), 10_000, 'the function'), 'ok');

  const lines = await waitFor(() => {
    const about = logger.lines.filter((l) => l.fields.promise_id === id);
    return about.length === 2 ? about : null;
  }, { what: 'a line per attempt' });
  assert.deepEqual(lines.map((l) => [l.level, l.message, l.fields.attempt, l.fields.outcome]), [
    ['info', 'execution failed, to be retried', 1, 'retry'],
    ['debug', 'execution resolved', 2, 'resolved'],
  ]);
  for (const l of lines) {
    assert.equal(l.fields.function, 'flaky');
    assert.equal(l.fields.group, group);
    assert.equal(typeof l.fields.duration_ms, 'number');
  }
  assert.equal(lines[0].fields.error, 'first attempt fails');
});

test('a function gets warnings and errors as concise text with the fields appended; the default writes to stderr', (t) => {
  const written: string[] = [];
  const log = toLogger((line) => written.push(line));
  log.debug({ promise_id: 'p' }, 'not shown');
  log.info({ promise_id: 'p' }, 'not shown either');
  log.warn({ promise_id: 'p-1', function: 'f', group: 'g', attempt: 2 }, 'retry task failed');
  log.error({}, 'plain');
  assert.deepEqual(written, ['retry task failed (promise_id=p-1 function=f group=g attempt=2)', 'plain']);

  const stderr: unknown[] = [];
  t.mock.method(console, 'error', (...args: unknown[]) => { stderr.push(args.join(' ')); });
  toLogger(undefined).warn({ group: 'g' }, 'claim failed');
  toLogger(undefined).info({ group: 'g' }, 'quiet by default');
  assert.deepEqual(stderr, ['[durably] claim failed (group=g)']);
});

test('a log option that is neither a function nor a logger: a typed error naming what is missing, nothing started', () => {
  assert.throws(() => new Durably({ url: db.url, log: { info() {}, warn() {} } as unknown as Logger }),
    (err: unknown) => err instanceof InvalidArgumentError && /missing debug, error/.test((err as Error).message));
  assert.throws(() => new Durably({ url: db.url, log: 'verbose' as unknown as Logger }), InvalidArgumentError);
});
