/**
 * PTY sessions: objects on the agent that outlive connections.
 *
 * A session owns a Pty and the Fanout of its output (fanout.ts: one ring on
 * channel 1, addressed by absolute byte offset). Clients attach as streams;
 * each attachment is a watcher of the fanout, so joining replays what the
 * ring holds, a resumed client gets exactly the bytes after its last offset,
 * and a client that stops reading stops the program.
 *
 * Size policy: the PTY takes the size of the client that most recently
 * typed or resized.
 */
import type { StreamConn } from "../protocol/conn.ts";
import { Grant } from "../protocol/flow.ts";
import { CH_STDIN, CH_STDOUT, encodeCredit } from "../protocol/frames.ts";
import {
  MAX_HOLD_MS,
  MAX_PARTICIPANTS,
  MAX_STREAMS_PER_CONN,
  type Open,
  type Participant,
  type SessionInfo,
  type WireError,
} from "../protocol/messages.ts";
import { Fanout, type Watcher } from "./fanout.ts";
import { inputPool } from "./input_pool.ts";
import { Pty, type PtyExit } from "./pty.ts";
import { isSignalName } from "../common/signals.ts";
import { findByPrefix, newShortId } from "./short_id.ts";

export const DEFAULT_RING_BYTES = 1024 * 1024;
export const DEFAULT_GRACE_MS = 30_000;
/** Credit granted to each attachment for input toward the PTY. */
export const PTY_INPUT_WINDOW = 64 * 1024;

export interface SessionOptions {
  ringBytes?: number;
  graceMs?: number;
  /** Command for a new session when the client names none (default: $SHELL -l). */
  shell?: string[];
}

/** What a SessionManager tells its owner. */
export interface SessionHooks {
  /** Sessions or their attached clients changed. */
  changed(list: SessionInfo[]): void;
  /** An attachment is gone (its stream is over). */
  left(a: Attachment): void;
  /** A process group now runs on the agent's behalf, or no longer does. */
  started?(pid: number): void;
  ended?(pid: number): void;
}

/** One client attached to a session through one stream. */
export class Attachment {
  private readonly grant: Grant;

  constructor(
    readonly session: Session,
    readonly watcher: Watcher,
    readonly readOnly: boolean,
    public cols: number,
    public rows: number,
    /** The key it came with, as the relay told us (`share:ID` for a browser page). */
    readonly key: string,
  ) {
    this.grant = new Grant(
      PTY_INPUT_WINDOW,
      (n) => watcher.conn.sendBinary(encodeCredit(watcher.sid, CH_STDIN, n)),
    );
  }

  get id(): string {
    return this.watcher.id;
  }

  get sid(): number {
    return this.watcher.sid;
  }

  get conn(): StreamConn {
    return this.watcher.conn;
  }

  onCredit(bytes: number): void {
    this.watcher.onCredit(bytes);
  }

  onStdin(payload: Uint8Array): void {
    const data = inputPool.copy(payload); // the payload is borrowed: valid only now
    this.session.input(this, data).finally(() => {
      inputPool.give(data);
      this.grant.consumed(data.length);
    });
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

  abort(reason: "detach" | "lost" | "kill" = "lost"): void {
    this.session.leave(this, reason === "kill" ? "detach" : reason);
  }
}

export class Session {
  readonly id: string;
  readonly created = Date.now();
  readonly pty: Pty;
  readonly output: Fanout;
  readonly attachments = new Set<Attachment>();
  cols: number;
  rows: number;
  lastActivity = Date.now();
  ended?: PtyExit;
  private graceTimer?: ReturnType<typeof setTimeout>;
  /** Kept without clients at least until then (an open's `hold_ms`: a share link's life). */
  private holdUntil = 0;
  /** Resolves when the read loop has ended and exit statuses went out. */
  private finished: Promise<void>;
  private inputTail: Promise<void> = Promise.resolve();
  private terminating = false;

  constructor(
    readonly manager: SessionManager,
    readonly argv: string[],
    open: Open,
    readonly ephemeral: boolean,
  ) {
    this.id = newShortId();
    this.cols = open.cols ?? 80;
    this.rows = open.rows ?? 24;
    this.output = new Fanout([CH_STDOUT], manager.ringBytes, {
      ghostMs: manager.graceMs,
      onDone: (w) => this.done(w),
    });
    this.pty = Pty.spawn({
      argv,
      env: { ...(open.env ?? {}), TERM: open.term || "xterm-256color", TETHER_SESSION: this.id },
      cwd: open.cwd ?? Deno.env.get("HOME") ?? "/",
      cols: this.cols,
      rows: this.rows,
    });
    manager.hooks.started?.(this.pty.pid);
    this.finished = this.readLoop();
  }

  info(): SessionInfo {
    return {
      id: this.id,
      created: this.created,
      command: this.argv.join(" ").slice(0, 512),
      clients: this.attachments.size,
      cols: this.cols,
      rows: this.rows,
      idle_ms: Date.now() - this.lastActivity,
      participants: this.participants(),
    };
  }

  participants(): Participant[] {
    return [...this.attachments].slice(0, MAX_PARTICIPANTS).map((a) => ({
      id: a.id,
      key: a.key,
      read_only: a.readOnly,
    }));
  }

  /** Tells every attached client who is attached now. */
  private announce(): void {
    const msg = { participants: this.participants(), clients: this.attachments.size };
    for (const a of this.attachments) a.conn.send({ t: "participants", sid: a.sid, ...msg });
  }

  attach(conn: StreamConn, open: Open): Attachment {
    // A client that lost its connection may be back before the agent heard of the loss.
    for (const old of this.attachments) {
      if (old.id === open.resume) this.leave(old, "lost");
    }
    const w = this.output.watch(conn, open.sid, open.window, [open.offset], open.resume);
    const a = new Attachment(
      this,
      w,
      !!open.read_only,
      open.cols ?? this.cols,
      open.rows ?? this.rows,
      open.client_key ?? "",
    );
    this.attachments.add(a);
    if (open.hold_ms && !a.readOnly) {
      this.holdUntil = Math.max(this.holdUntil, Date.now() + Math.min(open.hold_ms, MAX_HOLD_MS));
    }
    clearTimeout(this.graceTimer);
    this.graceTimer = undefined;
    conn.send({
      t: "started",
      sid: open.sid,
      pid: this.pty.pid,
      window: PTY_INPUT_WINDOW,
      session: this.id,
      attach_id: a.id,
      offset: w.cursors[0],
      end: this.output.rings[0].end,
    });
    if (!a.readOnly && (open.cols || open.rows)) this.sizeFrom(a);
    // After the caller has registered the stream: an ended session's last message may go
    // out in this first pump, and the stream must be known then to be forgotten.
    queueMicrotask(() => this.output.pump(w));
    this.announce();
    this.manager.changed();
    return a;
  }

  /** The fanout sent an attachment its exit status: it is over. */
  private done(w: Watcher): void {
    for (const a of this.attachments) {
      if (a.watcher !== w) continue;
      this.attachments.delete(a);
      this.manager.hooks.left(a);
    }
    if (this.attachments.size === 0 && this.ended) this.manager.remove(this);
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
    this.manager.hooks.left(a);
    this.output.leave(a.watcher, this.ephemeral ? "detach" : reason);
    if (this.attachments.size === 0 && this.ended) {
      // Its program ended while this client still had output to take: nothing is left.
      this.manager.remove(this);
    } else if (this.attachments.size === 0) {
      if (this.ephemeral) this.terminate();
      else {
        const wait = Math.max(this.manager.graceMs, this.holdUntil - Date.now());
        this.graceTimer = setTimeout(() => this.terminate(), wait);
      }
    }
    this.announce();
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
    this.output.wake();
  }

  private async readLoop(): Promise<void> {
    try {
      await this.output.pipe(0, async (into) => {
        const n = await this.pty.read(into);
        if (n === null) return null;
        this.lastActivity = Date.now();
        return into.subarray(0, n);
      }, () => this.terminating);
    } catch { /* read failed: the terminal is gone */ }
    // Children that still hold the terminal are ended with the session.
    const exit = await this.pty.terminate();
    this.manager.hooks.ended?.(this.pty.pid);
    this.ended = exit;
    clearTimeout(this.graceTimer);
    this.output.end((sid) => ({ t: "exit", sid, code: exit.code, signal: exit.signal }));
    if (this.attachments.size === 0) this.manager.remove(this);
  }
}

/** The agent's sessions, and which stream is attached to which. */
export class SessionManager {
  readonly sessions = new Map<string, Session>();
  readonly ringBytes: number;
  readonly graceMs: number;
  private readonly shell: string[];
  private pendingChange = false;

  constructor(opts: SessionOptions, readonly hooks: SessionHooks) {
    this.ringBytes = opts.ringBytes ?? DEFAULT_RING_BYTES;
    this.graceMs = opts.graceMs ?? DEFAULT_GRACE_MS;
    this.shell = opts.shell ?? [Deno.env.get("SHELL") || "/bin/sh", "-l"];
  }

  /**
   * Handles a pty `open`: joins `open.session` or starts a new session.
   * Returns the attachment, or an error for the client.
   */
  open(conn: StreamConn, open: Open): Attachment | WireError {
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
    if (this.sessions.size >= MAX_STREAMS_PER_CONN) {
      // Each is reported to the relay in one message of at most this many.
      return {
        code: "rate_limited",
        message: `${this.sessions.size} sessions are open on this machine already`,
        hint: "end some with `tether sessions kill ID`",
      };
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
    return findByPrefix(this.sessions, id);
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

  list(): SessionInfo[] {
    return [...this.sessions.values()].filter((s) => !s.ended).map((s) => s.info());
  }

  changed(): void {
    if (this.pendingChange) return;
    this.pendingChange = true;
    queueMicrotask(() => {
      this.pendingChange = false;
      this.hooks.changed(this.list());
    });
  }

  /** Ends every session (agent shutdown); resolves once each has sent its exit status. */
  async closeAll(): Promise<void> {
    await Promise.all([...this.sessions.values()].map((s) => s.terminateAndWait()));
  }
}
