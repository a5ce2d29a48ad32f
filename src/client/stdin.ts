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
 * exits (`unload` runs on Deno.exit too); only a SIGKILL can leave it set. A
 * descriptor that was non-blocking before us is left so (as OpenSSH does).
 */
import fs from "node:fs";
import net from "node:net";
import { NodeReader } from "../common/node_reader.ts";
import { isNonBlocking } from "../common/libc.ts";
import { setBlocking } from "./stdout.ts";

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
    const restore = isNonBlocking(0) === true
      ? "never"
      : sameFile(st, 1) || sameFile(st, 2)
      ? "exit"
      : "end";
    return new SocketStdin(new net.Socket({ fd: 0, readable: true, writable: false }), restore);
  } catch {
    return Deno.stdin;
  }
}

/** Whether descriptor `fd` is the file `st` describes (one socket as stdin and stdout). */
function sameFile(st: fs.Stats, fd: number): boolean {
  try {
    const o = fs.fstatSync(fd);
    return o.dev === st.dev && o.ino === st.ino;
  } catch {
    return false;
  }
}

class SocketStdin implements StdinReader {
  readonly #restore = () => setBlocking(this.socket);
  readonly #reader: NodeReader;

  /**
   * `restore`: when fd 0 goes back in blocking mode. "end": as soon as input ends (and at
   * exit if it has not). "exit": only at exit, when it is also our stdout or stderr (one
   * socket for both), still written through the event loop: the flag is the socket's, and a
   * blocking write would stall everything. "never": it was non-blocking before us.
   */
  constructor(readonly socket: net.Socket, restore: "end" | "exit" | "never") {
    if (restore !== "never") globalThis.addEventListener("unload", this.#restore);
    this.#reader = new NodeReader(socket, HIGH_WATER, () => {
      if (restore !== "end") return;
      this.#restore();
      globalThis.removeEventListener("unload", this.#restore);
    });
  }

  read(buf: Uint8Array): Promise<number | null> {
    return this.#reader.read(buf);
  }
}
