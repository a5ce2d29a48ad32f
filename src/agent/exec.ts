/**
 * One `exec` stream on the agent: a process started directly from argv (no
 * shell, no PTY) in its own process group, stdout and stderr forwarded under
 * the client's credit, stdin written as it arrives and credited back once
 * the process has taken it.
 */
import type { Conn } from "../protocol/conn.ts";
import { Credit, Grant, STDIN_WINDOW } from "../protocol/flow.ts";
import {
  CH_STDERR,
  CH_STDIN,
  CH_STDOUT,
  DATA_FRAME_PREFIX,
  dataFrameInPlace,
  encodeCredit,
  encodeData,
  MAX_DATA_PAYLOAD,
} from "../protocol/frames.ts";
import type { Open } from "../protocol/messages.ts";

/** Bytes per read of the process's output (a Linux pipe holds 64 KiB). */
const READ_CHUNK = 64 * 1024;

/** Time between SIGTERM and SIGKILL when a process group is ended. */
export const KILL_GRACE_MS = 2_000;

const SIGNALS = new Set<Deno.Signal>([
  "SIGHUP",
  "SIGINT",
  "SIGQUIT",
  "SIGKILL",
  "SIGTERM",
  "SIGUSR1",
  "SIGUSR2",
  "SIGCONT",
  "SIGSTOP",
  "SIGTSTP",
  "SIGWINCH",
]);

export function isSignalName(s: string): s is Deno.Signal {
  return SIGNALS.has(s as Deno.Signal);
}

/** Sends `sig` to the whole process group led by `pid`; quiet if it is gone. */
export function killGroup(pid: number, sig: Deno.Signal): void {
  try {
    Deno.kill(-pid, sig);
  } catch {
    try {
      Deno.kill(pid, sig);
    } catch { /* already gone */ }
  }
}

/** SIGTERM to the group now, SIGKILL after the grace unless `done` settles first. */
export function endGroup(pid: number, done: Promise<unknown>): void {
  killGroup(pid, "SIGTERM");
  const t = setTimeout(() => killGroup(pid, "SIGKILL"), KILL_GRACE_MS);
  done.finally(() => {
    clearTimeout(t);
    // Children that outlived the leader still hold the group; finish them.
    killGroup(pid, "SIGKILL");
  });
}

export class ExecStream {
  private readonly onEnd: () => void;
  private readonly credit: Credit;
  private readonly stdinGrant: Grant;
  private readonly offsets = [0, 0, 0];
  private child?: Deno.ChildProcess;
  private stdin?: WritableStreamDefaultWriter<Uint8Array>;
  private stdinQueue: Uint8Array[] = [];
  private stdinEof = false;
  private writing = false;
  private aborted = false;
  private timedOut = false;
  private timer?: ReturnType<typeof setTimeout>;
  private readers: ReadableStreamBYOBReader[] = [];
  private resolveEnded!: () => void;
  /** Resolves once the stream has ended: its exit status (or error) went out, or it was aborted. */
  readonly ended = new Promise<void>((r) => (this.resolveEnded = r));

  constructor(
    private readonly conn: Conn,
    readonly sid: number,
    private readonly open: Open,
    onEnd: () => void,
  ) {
    this.onEnd = () => {
      onEnd();
      this.resolveEnded();
    };
    this.credit = new Credit(open.window);
    this.stdinGrant = new Grant(
      STDIN_WINDOW,
      (n) => conn.sendBinary(encodeCredit(sid, CH_STDIN, n)),
    );
  }

  start(): void {
    const { argv, cwd, env } = this.open;
    const failure = this.spawnProblem();
    if (failure) return this.failStart(failure.message, failure.code);
    try {
      this.child = new Deno.Command(argv[0], {
        args: argv.slice(1),
        cwd,
        env,
        stdin: this.open.stdin ? "piped" : "null",
        stdout: "piped",
        stderr: "piped",
        detached: true,
      }).spawn();
    } catch (e) {
      const denied = e instanceof Deno.errors.PermissionDenied;
      return this.failStart(`${argv[0]}: ${(e as Error).message}`, denied ? 126 : 127);
    }
    const child = this.child;
    if (this.open.stdin) this.stdin = child.stdin.getWriter();
    this.conn.send({ t: "started", sid: this.sid, pid: child.pid, window: STDIN_WINDOW });
    if (this.open.timeout_ms) {
      this.timer = setTimeout(() => {
        this.timedOut = true;
        endGroup(child.pid, child.status);
      }, this.open.timeout_ms);
    }
    const pumps = Promise.all([
      this.pump(child.stdout, CH_STDOUT),
      this.pump(child.stderr, CH_STDERR),
    ]);
    this.finish(child, pumps);
  }

  private spawnProblem(): { message: string; code: number } | undefined {
    const cwd = this.open.cwd;
    if (!cwd) return undefined;
    try {
      if (!Deno.statSync(cwd).isDirectory) {
        return { message: `cwd ${cwd}: not a directory`, code: 1 };
      }
    } catch (e) {
      return { message: `cwd ${cwd}: ${(e as Error).message}`, code: 1 };
    }
    return undefined;
  }

  /** Like a shell that cannot run the command: a message on stderr, then 127 or 126. */
  private failStart(message: string, code: number): void {
    this.conn.send({ t: "started", sid: this.sid, window: STDIN_WINDOW });
    const text = new TextEncoder().encode(`tether: ${message}\n`);
    if (text.length <= this.credit.available) {
      this.conn.sendBinary(encodeData(this.sid, CH_STDERR, 0, text));
    }
    this.conn.send({ t: "exit", sid: this.sid, code });
    this.onEnd();
  }

  private async finish(child: Deno.ChildProcess, pumps: Promise<unknown>): Promise<void> {
    const status = await child.status;
    clearTimeout(this.timer);
    if (this.timedOut || this.aborted) {
      this.stopReading();
    } else {
      await pumps;
    }
    this.credit.close();
    if (!this.aborted) {
      if (this.timedOut) {
        this.conn.send({
          t: "error",
          sid: this.sid,
          code: "timeout",
          message: `the command ran past its timeout of ${this.open.timeout_ms} ms and was ended`,
        });
      } else {
        this.conn.send({ t: "exit", sid: this.sid, code: status.code, signal: status.signal });
      }
    }
    this.onEnd();
  }

  private async pump(stream: ReadableStream<Uint8Array>, ch: number): Promise<void> {
    // Reads land in one buffer, after room for the DATA header; the socket copies each
    // frame into its write buffer, so the same memory takes the next read (BYOB hands
    // it back as `value`) and streaming makes no garbage.
    const reader = stream.getReader({ mode: "byob" });
    this.readers.push(reader);
    let buf = new Uint8Array(new ArrayBuffer(DATA_FRAME_PREFIX + READ_CHUNK), DATA_FRAME_PREFIX);
    try {
      for (;;) {
        const { value, done } = await reader.read(buf);
        if (done || !value) return;
        buf = new Uint8Array(value.buffer, DATA_FRAME_PREFIX);
        let off = 0;
        while (off < value.length) {
          await this.credit.wait();
          if (this.aborted || this.timedOut) return;
          await this.conn.drain();
          const n = Math.min(this.credit.available, value.length - off, MAX_DATA_PAYLOAD);
          this.credit.take(n);
          if (off === 0 && n === value.length) {
            this.conn.sendBinary(dataFrameInPlace(value, this.sid, ch, this.offsets[ch]));
          } else {
            this.conn.sendBinary(
              encodeData(this.sid, ch, this.offsets[ch], value.subarray(off, off + n)),
            );
          }
          this.offsets[ch] += n;
          off += n;
        }
      }
    } catch {
      // The reader was cancelled (abort/timeout) or the pipe failed: nothing more to send.
    }
  }

  private stopReading(): void {
    for (const r of this.readers) r.cancel().catch(() => {});
  }

  onCredit(bytes: number): void {
    this.credit.add(bytes);
  }

  onStdin(payload: Uint8Array): void {
    if (!this.stdin) {
      this.stdinGrant.consumed(payload.length);
      return;
    }
    this.stdinQueue.push(payload);
    this.writeStdin();
  }

  onEof(): void {
    this.stdinEof = true;
    this.writeStdin();
  }

  onSignal(sig: string): void {
    if (this.child && isSignalName(sig)) killGroup(this.child.pid, sig);
  }

  onResize(): void {}

  /**
   * The agent is stopping: end the process group (SIGTERM, SIGKILL after the
   * grace) and still report how it ended, so the client gets an exit status.
   */
  terminate(): void {
    if (this.child && !this.aborted) endGroup(this.child.pid, this.child.status);
  }

  /** The client went away (either way): end the process group, report nothing. */
  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    this.credit.close();
    if (this.child) endGroup(this.child.pid, this.child.status);
    this.stopReading();
  }

  private async writeStdin(): Promise<void> {
    if (this.writing || !this.stdin) return;
    this.writing = true;
    const w = this.stdin;
    while (this.stdinQueue.length > 0) {
      const chunk = this.stdinQueue.shift()!;
      try {
        await w.write(chunk);
      } catch {
        // The process closed its stdin; keep crediting so the client is never stuck.
        this.stdinQueue = [];
      }
      this.stdinGrant.consumed(chunk.length);
    }
    if (this.stdinEof) {
      this.stdin = undefined;
      w.close().catch(() => {});
    }
    this.writing = false;
  }
}
