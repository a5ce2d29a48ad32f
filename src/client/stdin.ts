/**
 * Standard input for `exec --stream`, read from the event loop.
 *
 * Deno reads fd 0 on a blocking worker thread: each read is a hand-off to
 * that thread and back (futexes, plus a dup and a close of the fd), on the
 * critical path of every turn a driver pushes. When stdin is a pipe or a
 * socket, node:net can read it like any socket instead (non-blocking, on
 * the event loop); that took ~10% off the median turn in
 * `scripts/bench` (see docs/BENCHMARKS.md). Terminals and files keep
 * Deno.stdin.
 *
 * Reading that way sets O_NONBLOCK on the pipe, a flag shared with every
 * process holding the same pipe: a shell script's next command would read
 * EAGAIN. So the flag is cleared again at end of input and when the process
 * exits (`unload` runs on Deno.exit too); only a SIGKILL can leave it set.
 */
import fs from "node:fs";
import net from "node:net";

export interface StdinReader {
  read(buf: Uint8Array): Promise<number | null>;
}

/** Data buffered ahead of the reader before the socket is paused. */
const HIGH_WATER = 1024 * 1024;

/** A reader of fd 0 for a latency-sensitive stream. */
export function openStreamStdin(): StdinReader {
  let st: fs.Stats;
  try {
    st = fs.fstatSync(0);
  } catch {
    return Deno.stdin;
  }
  if (!st.isFIFO() && !st.isSocket()) return Deno.stdin;
  try {
    return new SocketStdin(new net.Socket({ fd: 0, readable: true, writable: false }));
  } catch {
    return Deno.stdin;
  }
}

class SocketStdin implements StdinReader {
  #chunks: Uint8Array[] = [];
  #buffered = 0;
  #ended = false;
  #error?: Error;
  #wake?: () => void;
  readonly #restore = () => this.#setBlocking();

  constructor(readonly socket: net.Socket) {
    globalThis.addEventListener("unload", this.#restore);
    socket.on("data", (d: Uint8Array) => {
      this.#chunks.push(d);
      this.#buffered += d.length;
      if (this.#buffered >= HIGH_WATER) socket.pause();
      this.#notify();
    });
    socket.on("end", () => this.#finish());
    socket.on("close", () => this.#finish());
    socket.on("error", (e: Error) => {
      this.#error ??= e;
      this.#finish();
    });
  }

  /** Puts fd 0 back in blocking mode (a no-op once the handle is gone). */
  #setBlocking(): void {
    try {
      // deno-lint-ignore no-explicit-any
      (this.socket as any)._handle?.setBlocking?.(true);
    } catch { /* the handle is already closed */ }
  }

  #finish(): void {
    if (!this.#ended) {
      this.#ended = true;
      this.#setBlocking();
      globalThis.removeEventListener("unload", this.#restore);
    }
    this.#notify();
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }

  async read(buf: Uint8Array): Promise<number | null> {
    while (this.#chunks.length === 0) {
      if (this.#error) throw this.#error;
      if (this.#ended) return null;
      await new Promise<void>((r) => (this.#wake = r));
    }
    let n = 0;
    while (n < buf.length && this.#chunks.length > 0) {
      const c = this.#chunks[0];
      const take = Math.min(c.length, buf.length - n);
      buf.set(c.subarray(0, take), n);
      n += take;
      if (take === c.length) this.#chunks.shift();
      else this.#chunks[0] = c.subarray(take);
    }
    this.#buffered -= n;
    if (this.#buffered < HIGH_WATER / 2 && this.socket.isPaused()) this.socket.resume();
    return n;
  }
}
