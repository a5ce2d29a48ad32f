/**
 * PTY sessions: objects on the agent that outlive connections.
 *
 * A session owns a Pty and a ring buffer of its output, addressed by
 * absolute byte offset. Clients attach as streams; each attachment has a
 * cursor into the ring and sends from it under its own credit, so joining
 * replays what the ring holds and a resumed client gets exactly the bytes
 * after its last offset.
 *
 * Back-pressure: the Pty is read only while the ring still holds every byte
 * some attached client has not confirmed (credit comes back once written),
 * and every byte a client whose connection was lost has not confirmed (kept
 * for the grace window, so it can resume without a gap). With nobody
 * attached the ring simply keeps the most recent output.
 *
 * Size policy: the PTY takes the size of the client that most recently
 * typed or resized.
 */
import type { Conn } from "../protocol/conn.ts";
import { Grant } from "../protocol/flow.ts";
import {
  CH_STDIN,
  CH_STDOUT,
  encodeCredit,
  encodeData,
  MAX_DATA_PAYLOAD,
} from "../protocol/frames.ts";
import type { Open, SessionInfo } from "../protocol/messages.ts";
import { Pty, type PtyExit } from "./pty.ts";
import { RingBuffer } from "./ring.ts";
import { isSignalName } from "./exec.ts";

export const DEFAULT_RING_BYTES = 1024 * 1024;
export const DEFAULT_GRACE_MS = 30_000;
/** Credit granted to each attachment for input toward the PTY. */
export const PTY_INPUT_WINDOW = 64 * 1024;
const READ_CHUNK = 64 * 1024;

export interface SessionOptions {
  ringBytes?: number;
  graceMs?: number;
  /** Command for a new session when the client names none (default: $SHELL -l). */
  shell?: string[];
}

/** One client attached to a session through one stream. */
export class Attachment {
  readonly id = crypto.randomUUID();
  credit: number;
  private readonly grant: Grant;
  exitSent = false;

  constructor(
    readonly session: Session,
    readonly conn: Conn,
    readonly sid: number,
    public cursor: number,
    readonly window: number,
    readonly readOnly: boolean,
    public cols: number,
    public rows: number,
  ) {
    this.credit = window;
    this.grant = new Grant(
      PTY_INPUT_WINDOW,
      (n) => conn.sendBinary(encodeCredit(sid, CH_STDIN, n)),
    );
  }

  /**
   * Offset up to which the client has confirmed output (credit comes back
   * only once bytes are written), as opposed to `cursor`, what was sent.
   * A resuming client asks for an offset at or past this point.
   */
  get acked(): number {
    return this.cursor - (this.window - this.credit);
  }

  onCredit(bytes: number): void {
    this.credit += bytes;
    this.session.pump(this);
  }

  onStdin(payload: Uint8Array): void {
    this.session.input(this, payload).finally(() => this.grant.consumed(payload.length));
  }

  onEof(): void {}

  onResize(cols: number, rows: number): void {
    this.cols = cols;
    this.rows = rows;
    this.session.sizeFrom(this);
  }

  onSignal(sig: string): void {
    if (!this.readOnly) this.session.signal(sig);
  }

  abort(reason: "detach" | "lost" = "lost"): void {
    this.session.leave(this, reason);
  }
}

export class Session {
  readonly id: string;
  readonly created = Date.now();
  readonly pty: Pty;
  readonly ring: RingBuffer;
  readonly attachments = new Set<Attachment>();
  /** Cursors of attachments whose connection was lost, by attachment id. */
  readonly ghosts = new Map<string, { cursor: number; timer: ReturnType<typeof setTimeout> }>();
  cols: number;
  rows: number;
  lastActivity = Date.now();
  ended?: PtyExit;
  private graceTimer?: ReturnType<typeof setTimeout>;
  /** Resolves when the read loop has ended and exit statuses went out. */
  private finished: Promise<void>;
  private roomWaiter?: () => void;
  private inputTail: Promise<void> = Promise.resolve();
  private terminating = false;

  constructor(
    readonly manager: SessionManager,
    readonly argv: string[],
    open: Open,
    readonly ephemeral: boolean,
  ) {
    this.id = crypto.randomUUID().replaceAll("-", "").slice(0, 12);
    this.cols = open.cols ?? 80;
    this.rows = open.rows ?? 24;
    this.ring = new RingBuffer(manager.ringBytes);
    this.pty = Pty.spawn({
      argv,
      env: { ...(open.env ?? {}), TERM: open.term || "xterm-256color", TETHER_SESSION: this.id },
      cwd: open.cwd ?? Deno.env.get("HOME") ?? "/",
      cols: this.cols,
      rows: this.rows,
    });
    this.finished = this.readLoop();
  }

  info(): SessionInfo {
    return {
      id: this.id,
      created: this.created,
      command: this.argv.join(" "),
      clients: this.attachments.size,
      cols: this.cols,
      rows: this.rows,
      idle_ms: Date.now() - this.lastActivity,
    };
  }

  attach(conn: Conn, open: Open): Attachment {
    let cursor = this.ring.start;
    // A client that lost its connection may be back before the agent heard of the loss.
    for (const old of this.attachments) {
      if (old.id === open.resume) this.leave(old, "lost");
    }
    const ghost = open.resume ? this.ghosts.get(open.resume) : undefined;
    if (ghost) {
      clearTimeout(ghost.timer);
      this.ghosts.delete(open.resume!);
      cursor = open.offset ?? ghost.cursor;
    } else if (open.offset !== undefined) {
      cursor = open.offset;
    }
    cursor = Math.min(Math.max(cursor, this.ring.start), this.ring.end);
    const a = new Attachment(
      this,
      conn,
      open.sid,
      cursor,
      open.window,
      !!open.read_only,
      open.cols ?? this.cols,
      open.rows ?? this.rows,
    );
    this.attachments.add(a);
    clearTimeout(this.graceTimer);
    this.graceTimer = undefined;
    conn.send({
      t: "started",
      sid: open.sid,
      pid: this.pty.pid,
      window: PTY_INPUT_WINDOW,
      session: this.id,
      attach_id: a.id,
      offset: cursor,
      end: this.ring.end,
    });
    if (!a.readOnly && (open.cols || open.rows)) this.sizeFrom(a);
    this.pump(a);
    this.manager.changed();
    return a;
  }

  /** Sends what the attachment may take; after the end of output, its exit status. */
  pump(a: Attachment): void {
    if (!this.attachments.has(a)) return;
    while (a.credit > 0 && a.cursor < this.ring.end) {
      if (a.cursor < this.ring.start) a.cursor = this.ring.start;
      const chunk = this.ring.read(a.cursor, Math.min(a.credit, MAX_DATA_PAYLOAD));
      a.conn.sendBinary(encodeData(a.sid, CH_STDOUT, a.cursor, chunk));
      a.cursor += chunk.length;
      a.credit -= chunk.length;
    }
    if (this.ended && a.cursor >= this.ring.end && !a.exitSent) {
      a.exitSent = true;
      a.conn.send({ t: "exit", sid: a.sid, code: this.ended.code, signal: this.ended.signal });
      this.attachments.delete(a);
      this.manager.forget(a);
      if (this.attachments.size === 0) this.manager.remove(this);
    }
    this.wakeReader();
  }

  async input(a: Attachment, data: Uint8Array): Promise<void> {
    if (a.readOnly || this.ended) return;
    this.lastActivity = Date.now();
    this.sizeFrom(a);
    const p = this.inputTail.then(() => this.pty.write(data));
    this.inputTail = p.catch(() => {});
    await p.catch(() => {});
  }

  sizeFrom(a: Attachment): void {
    if (a.readOnly || this.ended) return;
    if (a.cols === this.cols && a.rows === this.rows) return;
    this.cols = a.cols;
    this.rows = a.rows;
    try {
      this.pty.resize(a.cols, a.rows);
    } catch { /* the pty is closing */ }
    this.manager.changed();
  }

  signal(sig: string): void {
    if (isSignalName(sig)) this.pty.kill(sig);
  }

  /** A client left: on purpose ("detach") or by losing its connection ("lost"). */
  leave(a: Attachment, reason: "detach" | "lost"): void {
    if (!this.attachments.delete(a)) return;
    this.manager.forget(a);
    if (reason === "lost" && !this.ephemeral && !this.ended) {
      const timer = setTimeout(() => {
        this.ghosts.delete(a.id);
        this.wakeReader();
      }, this.manager.graceMs);
      this.ghosts.set(a.id, { cursor: a.acked, timer });
    }
    this.wakeReader();
    if (this.attachments.size === 0) {
      if (this.ephemeral) this.terminate();
      else {
        this.graceTimer = setTimeout(() => this.terminate(), this.manager.graceMs);
      }
    }
    this.manager.changed();
  }

  /** Ends the session and waits until its attached clients were sent the exit status. */
  async terminateAndWait(): Promise<void> {
    this.terminate();
    await this.finished;
  }

  /** Ends the process group; attached clients get the exit status. */
  terminate(): void {
    if (this.terminating) return;
    this.terminating = true;
    clearTimeout(this.graceTimer);
    this.pty.terminate().catch(() => {});
  }

  private wakeReader(): void {
    const w = this.roomWaiter;
    this.roomWaiter = undefined;
    w?.();
  }

  /** Bytes the Pty may be read for without overwriting output some client still needs. */
  private room(): number {
    let min = Infinity;
    for (const a of this.attachments) min = Math.min(min, a.acked);
    for (const g of this.ghosts.values()) min = Math.min(min, g.cursor);
    if (min === Infinity) return READ_CHUNK;
    return Math.min(READ_CHUNK, this.ring.capacity - (this.ring.end - min));
  }

  private async readLoop(): Promise<void> {
    const buf = new Uint8Array(READ_CHUNK);
    try {
      for (;;) {
        let room = this.room();
        while (room <= 0 && !this.terminating) {
          await new Promise<void>((r) => (this.roomWaiter = r));
          room = this.room();
        }
        const n = await this.pty.read(buf.subarray(0, Math.max(1, room)));
        if (n === null) break;
        this.ring.append(buf.subarray(0, n));
        this.lastActivity = Date.now();
        for (const a of [...this.attachments]) this.pump(a);
      }
    } catch { /* read failed: the terminal is gone */ }
    // Children that still hold the terminal are ended with the session.
    const exit = await this.pty.terminate();
    this.ended = exit;
    clearTimeout(this.graceTimer);
    for (const g of this.ghosts.values()) clearTimeout(g.timer);
    this.ghosts.clear();
    if (this.attachments.size === 0) this.manager.remove(this);
    for (const a of [...this.attachments]) this.pump(a);
  }
}

/** The agent's sessions, and which stream is attached to which. */
export class SessionManager {
  readonly sessions = new Map<string, Session>();
  readonly ringBytes: number;
  readonly graceMs: number;
  private readonly shell: string[];
  private pendingChange = false;

  constructor(opts: SessionOptions, private readonly onChange: (s: SessionInfo[]) => void) {
    this.ringBytes = opts.ringBytes ?? DEFAULT_RING_BYTES;
    this.graceMs = opts.graceMs ?? DEFAULT_GRACE_MS;
    this.shell = opts.shell ?? [Deno.env.get("SHELL") || "/bin/sh", "-l"];
  }

  /**
   * Handles a pty `open`: joins `open.session` or starts a new session.
   * Returns the attachment, or an error for the client.
   */
  open(
    conn: Conn,
    open: Open,
  ): Attachment | { code: "session_not_found" | "internal"; message: string; hint?: string } {
    if (open.session) {
      const s = this.find(open.session);
      if (!s || s.ended) {
        return {
          code: "session_not_found",
          message: `no session '${open.session}' on this machine`,
          hint: "list sessions with `tether sessions MACHINE`, or start one with --new",
        };
      }
      return s.attach(conn, open);
    }
    let s: Session;
    try {
      s = new Session(this, open.argv.length ? open.argv : this.shell, open, !!open.ephemeral);
    } catch (e) {
      return { code: "internal", message: `cannot start a terminal: ${(e as Error).message}` };
    }
    this.sessions.set(s.id, s);
    return s.attach(conn, open);
  }

  /** Finds a session by id or unique id prefix. */
  find(id: string): Session | undefined {
    const exact = this.sessions.get(id);
    if (exact) return exact;
    const hits = [...this.sessions.values()].filter((s) => s.id.startsWith(id));
    return hits.length === 1 ? hits[0] : undefined;
  }

  /** Shows a line to every attached client (e.g. a CI hold about to end). */
  notifyAll(message: string): number {
    let n = 0;
    for (const s of this.sessions.values()) {
      for (const a of s.attachments) {
        a.conn.send({ t: "notice", sid: a.sid, message });
        n++;
      }
    }
    return n;
  }

  kill(id: string): boolean {
    const s = this.find(id);
    if (!s) return false;
    s.terminate();
    return true;
  }

  remove(s: Session): void {
    if (this.sessions.get(s.id) === s) {
      this.sessions.delete(s.id);
      s.pty.close();
      this.changed();
    }
  }

  /** Called when an attachment is gone; hook for the agent's stream table. */
  forget(_a: Attachment): void {}

  list(): SessionInfo[] {
    return [...this.sessions.values()].filter((s) => !s.ended).map((s) => s.info());
  }

  changed(): void {
    if (this.pendingChange) return;
    this.pendingChange = true;
    queueMicrotask(() => {
      this.pendingChange = false;
      this.onChange(this.list());
    });
  }

  /** Ends every session (agent shutdown); resolves once each has sent its exit status. */
  async closeAll(): Promise<void> {
    await Promise.all([...this.sessions.values()].map((s) => s.terminateAndWait()));
  }
}
