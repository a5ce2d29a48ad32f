/**
 * One WebSocket between the relay and an agent or a client, on either end:
 * validated control messages, binary frames, heartbeats both ways, and a
 * bounded send buffer. A malformed message closes this connection only.
 */
import { type Control, MAX_CONTROL_MESSAGE, parseControl, ProtocolError } from "./messages.ts";
import { decodeFrame, type Frame } from "./frames.ts";
import { OPEN } from "./ws_socket.ts";

/**
 * Heartbeats are probes: a side that has heard nothing from its peer for HEARTBEAT_MS sends
 * `{"t":"ping"}`, and the peer answers at once with `{"t":"ping","re":true}` (never answered
 * itself). Any message counts as a sign of life, so a busy connection sends no pings at all.
 */
export const HEARTBEAT_MS = 2_000;
/** Silence after which a peer is declared dead: a probe unanswered for the rest of it. */
export const DEAD_AFTER_MS = 6_000;
/**
 * An agent's link with nothing open on it probes after this much silence instead: thousands
 * of idle agents then cost a relay a few messages a second, not thousands. The relay's probe
 * comes first (the agent waits IDLE_HEARTBEAT_MS + HEARTBEAT_MS). Where the link is one TCP
 * connection (no proxy between), a peer whose host vanished is noticed sooner, and for nothing,
 * by kernel keepalive on both ends (KEEPALIVE in common/tcp_options.ts: within 30 s); these
 * probes find a peer that is there but hangs, or one behind a proxy (within IDLE_HEARTBEAT_MS +
 * DEAD_AFTER_MS), and keep proxies that close idle connections (HAProxy's stock 50 s, nginx's
 * and many load balancers' 60 s) from closing the link. As soon as a stream is open the short
 * heartbeat holds: what a user waits on learns of a dead peer within DEAD_AFTER_MS.
 */
export const IDLE_HEARTBEAT_MS = 45_000;
/** A sender waits while more than this is queued in its WebSocket. */
export const SEND_HIGH_WATER = 4 * 1024 * 1024;

export const CLOSE_NORMAL = 1000;
export const CLOSE_PROTOCOL = 4400;
export const CLOSE_AUTH = 4401;
export const CLOSE_VERSION = 4409;
export const CLOSE_DEAD = 4408;
export const CLOSE_REPLACED = 4410;
export const CLOSE_UNAVAILABLE = 4503;

/**
 * What Conn needs of a socket (ws_socket.ts): text messages arrive as
 * strings, binary ones as a Uint8Array that may be borrowed, valid only
 * during onmessage.
 */
export interface WsLike {
  readonly readyState: number;
  readonly bufferedAmount: number;
  /** Sends a message; the socket copies `data`, which the caller may reuse at once. */
  send(data: string | Uint8Array): void;
  /** Sends a binary message of `n` bytes that `fill` writes into the socket's own buffer. */
  sendWith?(n: number, fill: (dst: Uint8Array, at: number) => void): void;
  close(code?: number, reason?: string): void;
  /** Called once a second: the socket may give back idle buffers. */
  trim(): void;
  onmessage: ((ev: { data: string | Uint8Array }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
}

export interface ConnHandlers {
  onControl(msg: Control): void;
  onFrame(frame: Frame, raw: Uint8Array): void;
  onClose(reason: string): void;
}

export interface ConnOptions {
  /** Silence after which this side probes its peer (HEARTBEAT_MS). */
  heartbeatMs?: number;
  /** Silence after which the peer is dead (DEAD_AFTER_MS); a probe waits the difference. */
  deadAfterMs?: number;
  /** Used in log lines and errors. */
  label?: string;
  /** Largest control message accepted (default MAX_CONTROL_MESSAGE). */
  maxControl?: number;
}

/**
 * One timer for all the connections of a process that share a period: a relay holds
 * thousands of idle agents, and a timer each cost more than the heartbeat work itself.
 * A connection with nothing to do for a while (an idle agent's link between probes) sleeps
 * in the bucket of the tick it is due at, so each tick looks only at the connections that
 * are awake and the one bucket that falls due.
 */
class Ticker {
  private readonly awake = new Set<Conn>();
  private readonly sleeping = new Map<number, Set<Conn>>();
  /** The bucket each sleeping connection is in. */
  private readonly slotOf = new Map<Conn, number>();
  private tickNo = 0;
  private timer?: ReturnType<typeof setInterval>;

  constructor(private readonly periodMs: number) {}

  add(c: Conn): void {
    this.awake.add(c);
    this.timer ??= setInterval(() => this.tick(), this.periodMs);
  }

  delete(c: Conn): void {
    this.awake.delete(c);
    this.wakeOnly(c);
    if (this.awake.size === 0 && this.slotOf.size === 0 && this.timer !== undefined) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  /** `c` has nothing to do before `until` (ms since the epoch): not ticked till then. */
  sleep(c: Conn, until: number, now: number): void {
    const slot = this.tickNo + Math.max(1, Math.floor((until - now) / this.periodMs));
    this.wakeOnly(c);
    this.awake.delete(c);
    let bucket = this.sleeping.get(slot);
    if (!bucket) this.sleeping.set(slot, bucket = new Set());
    bucket.add(c);
    this.slotOf.set(c, slot);
  }

  /** `c` is ticked again from the next tick on. */
  wake(c: Conn): void {
    if (this.wakeOnly(c)) this.awake.add(c);
  }

  private wakeOnly(c: Conn): boolean {
    const slot = this.slotOf.get(c);
    if (slot === undefined) return false;
    this.slotOf.delete(c);
    const bucket = this.sleeping.get(slot)!;
    bucket.delete(c);
    if (bucket.size === 0) this.sleeping.delete(slot);
    return true;
  }

  private tick(): void {
    const now = Date.now();
    const due = this.sleeping.get(++this.tickNo);
    if (due) {
      this.sleeping.delete(this.tickNo);
      for (const c of due) {
        this.slotOf.delete(c);
        this.awake.add(c);
      }
    }
    for (const conn of this.awake) conn.tick(now);
  }
}

const tickers = new Map<number, Ticker>();
/** A probe and its answer, encoded once; matched as strings before any parsing. */
const PING = JSON.stringify({ t: "ping" });
const PONG = JSON.stringify({ t: "ping", re: true });

function tickerFor(periodMs: number): Ticker {
  let t = tickers.get(periodMs);
  if (!t) tickers.set(periodMs, t = new Ticker(periodMs));
  return t;
}

/**
 * What a stream's code (an exec, a session attachment, a TCP forward) sends through: the
 * connection itself, or its end-to-end wrapper that seals what it sends (agent/sealed_conn.ts).
 */
export type StreamConn = Pick<Conn, "send" | "sendBinary" | "sendBinaryWith" | "drain" | "isOpen">;

export class Conn {
  readonly ws: WsLike;
  readonly label: string;
  private handlers?: ConnHandlers;
  private lastRecv = Date.now();
  /** When the unanswered probe went out, if one is out. */
  private probeAt?: number;
  private ended = false;
  private readonly heartbeatMs: number;
  private readonly deadAfterMs: number;
  private readonly maxControl: number;
  private idle?: { heartbeatMs: number; when: () => boolean };
  private readonly ticker: Ticker;

  constructor(ws: WsLike, opts: ConnOptions = {}) {
    this.ws = ws;
    this.label = opts.label ?? "peer";
    this.heartbeatMs = opts.heartbeatMs ?? HEARTBEAT_MS;
    this.deadAfterMs = opts.deadAfterMs ?? DEAD_AFTER_MS;
    this.maxControl = opts.maxControl ?? MAX_CONTROL_MESSAGE;
    // Looked at twice per heartbeat, so a probe goes out soon after HEARTBEAT_MS of silence.
    this.ticker = tickerFor(this.heartbeatMs / 2);
  }

  /**
   * While `when()` holds (an agent's link with no stream on it), this side probes only after
   * `heartbeatMs` of silence (IDLE_HEARTBEAT_MS). Both ends of a link decide for themselves:
   * a probe is answered whenever it comes.
   */
  probeIdleAfter(heartbeatMs: number, when: () => boolean): void {
    this.idle = { heartbeatMs, when };
  }

  get isOpen(): boolean {
    return !this.ended && this.ws.readyState === OPEN;
  }

  get bufferedAmount(): number {
    return this.ws.bufferedAmount;
  }

  /** Wires the handlers and starts heartbeats. The socket must be open. */
  start(handlers: ConnHandlers): void {
    this.handlers = handlers;
    this.lastRecv = Date.now();
    this.ws.onmessage = (ev) => this.receive(ev.data);
    this.ws.onclose = (ev) => this.end(ev.reason || `closed (${ev.code})`);
    this.ticker.add(this);
  }

  send(msg: Control): void {
    if (this.ws.readyState !== OPEN) return;
    this.ws.send(JSON.stringify(msg));
  }

  sendBinary(buf: Uint8Array): void {
    if (this.ws.readyState !== OPEN) return;
    this.ws.send(buf);
  }

  /** A binary message of `n` bytes written by `fill` in place (see WsSocket.sendWith). */
  sendBinaryWith(n: number, fill: (dst: Uint8Array, at: number) => void): void {
    if (this.ws.readyState !== OPEN) return;
    if (this.ws.sendWith) return this.ws.sendWith(n, fill);
    const buf = new Uint8Array(n);
    fill(buf, 0);
    this.ws.send(buf);
  }

  /** Resolves once the socket's send queue is at most `highWater` bytes (or the socket ended). */
  async drain(highWater = SEND_HIGH_WATER): Promise<void> {
    let delay = 1;
    while (this.ws.bufferedAmount > highWater && this.isOpen) {
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 20);
    }
  }

  /** Sends a connection-level error and closes. */
  fail(code: number, err: { code: string; message: string; hint?: string }): void {
    try {
      this.send({ t: "error", ...err } as Control);
    } catch { /* already gone */ }
    this.close(code, err.message);
  }

  close(code = CLOSE_NORMAL, reason = ""): void {
    try {
      // Close reasons are limited to 123 bytes.
      this.ws.close(code, reason.slice(0, 120));
    } catch { /* already closing */ }
    this.end(reason || "closed");
  }

  /**
   * Called by its Ticker twice per heartbeat. A link that is idle and not yet due sleeps in
   * its Ticker until its probe is due: a relay holds thousands of them.
   */
  tick(now = Date.now()): void {
    this.ws.trim();
    if (this.probeAt !== undefined) {
      if (this.lastRecv >= this.probeAt) this.probeAt = undefined;
      else if (now - this.probeAt >= this.deadAfterMs - this.heartbeatMs) {
        const silent = Math.round((now - this.lastRecv) / 1000);
        this.close(CLOSE_DEAD, `no heartbeat from ${this.label} for ${silent}s`);
        return;
      } else return;
    }
    const quiet = now - this.lastRecv;
    if (quiet < this.heartbeatMs) return;
    if (this.idle && quiet < this.idle.heartbeatMs && this.idle.when()) {
      return this.ticker.sleep(this, this.lastRecv + this.idle.heartbeatMs, now);
    }
    if (this.ws.readyState === OPEN) {
      this.probeAt = now;
      this.ws.send(PING);
    }
  }

  /** A stream is opening on this link: the short heartbeat holds again from now. */
  wake(): void {
    this.ticker.wake(this);
  }

  private end(reason: string): void {
    if (this.ended) return;
    this.ended = true;
    this.ticker.delete(this);
    this.handlers?.onClose(reason);
  }

  private receive(data: string | Uint8Array): void {
    if (this.ended) return;
    this.lastRecv = Date.now();
    // A probe is answered here, for every kind of peer; neither needs parsing.
    if (data === PING) return this.ws.readyState === OPEN ? this.ws.send(PONG) : undefined;
    if (data === PONG) return;
    const h = this.handlers!;
    this.guard(() => {
      if (typeof data === "string") {
        h.onControl(parseControl(data, this.maxControl));
      } else {
        h.onFrame(decodeFrame(data), data);
      }
    });
  }

  /**
   * Runs `fn` the way a received message is handled: a ProtocolError (or a bug) ends
   * the connection with an error, never the process. For work picked up later, such as
   * messages that waited for the store.
   */
  guard(fn: () => void): void {
    if (this.ended) return;
    try {
      fn();
    } catch (e) {
      if (e instanceof ProtocolError) {
        this.fail(CLOSE_PROTOCOL, { code: "internal", message: `protocol error: ${e.message}` });
      } else {
        console.error(`tether: internal error handling a message from ${this.label}:`, e);
        this.fail(CLOSE_PROTOCOL, { code: "internal", message: "internal error" });
      }
    }
  }
}
