/**
 * Standard input for `exec`: a stream's read from the event loop (openStreamStdin), a bulk
 * one from where it is fastest (openBulkStdin, below), and read one chunk ahead (ReadAhead).
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
import { isNonBlocking, openLibc } from "../common/libc.ts";
import { setBlocking } from "./stdout.ts";

export interface StdinReader {
  read(buf: Uint8Array): Promise<number | null>;
}

/** Data buffered ahead of the reader before the socket is paused. */
const HIGH_WATER = 1024 * 1024;

/** A reader of fd 0 for a latency-sensitive stream. */
export function openStreamStdin(): StdinReader {
  const st = stat(0);
  if (!st || (!st.isFIFO() && !st.isSocket())) return Deno.stdin;
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

/** What descriptor `fd` is; undefined when it is not open. */
function stat(fd: number): fs.Stats | undefined {
  try {
    return fs.fstatSync(fd);
  } catch {
    return undefined;
  }
}

/** Whether descriptor `fd` is the file `st` describes (one socket as stdin and stdout). */
function sameFile(st: fs.Stats, fd: number): boolean {
  const o = stat(fd);
  return o !== undefined && o.dev === st.dev && o.ino === st.ino;
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

const READ_SYMBOLS = {
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
} as const;
const FIONREAD = 0x541bn;

/**
 * A reader of fd 0 for a bulk stdin. When it is a pipe or a socket and bytes are already
 * waiting (FIONREAD says how many), they are read at once with read(2) through FFI, which
 * cannot block for them; only an empty pipe is waited for with Deno.stdin, on Deno's
 * blocking thread. Deno hands every read to that thread and back, where a producer faster
 * than the network, the usual case, keeps the pipe full: 1 GiB of stdin went ~1.12× as
 * fast this way, ~1.2× with ReadAhead (docs/BENCHMARKS.md). The descriptor's flags are
 * not touched. A terminal or a file (whose read could stall on a dead network mount, and
 * with it the event loop and Ctrl-C), or no FFI or libc, keeps Deno.stdin. (Another process
 * reading the same pipe at once could empty it between the count and the read; the read
 * then waits for data or the end of input on the event loop's thread.)
 */
export function openBulkStdin(): StdinReader {
  const st = stat(0);
  if (!st || (!st.isFIFO() && !st.isSocket())) return Deno.stdin;
  const lib = openLibc(READ_SYMBOLS);
  if (!lib) return Deno.stdin;
  const { ioctl, read } = lib.symbols;
  const waiting = new Int32Array(1);
  return {
    read(buf: Uint8Array): Promise<number | null> {
      if (ioctl(0, FIONREAD, waiting) === 0 && waiting[0] > 0) {
        const n = Number(read(0, buf, BigInt(Math.min(waiting[0], buf.length))));
        if (n > 0) return Promise.resolve(n);
      }
      return Deno.stdin.read(buf);
    },
  };
}

/**
 * Reads a bulk stdin one chunk ahead: while the caller seals and sends one chunk, a read
 * that waits for input (Deno's, on its blocking thread) already runs beside it; bytes that
 * were waiting are taken at once (openBulkStdin). Each chunk is a view of one of two
 * buffers, valid until the next call of `next()`; both keep `prefix` bytes free before the
 * data (room for a frame header). (Like ssh without -n, exec takes more of a stdin it
 * shares with later commands than the remote command reads: what the stdin window lets
 * it send, and the chunk read ahead.)
 */
export class ReadAhead {
  readonly #bufs: Uint8Array[];
  #cur = 0;
  #pending: Promise<number | null> | undefined;

  /** `ahead` false: one buffer, read only when asked (a stream's reader reads ahead itself). */
  constructor(readonly src: StdinReader, size: number, prefix = 0, readonly ahead = true) {
    this.#bufs = (ahead ? [0, 1] : [0]).map(() =>
      new Uint8Array(new ArrayBuffer(prefix + size), prefix, size)
    );
  }

  /** The next chunk, or null at the end of input; throws what the read threw. */
  async next(): Promise<Uint8Array | null> {
    const n = await (this.#pending ?? this.#read(this.#cur));
    this.#pending = undefined;
    if (n === null) return null;
    const chunk = this.#bufs[this.#cur].subarray(0, n);
    if (this.ahead) {
      this.#cur ^= 1;
      this.#pending = this.#read(this.#cur);
    }
    return chunk;
  }

  #read(i: number): Promise<number | null> {
    let p: Promise<number | null>;
    try {
      p = this.src.read(this.#bufs[i]);
    } catch (e) {
      p = Promise.reject(e); // thrown at once: still after the chunk already given out
    }
    p.catch(() => {}); // rethrown by next(); not an unhandled rejection meanwhile
    return p;
  }
}
