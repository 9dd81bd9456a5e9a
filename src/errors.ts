/** Every error durably raises is a DurablyError with a stable `code`. */
export class DurablyError extends Error {
  constructor(readonly code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A bad argument: nothing was written. */
export class InvalidArgumentError extends DurablyError {
  constructor(message: string) { super('INVALID_ARGUMENT', message); }
}

export class NotFoundError extends DurablyError {
  constructor(message: string) { super('NOT_FOUND', message); }
}

/** A schedule with this id and another definition exists. */
export class AlreadyExistsError extends DurablyError {
  constructor(message: string) { super('ALREADY_EXISTS', message); }
}

/** A replay reached a step other than the one stored at that position. */
export class NonDeterminismError extends DurablyError {
  constructor(message: string) { super('NON_DETERMINISM', message); }
}

/** The state a promise settled in, other than resolved. */
export type RejectedState = 'rejected' | 'rejected_canceled' | 'rejected_timedout';

/**
 * Thrown by `result()` for a promise that did not resolve. `name`, `message`
 * and `stack` are the recorded error's; `value` is the stored JSON as is.
 */
export class PromiseRejectedError extends DurablyError {
  constructor(readonly promiseId: string, readonly state: RejectedState, readonly value: unknown) {
    const v = (value ?? {}) as { name?: unknown; message?: unknown; stack?: unknown };
    super(codeOf(state), typeof v.message === 'string' ? v.message : `promise ${promiseId} ${state}`);
    if (typeof v.name === 'string') this.name = v.name;
    if (typeof v.stack === 'string') this.stack = v.stack;
  }
}

function codeOf(state: RejectedState): string {
  return state === 'rejected_canceled' ? 'CANCELED' : state === 'rejected_timedout' ? 'TIMED_OUT' : 'REJECTED';
}

/** Turns a database error raised by a durably procedure into its typed error. */
export function fromDatabase(err: unknown): unknown {
  const e = err as { code?: string; message?: string };
  switch (e?.code) {
    case 'DU001':
    case 'DU002': return new InvalidArgumentError(e.message ?? 'invalid argument');
    case 'DU003': return new NotFoundError(e.message ?? 'not found');
    case 'DU004': return new AlreadyExistsError(e.message ?? 'already exists');
    default: return err;
  }
}

/** A JSON-safe record of an error: what promises store when they reject. */
export interface ErrorValue {
  name: string;
  message: string;
  stack?: string;
  code?: string;
  attempt?: number;
}

export function toErrorValue(err: unknown, attempt?: number): ErrorValue {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return {
      name: err.name,
      message: err.message,
      ...(err.stack ? { stack: err.stack } : {}),
      ...(typeof code === 'string' ? { code } : {}),
      ...(attempt !== undefined ? { attempt } : {}),
    };
  }
  return { name: 'Error', message: typeof err === 'string' ? err : safeJson(err), ...(attempt !== undefined ? { attempt } : {}) };
}

function safeJson(v: unknown): string {
  try { return JSON.stringify(v) ?? String(v); } catch { return String(v); }
}
