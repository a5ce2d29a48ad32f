/**
 * Throttling of failed key checks per source address: after MAX_FAILURES
 * within WINDOW_MS the address gets HTTP 429 for a cool-down that doubles
 * with each lock-out (capped), and a success resets it.
 */
export const MAX_FAILURES = 10;
export const WINDOW_MS = 60_000;
export const COOLDOWN_MS = 60_000;
const MAX_COOLDOWN_MS = 3_600_000;
const MAX_TRACKED = 100_000;

interface Entry {
  failures: number[];
  blockedUntil: number;
  strikes: number;
}

export class AddressThrottle {
  private readonly entries = new Map<string, Entry>();

  /** Seconds the address must wait, or 0. */
  blockedFor(addr: string): number {
    const e = this.entries.get(addr);
    const left = e ? e.blockedUntil - Date.now() : 0;
    return left > 0 ? Math.ceil(left / 1000) : 0;
  }

  fail(addr: string): void {
    const now = Date.now();
    if (this.entries.size >= MAX_TRACKED && !this.entries.has(addr)) this.prune(now);
    const e = this.entries.get(addr) ?? { failures: [], blockedUntil: 0, strikes: 0 };
    e.failures = e.failures.filter((t) => now - t < WINDOW_MS);
    e.failures.push(now);
    if (e.failures.length >= MAX_FAILURES) {
      e.blockedUntil = now + Math.min(MAX_COOLDOWN_MS, COOLDOWN_MS * 2 ** e.strikes);
      e.strikes++;
      e.failures = [];
    }
    this.entries.set(addr, e);
  }

  succeed(addr: string): void {
    const e = this.entries.get(addr);
    if (e && e.blockedUntil <= Date.now()) this.entries.delete(addr);
  }

  private prune(now: number): void {
    for (const [k, e] of this.entries) {
      if (e.blockedUntil < now && e.failures.every((t) => now - t >= WINDOW_MS)) {
        this.entries.delete(k);
      }
    }
  }
}
