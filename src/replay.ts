import { NonDeterminismError } from './errors.js';
import type { ChildRecord, Execution } from './execution.js';

/**
 * Where a context stands in its function's history: every operation gets the
 * next position in call order (id `<parent id>.<n>`), and a replay hands out
 * the child stored at that position, checked against what this run asks for
 * there. The history comes with the claim, or is read once when a nested
 * step first needs it; a first run has none and reads nothing.
 */
export class Replay {
  private position = 0;
  private history?: Promise<Map<string, ChildRecord>>;
  /** The history once at hand: a replay hands out stored steps without waiting. */
  private read?: Map<string, ChildRecord>;

  constructor(
    private readonly exec: Execution,
    private readonly parentId: string,
    history: Map<string, ChildRecord> | null,
  ) {
    if (history) {
      this.read = history;
      this.history = Promise.resolve(history);
    }
  }

  nextId(): string {
    return `${this.parentId}.${this.position++}`;
  }

  /** The stored child at `id`, or undefined; a child of another kind or function there aborts the execution. */
  async stored(id: string, kind: ChildRecord['kind'], func: string | null): Promise<ChildRecord | undefined> {
    if (!this.exec.history) return undefined;
    this.history ??= this.load();
    return this.checked((await this.history).get(id), id, kind, func);
  }

  /**
   * As stored, without waiting, when the history is at hand: the child, or
   * undefined when none is stored there or the history is still to be read.
   */
  storedNow(id: string, kind: ChildRecord['kind'], func: string | null): ChildRecord | undefined {
    if (!this.exec.history || !this.read) return undefined;
    return this.checked(this.read.get(id), id, kind, func);
  }

  private checked(child: ChildRecord | undefined, id: string, kind: ChildRecord['kind'], func: string | null) {
    if (child && (child.kind !== kind || (func !== null && child.func !== func))) {
      const err = new NonDeterminismError(
        `non-deterministic replay of ${this.exec.promiseId}: at ${id} the stored history has ` +
        `${child.kind}${child.func ? ` ${child.func}` : ''}, but this run called ${kind}${func ? ` ${func}` : ''}`);
      this.exec.abort(err);
      throw err;
    }
    if (child && this.exec.trace) this.exec.trace.replayedSteps++;
    return child;
  }

  private async load(): Promise<Map<string, ChildRecord>> {
    const rows = await this.exec.query((sql) => sql<ChildRecord[]>`
      select id, kind, func, state, value, timeout_at from durably.promises where parent_id = ${this.parentId}`);
    this.read = new Map(rows.map((r) => [r.id, r]));
    return this.read;
  }
}
