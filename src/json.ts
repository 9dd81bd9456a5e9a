import { InvalidArgumentError } from './errors.js';

/** Largest JSON payload (args or value) accepted, in bytes. */
export const MAX_PAYLOAD_BYTES = 1024 * 1024;

/** Largest tags (as JSON) and cancel reason accepted, in bytes. */
export const MAX_TAGS_BYTES = 64 * 1024;

/**
 * Checks that `value` survives a JSON round trip unchanged (no functions,
 * undefined, BigInt, NaN, class instances or cycles), that PostgreSQL can
 * store it (jsonb refuses NUL characters and lone surrogates in strings), and
 * that it is not oversized. Returns its JSON text; `what` names the value in
 * the error.
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

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

function checkText(s: string, path: string): void {
  if (s.includes('\u0000')) throw new InvalidArgumentError(`${path} holds a NUL character (\\u0000), which PostgreSQL cannot store`);
  if (LONE_SURROGATE.test(s)) {
    throw new InvalidArgumentError(`${path} holds a lone surrogate (half of a UTF-16 pair), which PostgreSQL cannot store`);
  }
}

function check(v: unknown, path: string, seen: Set<object>): void {
  switch (typeof v) {
    case 'string':
      checkText(v, path);
      return;
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
      for (const [k, child] of Object.entries(v)) {
        if (!Array.isArray(v)) checkText(k, `a key of ${path}`);
        check(child, Array.isArray(v) ? `${path}[${k}]` : `${path}.${k}`, seen);
      }
      seen.delete(v);
      return;
    }
    default:
      throw new InvalidArgumentError(`${path} is ${typeof v === 'undefined' ? 'undefined' : `a ${typeof v}`}, which JSON cannot hold`);
  }
}
