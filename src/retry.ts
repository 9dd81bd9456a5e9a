import { InvalidArgumentError } from './errors.js';

/** How a failed function or step is retried. `maxAttempts` counts the first try. */
export type RetryPolicy =
  | { kind: 'exponential'; initialMs?: number; factor?: number; maxMs?: number; maxAttempts?: number; jitter?: boolean }
  | { kind: 'linear'; delayMs?: number; maxAttempts?: number }
  | { kind: 'constant'; delayMs?: number; maxAttempts?: number }
  | { kind: 'never' };

export const DEFAULT_RETRY: RetryPolicy = { kind: 'exponential', initialMs: 1000, factor: 2, maxMs: 60_000, maxAttempts: 5, jitter: true };

/** Delay before attempt `attempt + 1` after attempt `attempt` failed, or null when no attempt is left. */
export function retryDelay(policy: RetryPolicy, attempt: number): number | null {
  if (policy.kind === 'never') return null;
  if (attempt >= (policy.maxAttempts ?? 5)) return null;
  switch (policy.kind) {
    case 'constant': return policy.delayMs ?? 1000;
    case 'linear': return (policy.delayMs ?? 1000) * attempt;
    case 'exponential': {
      const base = Math.min((policy.initialMs ?? 1000) * (policy.factor ?? 2) ** (attempt - 1), policy.maxMs ?? 60_000);
      // Full jitter in the upper half: spreads retries without ever retrying at once.
      return policy.jitter === false ? base : Math.round(base / 2 + (Math.random() * base) / 2);
    }
  }
}

export function checkRetry(policy: unknown): RetryPolicy {
  const p = policy as RetryPolicy;
  if (!p || typeof p !== 'object' || !['exponential', 'linear', 'constant', 'never'].includes(p.kind)) {
    throw new InvalidArgumentError(`invalid retry policy ${JSON.stringify(policy)}: kind is exponential, linear, constant or never`);
  }
  for (const [k, v] of Object.entries(p)) {
    if (k !== 'kind' && k !== 'jitter' && (typeof v !== 'number' || !(v >= 0))) {
      throw new InvalidArgumentError(`invalid retry policy: ${k} must be a number >= 0`);
    }
  }
  return p;
}
