/**
 * The output of one process — a PTY session's terminal, an exec's stdout and
 * stderr — kept for whoever watches it, so that the process outlives its
 * watchers' connections.
 *
 * - One ring per channel (ring.ts), addressed by absolute offset. A watcher
 *   has a cursor per channel and its own credit; joining replays what the
 *   rings hold, or starts at the offsets it asks for.
 * - A watcher whose connection was lost leaves a ghost for `ghostMs`: its
 *   confirmed offsets, so that the bytes it may still need are kept and it
 *   can resume (`watch(…, resume)`) with no gap and no duplicate.
 * - Back-pressure: a channel is read only while its ring still holds every
 *   byte some watcher or ghost has not confirmed (credit comes back once the
 *   client wrote the bytes out). So a reader that stops reading stops the
 *   process, like a full pipe. With nobody watching, the rings keep the most
 *   recent output and drop the oldest (the offsets tell a later watcher how
 *   much it missed).
 * - Once the source ended (`end()`), each watcher gets the last message (an
 *   exit status or an error) after the last byte of its output.
 */
import type { StreamConn } from "../protocol/conn.ts";
import { DATA_FRAME_PREFIX, dataFrameInPlace, MAX_DATA_PAYLOAD } from "../protocol/frames.ts";
import type { Control } from "../protocol/messages.ts";
import { RingBuffer } from "./ring.ts";

/** Bytes per read of the process's output (a Linux pipe holds 64 KiB). */
export const READ_CHUNK = 64 * 1024;
/** Bytes per read once the source was made to hold more (pipe() `grow`): one frame's worth. */
export const BULK_READ_CHUNK = MAX_DATA_PAYLOAD;

/** Where pump() builds each frame from a ring; sendBinary copies it out at once. */
const SCRATCH = new Uint8Array(DATA_FRAME_PREFIX + MAX_DATA_PAYLOAD);

/** One client stream watching a Fanout. */
export class Watcher {
  /** Names this watcher for a resume after a lost connection. */
  readonly id = crypto.randomUUID();
  /** Bytes the client may still be sent. */
  credit: number;
  /** The last message went out; the watcher is gone. */
  done = false;

  constructor(
    readonly fanout: Fanout,
    readonly conn: StreamConn,
    readonly sid: number,
    /** Next offset to send, per channel. */
    readonly cursors: number[],
    readonly window: number,
  ) {
    this.credit = window;
  }

  /**
   * The offset on channel `i` up to which the client has confirmed output.
   * Credit does not say which channel it was for, so every outstanding byte
   * counts against each channel: conservative, never too high.
   */
  acked(i: number): number {
    return this.cursors[i] - (this.window - this.credit);
  }

  onCredit(bytes: number): void {
    this.credit += bytes;
    this.fanout.pump(this);
  }
}

interface Ghost {
  cursors: number[];
  timer: ReturnType<typeof setTimeout>;
}

export interface FanoutHooks {
  /** How long a lost watcher's place is kept for it to resume. */
  ghostMs: number;
  /** A watcher was sent the last message. */
  onDone?(w: Watcher): void;
}

export class Fanout {
  readonly rings: RingBuffer[];
  readonly watchers = new Set<Watcher>();
  private readonly ghosts = new Map<string, Ghost>();
  private last?: (sid: number) => Control;
  private waiters: (() => void)[] = [];

  constructor(
    /** The wire channel of each ring (CH_STDOUT, CH_STDERR). */
    readonly channels: readonly number[],
    capacity: number,
    private readonly hooks: FanoutHooks,
    /** Offsets the channels start at (output that was not kept, e.g. over a restart). */
    starts: number[] = [],
  ) {
    this.rings = channels.map((_, i) => new RingBuffer(capacity, starts[i] ?? 0));
  }

  /** True once end() was called. */
  get ended(): boolean {
    return this.last !== undefined;
  }

  /** Whether some lost watcher may still come back. */
  get hasGhosts(): boolean {
    return this.ghosts.size > 0;
  }

  /**
   * Adds a watcher. Each cursor starts at `offsets[i]`, else where the ghost
   * `resume` left off, else at the oldest byte held; always clamped to what
   * the ring holds. The caller sends `started`, then calls pump().
   */
  watch(
    conn: StreamConn,
    sid: number,
    window: number,
    offsets: (number | undefined)[] = [],
    resume?: string,
  ): Watcher {
    // A client that lost its connection may be back before we heard of the loss.
    for (const old of this.watchers) if (resume && old.id === resume) this.leave(old, "lost");
    const ghost = resume ? this.ghosts.get(resume) : undefined;
    if (ghost) {
      clearTimeout(ghost.timer);
      this.ghosts.delete(resume!);
    }
    const cursors = this.rings.map((r, i) =>
      Math.min(Math.max(offsets[i] ?? ghost?.cursors[i] ?? r.start, r.start), r.end)
    );
    const w = new Watcher(this, conn, sid, cursors, window);
    this.watchers.add(w);
    return w;
  }

  /** A watcher left: on purpose, or by losing its connection (it may resume). */
  leave(w: Watcher, reason: "detach" | "lost"): boolean {
    if (!this.watchers.delete(w)) return false;
    if (reason === "lost" && !this.ended) {
      const timer = setTimeout(() => {
        this.ghosts.delete(w.id);
        this.wake();
      }, this.hooks.ghostMs);
      const cursors = this.rings.map((r, i) => Math.max(r.start, w.acked(i)));
      this.ghosts.set(w.id, { cursors, timer });
    }
    this.wake();
    return true;
  }

  /** Bytes channel `i` may be read for without overwriting what a watcher still needs. */
  room(i: number, most = READ_CHUNK): number {
    const ring = this.rings[i];
    let min = Infinity;
    for (const w of this.watchers) min = Math.min(min, Math.max(ring.start, w.acked(i)));
    for (const g of this.ghosts.values()) min = Math.min(min, g.cursors[i]);
    if (min === Infinity) return most;
    return Math.min(most, ring.capacity - (ring.end - min));
  }

  /**
   * Reads channel `i` from `read` until it ends (null), under back-pressure:
   * a read waits for room (unless `force()`: the process is being ended, its
   * output may go) and for the watchers' connections to drain. `read` fills
   * the view it is given (which has DATA_FRAME_PREFIX bytes of room in front,
   * for frames built in place) and returns the filled part, possibly in a new
   * buffer (a BYOB read transfers it).
   *
   * `grow`, when given, is asked once, after a read filled a whole READ_CHUNK (a source
   * writing faster than it is read), to make the source hold more (pipe_size.ts); if it
   * says it did, reads take up to BULK_READ_CHUNK from then on: fewer, larger frames.
   */
  async pipe(
    i: number,
    read: (into: Uint8Array) => Promise<Uint8Array | null>,
    force: () => boolean = () => false,
    grow?: () => boolean,
  ): Promise<void> {
    let chunk = READ_CHUNK;
    const buffer = () =>
      new Uint8Array(new ArrayBuffer(DATA_FRAME_PREFIX + chunk), DATA_FRAME_PREFIX);
    let buf: Uint8Array = buffer();
    for (;;) {
      let room = this.room(i, chunk);
      while (room <= 0 && !force()) {
        await new Promise<void>((r) => this.waiters.push(r));
        room = this.room(i, chunk);
      }
      for (const w of this.watchers) await w.conn.drain();
      const got = await read(buf.subarray(0, force() ? chunk : Math.max(1, room)));
      if (got === null) return;
      buf = new Uint8Array(got.buffer, got.byteOffset, chunk);
      this.append(i, got);
      if (grow && got.length === READ_CHUNK && chunk === READ_CHUNK) {
        const grown = grow();
        grow = undefined;
        if (grown) {
          chunk = BULK_READ_CHUNK;
          buf = buffer();
        }
      }
    }
  }

  /**
   * Keeps `data` (a view with DATA_FRAME_PREFIX bytes of room in front) and
   * sends it on: to a watcher that is caught up and has the credit, as a
   * frame built in place; to the others through pump().
   */
  append(i: number, data: Uint8Array): void {
    const ring = this.rings[i];
    const at = ring.end;
    ring.append(data);
    const direct = data.byteOffset >= DATA_FRAME_PREFIX && data.length <= MAX_DATA_PAYLOAD;
    for (const w of [...this.watchers]) {
      if (direct && w.cursors[i] === at && w.credit >= data.length && !this.ended) {
        w.conn.sendBinary(dataFrameInPlace(data, w.sid, this.channels[i], at));
        w.cursors[i] += data.length;
        w.credit -= data.length;
      } else {
        this.pump(w);
      }
    }
  }

  /** Sends what the watcher may take; after the end of all output, the last message. */
  pump(w: Watcher): void {
    if (!this.watchers.has(w)) return;
    for (let i = 0; i < this.rings.length; i++) {
      const ring = this.rings[i];
      while (w.credit > 0 && w.cursors[i] < ring.end) {
        // Bytes dropped before this watcher could take them: the next frame's offset says so.
        if (w.cursors[i] < ring.start) w.cursors[i] = ring.start;
        // Built in one reused buffer: the socket copies the frame, so nothing is allocated.
        const room = SCRATCH.subarray(
          DATA_FRAME_PREFIX,
          DATA_FRAME_PREFIX + Math.min(w.credit, MAX_DATA_PAYLOAD),
        );
        const n = ring.readInto(w.cursors[i], room);
        w.conn.sendBinary(
          dataFrameInPlace(room.subarray(0, n), w.sid, this.channels[i], w.cursors[i]),
        );
        w.cursors[i] += n;
        w.credit -= n;
      }
    }
    if (this.last && !w.done && this.rings.every((r, i) => w.cursors[i] >= r.end)) {
      w.done = true;
      this.watchers.delete(w);
      w.conn.send(this.last(w.sid));
      this.hooks.onDone?.(w);
    }
    this.wake();
  }

  /** The source ended: every watcher gets `last(sid)` after its output. */
  end(last: (sid: number) => Control): void {
    this.last = last;
    for (const g of this.ghosts.values()) clearTimeout(g.timer);
    this.ghosts.clear();
    for (const w of [...this.watchers]) this.pump(w);
    this.wake();
  }

  /** Gives the output's memory back (offsets go on): for what is kept past its end. */
  discard(): void {
    for (const r of this.rings) r.clear();
  }

  /** Bytes of memory the rings hold. */
  get footprint(): number {
    return this.rings.reduce((n, r) => n + r.footprint, 0);
  }

  /** Lets a read loop waiting for room look again. */
  wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const r of w) r();
  }
}
