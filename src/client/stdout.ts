/**
 * Standard output and error written through the event loop (node:net) when they are a pipe
 * or a socket, as ssh writes them with poll() (OpenSSH makes a non-terminal stdio descriptor
 * non-blocking too).
 * - A caller may hand us a non-blocking descriptor — rsync does ("ssh prefers non-blocking
 *   I/O", rsync(1) --blocking-io), and so may any program that set O_NONBLOCK on a pipe it
 *   shares — and Deno's own write fails with EAGAIN (WouldBlock) once the pipe is full.
 * - Deno's asynchronous write to a pipe is a hand-off to its blocking thread pool and back
 *   for every chunk: through node:net, 1 GiB of `exec` output went ~20% faster, and an
 *   `exec --stream` turn cost the client ~14 µs less CPU (docs/BENCHMARKS.md).
 * Files and terminals keep Deno's writes.
 *
 * node:net makes the descriptor non-blocking, for every process that shares it; `release()`
 * puts it back in blocking mode, and so does the end of the process (`unload` runs on
 * Deno.exit too), unless it was non-blocking before us (then it is left so, as OpenSSH
 * does). Meanwhile tether's own lines on stderr go through `writeAllSync` (cli/output.ts),
 * which waits out a full pipe instead of failing.
 */
import fs from "node:fs";
import net from "node:net";
import { isNonBlocking } from "../common/libc.ts";

export interface Output {
  write(p: Uint8Array): Promise<number>;
  /** Puts the descriptor back in blocking mode, once nothing more is written through here. */
  release?(): void;
}

class SocketOutput implements Output {
  readonly #restore = () => setBlocking(this.socket);

  /** `restore`: put the descriptor back in blocking mode at the end (not if it was not). */
  constructor(readonly socket: net.Socket, private readonly restore: boolean) {
    if (restore) globalThis.addEventListener("unload", this.#restore);
    socket.on("error", () => {/* reported by the write's callback */});
  }

  release(): void {
    if (this.restore) this.#restore();
  }

  /**
   * Resolves once every byte of `p` is written to the descriptor (node's write callback
   * comes after its last write(2)), so `p` is not copied: the caller may reuse it then.
   */
  async write(p: Uint8Array): Promise<number> {
    await new Promise<void>((resolve, reject) =>
      this.socket.write(p, (err) => err ? reject(brokenPipe(err)) : resolve())
    );
    return p.length;
  }
}

/** Puts a node socket's descriptor back in blocking mode (a no-op once it is closed). */
export function setBlocking(socket: net.Socket): void {
  try {
    // deno-lint-ignore no-explicit-any
    (socket as any)._handle?.setBlocking?.(true);
  } catch { /* the handle is already closed */ }
}

/** EPIPE as Deno reports it, so callers handle one error whichever way was used. */
function brokenPipe(err: Error): Error {
  return (err as { code?: string }).code === "EPIPE"
    ? new Deno.errors.BrokenPipe(err.message)
    : err;
}

/**
 * processOutput(fd), made at the first write: the descriptor stays as it was (blocking, for
 * whoever shares it) until there is something to write to it, and if there never is.
 */
export function lazyOutput(fd: 1 | 2): Output {
  let out: Output | undefined;
  return {
    write: (p) => (out ??= processOutput(fd)).write(p),
    release: () => out?.release?.(),
  };
}

/** The process's stdout (1) or stderr (2): through the event loop when a pipe or socket. */
export function processOutput(fd: 1 | 2): Output {
  const file = fd === 1 ? Deno.stdout : Deno.stderr;
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFIFO() && !st.isSocket()) return file;
    // A descriptor that was non-blocking already is left so (as OpenSSH leaves it).
    const restore = isNonBlocking(fd) !== true;
    return new SocketOutput(new net.Socket({ fd, readable: false, writable: true }), restore);
  } catch {
    return file;
  }
}
