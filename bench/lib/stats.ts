/** Small statistics and table helpers for the benchmark report. */

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank];
}

export interface Percentiles { p50: number; p90: number; p99: number; max: number; n: number }

export function percentiles(values: number[]): Percentiles {
  const s = [...values].sort((a, b) => a - b);
  return { p50: percentile(s, 50), p90: percentile(s, 90), p99: percentile(s, 99), max: s[s.length - 1] ?? NaN, n: s.length };
}

export function median(values: number[]): number {
  const s = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export interface Summary { median: number; min: number; max: number; reps: number[] }

export function summarize(values: number[]): Summary {
  const ok = values.filter((v) => Number.isFinite(v));
  return { median: median(ok), min: Math.min(...ok), max: Math.max(...ok), reps: values };
}

export function fmt(n: number, digits?: number): string {
  if (!Number.isFinite(n)) return '—';
  const d = digits ?? (Math.abs(n) >= 100 ? 0 : Math.abs(n) >= 10 ? 1 : 2);
  return n.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });
}

export function fmtSummary(s: Summary, digits?: number): string {
  if (s.reps.length <= 1) return fmt(s.median, digits);
  return `${fmt(s.median, digits)} (${fmt(s.min, digits)}–${fmt(s.max, digits)})`;
}

export function table(title: string, head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ')} |`;
  return [
    `\n### ${title}`,
    line(head),
    `|${widths.map((w, i) => (i === 0 ? `${'-'.repeat(w + 1)}-` : `${'-'.repeat(w + 1)}:`)).join('|')}|`,
    ...rows.map(line),
  ].join('\n');
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `check` every `everyMs` until it returns true or `timeoutMs` passes; returns whether it did. */
export async function until(check: () => Promise<boolean> | boolean, timeoutMs: number, everyMs = 5): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (performance.now() > deadline) return false;
    await sleep(everyMs);
  }
}

/** Counts runs per key: exactly-once checks. */
export class RunCounter {
  readonly counts = new Map<string, number>();
  total = 0;
  firstAt = NaN;
  lastAt = NaN;
  private waiters: { n: number; ok: () => void }[] = [];

  hit(key: string): void {
    const now = performance.now();
    if (this.total === 0) this.firstAt = now;
    this.lastAt = now;
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
    this.total++;
    if (this.waiters.length) {
      this.waiters = this.waiters.filter((w) => (this.total >= w.n ? (w.ok(), false) : true));
    }
  }

  /** Resolves when `n` runs were counted. */
  reach(n: number, timeoutMs: number): Promise<boolean> {
    if (this.total >= n) return Promise.resolve(true);
    return new Promise((ok) => {
      const t = setTimeout(() => ok(false), timeoutMs);
      this.waiters.push({ n, ok: () => { clearTimeout(t); ok(true); } });
    });
  }

  /** Keys run more than once, and how many of `expected` never ran. */
  check(expected: Iterable<string>): { duplicates: number; missing: number; ok: boolean } {
    let duplicates = 0;
    let missing = 0;
    let n = 0;
    for (const key of expected) {
      n++;
      const c = this.counts.get(key) ?? 0;
      if (c === 0) missing++;
      else if (c > 1) duplicates++;
    }
    const unexpected = this.counts.size - (n - missing);
    return { duplicates, missing: missing + Math.max(0, -unexpected), ok: duplicates === 0 && missing === 0 && unexpected === 0 };
  }
}
