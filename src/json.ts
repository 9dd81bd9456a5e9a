import { InvalidArgumentError } from './errors.js';

/** Largest JSON payload (args or value) accepted, in bytes. */
export const MAX_PAYLOAD_BYTES = 1024 * 1024;

/**
 * Checks that `value` survives a JSON round trip unchanged (no functions,
 * undefined, BigInt, NaN, class instances or cycles) and is not oversized.
 * Returns its JSON text; `what` names the value in the error.
 */
export function toJson(value: unknown, what: string): string {
  check(value, what, new Set());
  const text = JSON.stringify(value ?? null);
  const bytes = Buffer.byteLength(text);
  if (bytes > MAX_PAYLOAD_BYTES) {
    throw new InvalidArgumentError(`${what} is ${bytes} bytes of JSON; the limit is ${MAX_PAYLOAD_BYTES}`);
  }
  return text;
}

function check(v: unknown, path: string, seen: Set<object>): void {
  switch (typeof v) {
    case 'string':
    case 'boolean':
      return;
    case 'number':
      if (!Number.isFinite(v)) throw new InvalidArgumentError(`${path} is ${v}, which JSON cannot hold`);
      return;
    case 'object': {
      if (v === null) return;
      if (seen.has(v)) throw new InvalidArgumentError(`${path} refers to itself (a cycle), which JSON cannot hold`);
      const proto = Object.getPrototypeOf(v);
      if (!Array.isArray(v) && proto !== Object.prototype && proto !== null) {
        throw new InvalidArgumentError(`${path} is a ${proto?.constructor?.name ?? 'class'} instance; pass plain JSON data`);
      }
      seen.add(v);
      for (const [k, child] of Object.entries(v)) check(child, Array.isArray(v) ? `${path}[${k}]` : `${path}.${k}`, seen);
      seen.delete(v);
      return;
    }
    default:
      throw new InvalidArgumentError(`${path} is ${typeof v === 'undefined' ? 'undefined' : `a ${typeof v}`}, which JSON cannot hold`);
  }
}
