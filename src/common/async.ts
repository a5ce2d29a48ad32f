/** Small promise helpers shared by the roles. */

/** Waits for `p`, at most `ms`; true if `p` settled in time (either way). */
export async function within(ms: number, p: Promise<unknown>): Promise<boolean> {
  let t: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<false>((r) => (t = setTimeout(() => r(false), ms)));
  try {
    return await Promise.race([p.then(() => true, () => true), late]);
  } finally {
    clearTimeout(t);
  }
}

/** Resolves after `ms`. */
export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Capped exponential backoff with ±20 % jitter: `minMs` for the first
 * attempt, doubling up to `maxMs`.
 */
export function backoff(attempt: number, minMs: number, maxMs: number): number {
  const base = Math.min(maxMs, minMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(base * (0.8 + Math.random() * 0.4));
}
