/**
 * Standard output and error for `tether ssh`, written through the event loop (node:net)
 * when they are a pipe or a socket, as ssh writes them with poll(): its callers may hand it
 * a non-blocking descriptor — rsync does ("ssh prefers non-blocking I/O", rsync(1)
 * --blocking-io) — and Deno's own write gives up on EAGAIN with no way to know how much of
 * the buffer went out. Files and terminals keep Deno's writes.
 *
 * node:net makes the descriptor non-blocking; it is put back in blocking mode when the
 * process ends (`unload` runs on Deno.exit too), for whoever shares it next.
 */
import fs from "node:fs";
import net from "node:net";

export interface Output {
  write(p: Uint8Array): Promise<number>;
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
