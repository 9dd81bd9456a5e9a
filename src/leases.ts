import { textArray, type Sql } from './db.js';
import { DurablyError } from './errors.js';

/**
 * The leases a worker holds: every task it claimed whose outcome is not yet
 * written (running, claimed ahead, or settled and waiting for the write). One
 * heartbeat per interval renews them all; the ids it no longer holds (their
 * promise was canceled, timed out or settled elsewhere, or the lease was lost)
 * are handed to `onLost` with the reason. A reply is matched to the claims
 * it was sent for: an id claimed again (by this worker) while the heartbeat
 * was on its way is a new lease, which that reply says nothing about.
 *
 * Each lease is also known to run until a time by this process's own clock
 * (from when the claim or the last renewing heartbeat was sent): past it, a
 * stalled process (a long pause, a frozen VM) may have lost the task to
 * another worker without hearing so yet (`valid`).
 */
export class LeaseKeeper {
  /** Held ids: the number of the claim that holds each, and when its lease may run out. */
  private readonly held = new Map<string, { claim: number; until: number }>();
  private claims = 0;
  private timer?: NodeJS.Timeout;
  /** When the latest heartbeat (or registration) that reached the database was sent. */
  private beatAt = 0;

  constructor(
    private readonly sql: Sql,
    private readonly workerId: string,
    private readonly leaseMs: number,
    private readonly onLost: (id: string, reason: DurablyError) => void,
    private readonly log: (message: string) => void,
  ) {}

  start(everyMs: number): void {
    this.timer = setInterval(() => this.heartbeat(), everyMs);
  }

  stop(): void {
    clearInterval(this.timer);
  }

  has(id: string): boolean {
    return this.held.has(id);
  }

  ids(): string[] {
    return [...this.held.keys()];
  }

  /** `id` was claimed by a query sent at `sentAt`: a new lease, or one of ours the claim renewed. */
  add(id: string, sentAt: number): void {
    const held = this.held.get(id);
    if (held) held.until = sentAt + this.leaseMs;
    else this.held.set(id, { claim: ++this.claims, until: sentAt + this.leaseMs });
  }

  /** A heartbeat or registration sent at `sentAt` reached the database. */
  beat(sentAt: number): void {
    this.beatAt = Math.max(this.beatAt, sentAt);
  }

  /**
   * Since when a task handed to this worker (durably.hand_off) is surely
   * still its own, or undefined. Another worker may take a handed task only
   * once this worker's heartbeat is leaseMs old (durably.lease_runs): a
   * handoff that reaches a process that stalled for longer (its notification
   * waited in the socket meanwhile) may have been taken, and is not run.
   */
  handedSince(): number | undefined {
    return Date.now() < this.beatAt + this.leaseMs ? this.beatAt : undefined;
  }

  /** Whether the lease on `id` is surely still this worker's. */
  valid(id: string): boolean {
    const held = this.held.get(id);
    return held !== undefined && Date.now() < held.until;
  }

  /** The outcome of `id` is written, or the task is no longer this worker's. */
  release(id: string): void {
    this.held.delete(id);
  }

  private heartbeat(): void {
    const sentAt = Date.now();
    if (this.held.size === 0) {
      this.sql`update durably.workers set heartbeat_at = now() where id = ${this.workerId}`.then(() => this.beat(sentAt), () => {});
      return;
    }
    const sent = new Map([...this.held].map(([id, { claim }]) => [id, claim]));
    this.sql<{ id: string; state: string | null }[]>`
      select * from durably.heartbeat(${this.workerId}, ${this.leaseMs}, ${textArray([...sent.keys()])}::text[])`
      .then((lost) => {
        this.beat(sentAt);
        const gone = new Set(lost.map((l) => l.id));
        for (const [id, claim] of sent) {
          const held = this.held.get(id);
          if (held?.claim !== claim) continue;
          if (!gone.has(id)) held.until = sentAt + this.leaseMs;
        }
        for (const { id, state } of lost) {
          if (this.held.get(id)?.claim === sent.get(id)) this.onLost(id, lostReason(id, state));
        }
      }, (err) => this.log(`heartbeat failed: ${(err as Error).message}`));
  }
}

function lostReason(id: string, state: string | null): DurablyError {
  if (state === 'rejected_canceled') return new DurablyError('CANCELED', `promise ${id} was canceled`);
  if (state === 'rejected_timedout') return new DurablyError('TIMED_OUT', `promise ${id} timed out`);
  return new DurablyError('LEASE_LOST', `lost the lease on ${id} (${state ?? 'gone'})`);
}
