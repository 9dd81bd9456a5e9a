import { InvalidArgumentError } from './errors.js';

/** Fields first, then the message: the calling convention of pino and bunyan. */
export type LogMethod = (fields: Record<string, unknown>, message: string) => void;

/** A structured logger such as pino's. */
export interface Logger {
  debug: LogMethod;
  info: LogMethod;
  warn: LogMethod;
  error: LogMethod;
}

/** The `log` option: a structured logger, or a function that takes one line of text. */
export type LogOption = Logger | ((message: string) => void);

/** What every line about an execution carries. */
export interface ExecutionFields {
  promise_id: string;
  function: string;
  group: string;
  attempt: number;
}

const LEVELS = ['debug', 'info', 'warn', 'error'] as const;

/**
 * The logger durably writes to. A structured logger gets every line with its
 * fields; a function (the default writes to stderr) gets the warnings and
 * errors only, as concise text with the fields appended.
 */
export function toLogger(option: LogOption | undefined): Logger {
  if (option !== undefined && typeof option === 'object' && option !== null) {
    const missing = LEVELS.filter((level) => typeof option[level] !== 'function');
    if (missing.length > 0) {
      throw new InvalidArgumentError(`invalid log option: a logger needs methods debug, info, warn and error (missing ${missing.join(', ')})`);
    }
    // Called as methods: pino's depend on `this`.
    return {
      debug: (fields, message) => option.debug(fields, message),
      info: (fields, message) => option.info(fields, message),
      warn: (fields, message) => option.warn(fields, message),
      error: (fields, message) => option.error(fields, message),
    };
  }
  if (option !== undefined && typeof option !== 'function') {
    throw new InvalidArgumentError('invalid log option: a function taking a line of text, or a logger with debug, info, warn and error');
  }
  const write = option ?? ((line: string) => console.error(`[durably] ${line}`));
  const text: LogMethod = (fields, message) => write(textLine(fields, message));
  const quiet: LogMethod = () => {};
  return { debug: quiet, info: quiet, warn: text, error: text };
}

/** `message (key=value ...)`, or the message alone when there are no fields. */
function textLine(fields: Record<string, unknown>, message: string): string {
  const pairs = Object.entries(fields).map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`);
  return pairs.length > 0 ? `${message} (${pairs.join(' ')})` : message;
}
