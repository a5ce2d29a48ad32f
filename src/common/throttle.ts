/**
 * Failure throttling, by any key (a source address at the relay, a client
 * key at an agent): after `maxFailures` within `windowMs`, the key is locked
 * out for `cooldownMs`, doubling with each further lock-out up to an hour.
 * A success while not locked out forgets the key.
 */
const MAX_COOLDOWN_MS = 3_600_000;
const MAX_TRACKED = 100_000;

interface Entry {
  failures: number[];
  blockedUntil: number;
  strikes: number;
}

export class Throttle {
  private readonly entries = new Map<string, Entry>();

  constructor(
    readonly maxFailures: number,
    readonly windowMs: number,
    readonly cooldownMs: number,
  ) {}

  /** Seconds `key` must wait, or 0. */
  blockedFor(key: string): number {
    const e = this.entries.get(key);
    const left = e ? e.blockedUntil - Date.now() : 0;
    return left > 0 ? Math.ceil(left / 1000) : 0;
  }

  fail(key: string): void {
    const now = Date.now();
    if (this.entries.size >= MAX_TRACKED && !this.entries.has(key)) this.prune(now);
    const e = this.entries.get(key) ?? { failures: [], blockedUntil: 0, strikes: 0 };
    e.failures = e.failures.filter((t) => now - t < this.windowMs);
    e.failures.push(now);
    if (e.failures.length >= this.maxFailures) {
      e.blockedUntil = now + Math.min(MAX_COOLDOWN_MS, this.cooldownMs * 2 ** e.strikes);
      e.strikes++;
      e.failures = [];
    }
    this.entries.set(key, e);
  }

  succeed(key: string): void {
    const e = this.entries.get(key);
    if (e && e.blockedUntil <= Date.now()) this.entries.delete(key);
  }

  private prune(now: number): void {
    for (const [k, e] of this.entries) {
      if (e.blockedUntil < now && e.failures.every((t) => now - t >= this.windowMs)) {
        this.entries.delete(k);
      }
    }
  }
}

/**
 * Paces failures by key (a source address at the relay) without ever
 * delaying a success: the first `burst` failures are answered at once, then
 * one every 1/`perSecond` s (the generic cell rate algorithm: `tat` is the
 * theoretical arrival time of the next failure). A key can never be locked
 * out this way; it only waits. Keys are 160-bit secrets, so guessing is not
 * the threat; pacing bounds what a misconfigured or hostile peer costs.
 */
export class FailurePacer {
  private readonly tat = new Map<string, number>();
  private readonly interval: number;

  constructor(perSecond: number, readonly burst: number, readonly maxDelayMs: number) {
    this.interval = 1000 / perSecond;
  }

  /**
   * Records a failure; returns how long to hold its answer (ms), or -1 when
   * that would exceed `maxDelayMs` (answer at once with a "slow down").
   */
  fail(key: string): number {
    const now = Date.now();
    if (this.tat.size >= MAX_TRACKED && !this.tat.has(key)) this.prune(now);
    const tat = Math.max(this.tat.get(key) ?? now, now);
    const wait = Math.max(0, tat - now - (this.burst - 1) * this.interval);
    if (wait > this.maxDelayMs) return -1;
    this.tat.set(key, tat + this.interval);
    return wait;
  }

  private prune(now: number): void {
    for (const [k, t] of this.tat) if (t <= now) this.tat.delete(k);
  }
}
