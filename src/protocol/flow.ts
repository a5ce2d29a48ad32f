/**
 * Credit-window flow control, used at both ends of a stream.
 *
 * The receiver of a direction announces a window W (in `open` for output,
 * in `started` for stdin). The sender may have at most its credit in flight;
 * the receiver grants bytes back once it has handed them on (written them to
 * a process or a terminal). Grants are batched to W/4, which cannot deadlock:
 * a sender at zero credit means W bytes are unacknowledged, above the batch.
 */

/** Default window for output toward a client (stdout + stderr together). */
export const OUTPUT_WINDOW = 1024 * 1024;
/** Default window for stdin toward an agent. */
export const STDIN_WINDOW = 1024 * 1024;
/** The largest window a peer may announce: what one stream may have in flight at a hop. */
export const MAX_WINDOW = 16 * 1024 * 1024;

/** The sender's side: how many bytes it may still send. */
export class Credit {
  private waiters: (() => void)[] = [];
  private closed = false;

  constructor(public available: number) {}

  add(n: number): void {
    this.available += n;
    this.wake();
  }

  take(n: number): void {
    this.available -= n;
  }

  /** Resolves when there is credit, or when the stream was closed. */
  async wait(): Promise<void> {
    while (this.available <= 0 && !this.closed) {
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  close(): void {
    this.closed = true;
    this.wake();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const r of w) r();
  }
}

/** The receiver's side: counts consumed bytes and says when to grant them back. */
export class Grant {
  private pending = 0;
  private readonly batch: number;

  constructor(window: number, private readonly send: (bytes: number) => void) {
    this.batch = Math.max(1, Math.floor(window / 4));
  }

  consumed(n: number): void {
    this.pending += n;
    if (this.pending >= this.batch) this.flush();
  }

  flush(): void {
    if (this.pending > 0) {
      this.send(this.pending);
      this.pending = 0;
    }
  }
}
