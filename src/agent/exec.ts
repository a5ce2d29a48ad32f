/**
 * `exec` on the agent: commands that outlive their watchers.
 *
 * An Exec is a process started directly from argv (no shell, no PTY) in its
 * own process group and session, with its stdout and stderr kept in a Fanout
 * (fanout.ts), and its exit status kept after it ends. Clients watch it
 * through streams (ExecStream); the stream that started it, or one resuming
 * it, also feeds its stdin. A watcher that goes away — on purpose (`exec
 * --detach`, a client that gave up) or by losing its connection — leaves the
 * command running; `exec --attach ID` watches it again from any offset, and
 * gets its exit status as if it had watched all along.
 *
 * - Output: per channel, the last `ringBytes` (1 MiB) are kept; with nobody
 *   watching, older output is dropped (a watcher learns how much from the
 *   offsets). A slow watcher slows the process, as a full pipe would.
 * - Stdin: bytes are numbered (the DATA frame's offset). The agent counts what
 *   it accepted, so a client resuming after a lost connection resends from
 *   `started.stdin_offset` and nothing is written twice or skipped. When no
 *   watcher that may write stdin is left (and none may come back), the
 *   process gets EOF.
 * - Retention: an ended exec is kept `retentionMs` (1 h), at most
 *   MAX_ENDED of them, their output together at most `retainBytes`
 *   (older ones keep their exit status and lose their output first).
 * - Records: each exec is also written to `<state-dir>/execs/ID.json`, so an
 *   agent that restarts knows which ran: one that was running when the agent
 *   died is `lost` (its exit status is unknown: session_lost, never 0); one
 *   that had ended keeps its status (its output is gone).
 */
import { join } from "node:path";
import type { StreamConn } from "../protocol/conn.ts";
import { Grant, STDIN_WINDOW } from "../protocol/flow.ts";
import { CH_STDERR, CH_STDIN, CH_STDOUT, encodeCredit } from "../protocol/frames.ts";
import type { Control, Open, SessionInfo, WireError } from "../protocol/messages.ts";
import { isSignalName } from "../common/signals.ts";
import { writePrivate } from "../common/files.ts";
import { Fanout, type Watcher } from "./fanout.ts";
import { inputPool } from "./input_pool.ts";
import { enlargePipe } from "./pipe_size.ts";
import { endGroup, killGroup, NotRunnable, spawnInSession } from "./process_group.ts";
import { findByPrefix, newShortId } from "./short_id.ts";

/** Default of `agent run --exec-retention`. */
export const DEFAULT_EXEC_RETENTION_MS = 60 * 60_000;
/** How long a watcher whose connection was lost keeps its place (a client's reconnect window). */
export const EXEC_GHOST_MS = 60_000;
/** Ended execs kept at most (the oldest go first). */
const MAX_ENDED = 1000;
/** Commands running at once at most. */
const MAX_RUNNING = 1024;
/** Output kept of ended execs, all together (the oldest lose theirs first). */
const DEFAULT_RETAIN_BYTES = 64 * 1024 * 1024;
const RECORDS_DIR = "execs";

export type ExecEnd =
  | { state: "exited"; code: number; signal: string | null }
  | { state: "timeout"; timeout_ms: number }
  | { state: "lost" };

/** What is written to `execs/ID.json`. */
interface ExecRecord {
  id: string;
  argv: string[];
  created: number;
  pid?: number;
  end?: ExecEnd;
  ended_at?: number;
  /** Bytes written on stdout and stderr, for a restored exec's offsets. */
  totals?: [number, number];
}

export interface ExecManagerOptions {
  ringBytes: number;
  retentionMs?: number;
  retainBytes?: number;
  /** Where records are kept; none: execs are forgotten with the agent. */
  stateDir?: string;
  log: (line: string) => void;
  /** A process group started or ended (for the reaper). */
  started?(pid: number): void;
  ended?(pid: number): void;
  /** A watcher was sent its exec's last message: its stream is over. */
  watcherDone?(w: Watcher): void;
}

export class ExecManager {
  readonly execs = new Map<string, Exec>();
  private readonly retentionMs: number;
  private readonly retainBytes: number;
  private sweepTimer?: ReturnType<typeof setInterval>;
  private warnedRecords = false;

  constructor(readonly opts: ExecManagerOptions) {
    this.retentionMs = opts.retentionMs ?? DEFAULT_EXEC_RETENTION_MS;
    this.retainBytes = opts.retainBytes ?? DEFAULT_RETAIN_BYTES;
  }

  /**
   * Reads the records an earlier run of the agent left: what was running then
   * is lost now; what had ended keeps its status. Old records are deleted.
   */
  restore(): void {
    const dir = this.recordsDir();
    if (!dir) return;
    let names: string[];
    try {
      names = [...Deno.readDirSync(dir)].filter((e) => e.isFile).map((e) => e.name);
    } catch {
      return;
    }
    const now = Date.now();
    for (const name of names) {
      const path = join(dir, name);
      let rec: ExecRecord;
      try {
        rec = JSON.parse(Deno.readTextFileSync(path));
        if (typeof rec.id !== "string" || !Array.isArray(rec.argv)) throw new Error("malformed");
      } catch {
        try {
          Deno.removeSync(path);
        } catch { /* cannot: it is skipped again next time */ }
        continue;
      }
      if (!rec.end) {
        rec.end = { state: "lost" };
        rec.ended_at = now;
        this.write(rec);
      }
      if (now - (rec.ended_at ?? 0) > this.retentionMs) {
        this.forgetRecord(rec.id);
        continue;
      }
      this.execs.set(rec.id, Exec.restored(this, rec));
    }
    this.trim();
    if (this.execs.size > 0) this.sweepSoon();
  }

  /** Starts a command for an `open` without `session`; returns the exec or a refusal. */
  start(open: Open): Exec | WireError {
    let running = 0;
    for (const e of this.execs.values()) if (!e.end) running++;
    if (running >= MAX_RUNNING) {
      return {
        code: "rate_limited",
        message: `${running} commands are running on this machine already`,
        hint: "wait for some to end, or end them with `tether sessions kill ID`",
      };
    }
    const e = new Exec(this, open);
    this.execs.set(e.id, e);
    e.start(open);
    this.sweepSoon();
    return e;
  }

  /** Finds an exec by id or unique id prefix. */
  find(id: string): Exec | undefined {
    return findByPrefix(this.execs, id);
  }

  /** Ends a running exec's process group; its watchers get its exit status. */
  kill(id: string): boolean {
    const e = this.find(id);
    if (!e || e.end) return false;
    e.kill();
    return true;
  }

  list(): SessionInfo[] {
    return [...this.execs.values()].map((e) => e.info());
  }

  get running(): Exec[] {
    return [...this.execs.values()].filter((e) => !e.end);
  }

  /** An exec ended: record it, and keep what is kept within bounds. */
  ended(e: Exec): void {
    this.write(e.record());
    this.trim();
    this.sweepSoon();
  }

  /** Drops what retention no longer covers: the oldest ended execs, then their output. */
  trim(): void {
    const now = Date.now();
    const idle = [...this.execs.values()].filter((e) => e.end && e.output.watchers.size === 0)
      .sort((a, b) => a.endedAt - b.endedAt);
    const kept: Exec[] = [];
    for (const [i, e] of idle.entries()) {
      if (now - e.endedAt > this.retentionMs || idle.length - i > MAX_ENDED) {
        this.execs.delete(e.id);
        this.forgetRecord(e.id);
      } else {
        kept.push(e);
      }
    }
    // Over the budget, the oldest lose their output first (their status stays).
    let bytes = 0;
    for (const e of this.execs.values()) if (e.end) bytes += e.output.footprint;
    for (const e of kept) {
      if (bytes <= this.retainBytes) break;
      bytes -= e.output.footprint;
      e.output.discard();
      bytes += e.output.footprint;
    }
  }

  /** Stops the retention sweep. */
  close(): void {
    clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
  }

  private sweepSoon(): void {
    if (this.sweepTimer) return;
    this.sweepTimer = setInterval(() => {
      this.trim();
      if (this.execs.size === 0) this.close();
    }, Math.max(1000, Math.min(60_000, this.retentionMs)));
    Deno.unrefTimer(this.sweepTimer);
  }

  private recordsDir(): string | undefined {
    return this.opts.stateDir ? join(this.opts.stateDir, RECORDS_DIR) : undefined;
  }

  /** Best effort: a state dir that cannot be written only costs the memory of a restart. */
  write(rec: ExecRecord): void {
    const dir = this.recordsDir();
    if (!dir) return;
    try {
      Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
      writePrivate(join(dir, `${rec.id}.json`), JSON.stringify(rec) + "\n");
    } catch (e) {
      if (!this.warnedRecords) {
        this.warnedRecords = true;
        this.opts.log(`cannot keep exec records in ${dir}: ${(e as Error).message}`);
      }
    }
  }

  private forgetRecord(id: string): void {
    const dir = this.recordsDir();
    if (!dir) return;
    try {
      Deno.removeSync(join(dir, `${id}.json`));
    } catch { /* not there */ }
  }
}

export class Exec {
  readonly id: string = newShortId();
  readonly created: number;
  readonly argv: string[];
  readonly output: Fanout;
  pid?: number;
  end?: ExecEnd;
  endedAt = 0;
  private child?: Deno.ChildProcess;
  private timeoutMs?: number;
  private timer?: ReturnType<typeof setTimeout>;
  /** The process is being ended by us (kill, timeout, agent stop): its output may go. */
  private forced = false;
  private timedOut = false;
  /** The process it started has exited (its pid may be someone else's now). */
  private leaderExited = false;
  private readers: ReadableStreamBYOBReader[] = [];
  // stdin
  private stdin?: WritableStreamDefaultWriter<Uint8Array>;
  private stdinQueue: { data: Uint8Array; done: () => void }[] = [];
  /** Bytes of stdin accepted so far: the offset the next byte must have. */
  stdinOffset = 0;
  private stdinEof = false;
  private writing = false;
  /** Streams that may write stdin. */
  private readonly feeders = new Set<ExecStream>();
  private resolveEnded!: () => void;
  /** Resolves once the exec has ended and its record is written. */
  readonly ended = new Promise<void>((r) => (this.resolveEnded = r));

  constructor(readonly manager: ExecManager, open?: Open, rec?: ExecRecord) {
    this.created = rec?.created ?? Date.now();
    this.argv = rec?.argv ?? open?.argv ?? [];
    if (rec) this.id = rec.id;
    this.output = new Fanout([CH_STDOUT, CH_STDERR], manager.opts.ringBytes, {
      ghostMs: EXEC_GHOST_MS,
      onDone: (w) => {
        this.manager.opts.watcherDone?.(w);
        this.manager.trim();
      },
    }, rec?.totals);
  }

  /** An exec known only from the record an earlier run of the agent left. */
  static restored(manager: ExecManager, rec: ExecRecord): Exec {
    const e = new Exec(manager, undefined, rec);
    e.pid = rec.pid;
    e.end = rec.end;
    e.endedAt = rec.ended_at ?? Date.now();
    e.output.end((sid) => e.lastMessage(sid));
    e.resolveEnded();
    return e;
  }

  record(): ExecRecord {
    return {
      id: this.id,
      argv: this.argv,
      created: this.created,
      ...(this.pid ? { pid: this.pid } : {}),
      ...(this.end ? { end: this.end, ended_at: this.endedAt } : {}),
      totals: [this.output.rings[0].end, this.output.rings[1].end],
    };
  }

  info(): SessionInfo {
    const e = this.end;
    return {
      id: this.id,
      kind: "exec",
      created: this.created,
      command: this.argv.join(" ").slice(0, 512),
      clients: this.output.watchers.size,
      cols: 1,
      rows: 1,
      idle_ms: 0,
      state: e ? (e.state === "exited" ? "exited" : e.state) : "running",
      ...(e?.state === "exited" ? { exit_code: e.code, signal: e.signal } : {}),
      ...(e ? { ended: this.endedAt } : {}),
    };
  }

  start(open: Open): void {
    const problem = cwdProblem(open.cwd);
    if (problem) return this.failStart(problem.message, problem.code);
    try {
      // Its own session and process group: one signal reaches all of it.
      this.child = spawnInSession(this.argv, {
        cwd: open.cwd,
        env: open.env,
        stdin: open.stdin ? "piped" : "null",
        stdout: "piped",
        stderr: "piped",
      });
    } catch (e) {
      if (e instanceof NotRunnable) return this.failStart(e.message, e.code);
      const denied = e instanceof Deno.errors.PermissionDenied;
      return this.failStart(`${this.argv[0]}: ${(e as Error).message}`, denied ? 126 : 127);
    }
    const child = this.child;
    this.pid = child.pid;
    this.manager.opts.started?.(child.pid);
    this.manager.write(this.record());
    if (open.stdin) this.stdin = child.stdin.getWriter();
    else this.stdinEof = true;
    if (open.timeout_ms) {
      this.timeoutMs = open.timeout_ms;
      this.timer = setTimeout(() => {
        this.timedOut = true;
        this.kill();
      }, open.timeout_ms);
    }
    const pumps = Promise.all([
      this.pump(child.stdout, 0),
      this.pump(child.stderr, 1),
    ]);
    this.finish(child, pumps);
  }

  /** Like a shell that cannot run the command: a line on stderr, then 127 or 126 (1 for cwd). */
  private failStart(message: string, code: number): void {
    const text = new TextEncoder().encode(`tether: ${message}\n`);
    const buf = new Uint8Array(16 + text.length);
    buf.set(text, 16);
    this.output.append(1, buf.subarray(16));
    this.stdinEof = true;
    this.finishWith({ state: "exited", code, signal: null });
  }

  private async pump(stream: ReadableStream<Uint8Array>, i: number): Promise<void> {
    const reader = stream.getReader({ mode: "byob" });
    this.readers.push(reader);
    // A bulk output's pipe is enlarged (stdout or stderr: the child's descriptor i + 1),
    // reached through the child's pid while it lives (once reaped, the pid may be reused).
    let release: (() => void) | undefined;
    const grow = () =>
      this.pid !== undefined && !this.leaderExited &&
      (release = enlargePipe(this.pid, i + 1)) !== undefined;
    try {
      await this.output.pipe(
        i,
        async (into) => {
          const { value, done } = await reader.read(into);
          return done || !value ? null : value;
        },
        () => this.forced,
        grow,
      );
    } catch {
      // The reader was cancelled (kill, timeout) or the pipe failed: nothing more to read.
    } finally {
      release?.();
    }
  }

  private async finish(child: Deno.ChildProcess, pumps: Promise<unknown>): Promise<void> {
    const status = await child.status;
    this.leaderExited = true;
    // Ended by us: whatever its children still hold open is not waited for.
    if (this.forced) this.stopReading();
    await pumps;
    // Until now what it started in the background could still hold its output open: the
    // reaper keeps watching the group until here.
    this.manager.opts.ended?.(child.pid);
    this.finishWith(
      this.timedOut
        ? { state: "timeout", timeout_ms: this.timeoutMs! }
        : { state: "exited", code: status.code, signal: status.signal },
    );
  }

  private finishWith(end: ExecEnd): void {
    // The timeout covers all of it: what the command left running holds its output open.
    clearTimeout(this.timer);
    this.end = end;
    this.endedAt = Date.now();
    this.stdinQueue = [];
    this.stdin?.close().catch(() => {});
    this.stdin = undefined;
    this.output.end((sid) => this.lastMessage(sid));
    this.manager.ended(this);
    this.resolveEnded();
  }

  /** What a watcher is told once it has all the output. */
  lastMessage(sid: number): Control {
    const e = this.end!;
    if (e.state === "exited") return { t: "exit", sid, code: e.code, signal: e.signal };
    if (e.state === "timeout") {
      return {
        t: "error",
        sid,
        code: "timeout",
        message: `the command ran past its timeout of ${e.timeout_ms} ms and was ended`,
      };
    }
    return {
      t: "error",
      sid,
      code: "session_lost",
      message: `exec ${this.id} was running when the agent restarted; its exit status is unknown`,
      hint: "run the command again",
    };
  }

  /** Ends the process group (SIGTERM, then SIGKILL); watchers get how it ended. */
  kill(): void {
    if (!this.child || this.end || this.forced) return;
    this.forced = true;
    endGroup(this.child.pid, this.child.status, !this.leaderExited);
    // Its leader is gone already: what holds the output open is not waited for either.
    if (this.leaderExited) this.stopReading();
    this.output.wake();
  }

  signal(sig: string): void {
    if (this.child && !this.end && isSignalName(sig)) {
      killGroup(this.child.pid, sig, !this.leaderExited);
    }
  }

  private stopReading(): void {
    for (const r of this.readers) r.cancel().catch(() => {});
  }

  /** A watcher stream for `open` (a new exec's own stream, or one attaching to it). */
  watch(conn: StreamConn, open: Open): ExecStream {
    const w = this.output.watch(
      conn,
      open.sid,
      open.window,
      [open.offset, open.err_offset],
      open.resume,
    );
    const s = new ExecStream(this, w, open.stdin && !this.stdinEof);
    if (s.feeds) this.feeders.add(s);
    conn.send({
      t: "started",
      sid: open.sid,
      ...(this.pid ? { pid: this.pid } : {}),
      window: STDIN_WINDOW,
      session: this.id,
      attach_id: w.id,
      offset: w.cursors[0],
      err_offset: w.cursors[1],
      stdin_offset: this.stdinOffset,
    });
    // After the caller has registered the stream: an ended exec's last message may go out
    // in this first pump, and the stream must be known then to be forgotten.
    queueMicrotask(() => this.output.pump(w));
    return s;
  }

  /** A watcher stream is gone; with no one left to write stdin, the process gets EOF. */
  left(s: ExecStream, reason: "detach" | "lost"): void {
    this.output.leave(s.watcher, reason);
    this.feeders.delete(s);
    this.closeStdinIfOrphaned();
  }

  private closeStdinIfOrphaned(): void {
    if (this.stdinEof || this.feeders.size > 0) return;
    if (this.output.hasGhosts) {
      // A lost watcher may come back and go on writing: look again when its place expires.
      setTimeout(() => this.closeStdinIfOrphaned(), EXEC_GHOST_MS + 100);
      return;
    }
    this.closeStdin();
  }

  /**
   * Bytes for stdin starting at `offset` (borrowed: what is kept is copied); `done` runs once
   * they are in the pipe (or dropped).
   */
  writeStdin(offset: number, data: Uint8Array, done: () => void): void {
    // A resuming client may resend what we already took; a gap cannot be filled.
    const skip = Math.max(0, this.stdinOffset - offset);
    if (this.stdinEof || !this.stdin || skip >= data.length || offset > this.stdinOffset) {
      done();
      return;
    }
    const fresh = inputPool.copy(skip > 0 ? data.subarray(skip) : data);
    this.stdinOffset += fresh.length;
    this.stdinQueue.push({
      data: fresh,
      done: () => {
        inputPool.give(fresh);
        done();
      },
    });
    this.drainStdin();
  }

  closeStdin(): void {
    if (this.stdinEof) return;
    this.stdinEof = true;
    this.drainStdin();
  }

  private async drainStdin(): Promise<void> {
    if (this.writing || !this.stdin) return;
    this.writing = true;
    const w = this.stdin;
    while (this.stdinQueue.length > 0) {
      const { data, done } = this.stdinQueue.shift()!;
      try {
        await w.write(data);
      } catch {
        // The process closed its stdin; keep crediting so no client is ever stuck.
        for (const q of this.stdinQueue) q.done();
        this.stdinQueue = [];
      }
      done();
    }
    if (this.stdinEof && this.stdin === w) {
      this.stdin = undefined;
      w.close().catch(() => {});
    }
    this.writing = false;
  }
}

/** One client stream watching (and maybe feeding) an exec. */
export class ExecStream {
  private readonly grant: Grant;

  constructor(readonly exec: Exec, readonly watcher: Watcher, readonly feeds: boolean) {
    this.grant = new Grant(
      STDIN_WINDOW,
      (n) => watcher.conn.sendBinary(encodeCredit(watcher.sid, CH_STDIN, n)),
    );
  }

  onStdin(payload: Uint8Array, offset: number): void {
    const n = payload.length;
    if (!this.feeds) this.grant.consumed(n);
    else this.exec.writeStdin(offset, payload, () => this.grant.consumed(n));
  }

  onCredit(bytes: number): void {
    this.watcher.onCredit(bytes);
  }

  onEof(): void {
    if (this.feeds) this.exec.closeStdin();
  }

  onSignal(sig: string): void {
    this.exec.signal(sig);
  }

  onResize(): void {}

  /**
   * The client left: "lost" (its connection ended; it may resume), "detach"
   * (on purpose; the command runs on), or "kill" (end the command too).
   */
  abort(reason: "detach" | "lost" | "kill" = "lost"): void {
    this.exec.left(this, reason === "lost" ? "lost" : "detach");
    if (reason === "kill") this.exec.kill();
  }
}

function cwdProblem(cwd: string | undefined): { message: string; code: number } | undefined {
  if (!cwd) return undefined;
  try {
    if (!Deno.statSync(cwd).isDirectory) return { message: `cwd ${cwd}: not a directory`, code: 1 };
  } catch (e) {
    return { message: `cwd ${cwd}: ${(e as Error).message}`, code: 1 };
  }
  return undefined;
}
