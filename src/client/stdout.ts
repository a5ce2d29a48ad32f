/**
 * Standard output and error written through the event loop (node:net) when they are a pipe
 * or a socket, as ssh writes them with poll(). For `tether ssh`: its callers may hand it a
 * non-blocking descriptor — rsync does ("ssh prefers non-blocking I/O", rsync(1)
 * --blocking-io) — and Deno's own write gives up on EAGAIN with no way to know how much of
 * the buffer went out. For `exec --stream`'s stdout: Deno's asynchronous write to a pipe is a
 * hand-off to its blocking thread pool and back, on the path of every turn (~35 µs of the
 * client's CPU per turn, docs/BENCHMARKS.md). Files and terminals keep Deno's writes.
 *
 * node:net makes the descriptor non-blocking; `release()` puts it back in blocking mode, and
 * so does the end of the process (`unload` runs on Deno.exit too), for whoever shares it next
 * and for this process's own last words (a JSON error on stdout).
 */
import fs from "node:fs";
import net from "node:net";

export interface Output {
  write(p: Uint8Array): Promise<number>;
  /** Puts the descriptor back in blocking mode, once nothing more is written through here. */
  release?(): void;
}

class SocketOutput implements Output {
  readonly #restore = () => {
    try {
      // deno-lint-ignore no-explicit-any
      (this.socket as any)._handle?.setBlocking?.(true);
    } catch { /* the handle is already closed */ }
  };

  constructor(readonly socket: net.Socket) {
    globalThis.addEventListener("unload", this.#restore);
    socket.on("error", () => {/* reported by the write's callback */});
  }

  release(): void {
    this.#restore();
  }

  async write(p: Uint8Array): Promise<number> {
    // A copy: the caller reuses `p` once this resolves, and node:net may still hold it.
    const copy = p.slice();
    await new Promise<void>((resolve, reject) =>
      this.socket.write(copy, (err) => err ? reject(brokenPipe(err)) : resolve())
    );
    return p.length;
  }
}

/** EPIPE as Deno reports it, so callers handle one error whichever way was used. */
function brokenPipe(err: Error): Error {
  return (err as { code?: string }).code === "EPIPE"
    ? new Deno.errors.BrokenPipe(err.message)
    : err;
}

/** The process's stdout (1) or stderr (2): through the event loop when a pipe or socket. */
export function processOutput(fd: 1 | 2): Output {
  const file = fd === 1 ? Deno.stdout : Deno.stderr;
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFIFO() && !st.isSocket()) return file;
    return new SocketOutput(new net.Socket({ fd, readable: false, writable: true }));
  } catch {
    return file;
  }
}
