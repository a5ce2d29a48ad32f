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
