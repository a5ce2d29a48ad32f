/**
 * A larger pipe for a command's output once it proves to be a bulk stream.
 *
 * A Linux pipe holds 64 KiB, so a command writing fast is read 64 KiB at a time, and each
 * read becomes a frame with its own seal, WebSocket frame and a write at every hop (agent,
 * relay, client). Given 256 KiB (F_SETPIPE_SZ), the agent reads and frames a quarter as
 * often: 1 GiB of `exec` output went ~1.25× faster over ws:// and ~1.1× over wss:// in
 * alternating runs (docs/BENCHMARKS.md).
 *
 * `Deno.Command` does not give the descriptor, so the pipe is reached through the child's
 * `/proc/PID/fd/N`: only when that link names a pipe (`pipe:[…]`) is it opened (read-only,
 * non-blocking: a pipe, so the open cannot wait or have effects), resized and closed again.
 * It is done for output that fills a whole 64 KiB read, not for every command: pipe pages
 * count against a per-user quota (/proc/sys/fs/pipe-user-pages-soft, 64 MiB by default),
 * past which the kernel gives that user's new pipes a single page, so at most
 * MAX_ENLARGED pipes are enlarged at a time (4 MiB). Where FFI or /proc is not to be had,
 * or the kernel refuses, the pipe stays as it is and nothing else changes.
 */
import { withLibc } from "../common/libc.ts";

/** The size an enlarged pipe gets: one DATA frame's payload (MAX_DATA_PAYLOAD). */
export const BULK_PIPE = 256 * 1024;
/** At most this many pipes enlarged at once, by this agent. */
export const MAX_ENLARGED = 16;

const SYMBOLS = {
  readlink: { parameters: ["buffer", "buffer", "usize"], result: "isize" },
  open: { parameters: ["buffer", "i32"], result: "i32" },
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
} as const;

const O_RDONLY = 0;
const O_NOCTTY = 0o400;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const F_SETPIPE_SZ = 1031;
const F_GETPIPE_SZ = 1032;

let enlarged = 0;

/**
 * Gives the pipe on descriptor `fd` of process `pid` BULK_PIPE bytes. Returns a function
 * that gives its place back (call it once the pipe is done with), or undefined when the
 * pipe was not enlarged.
 */
export function enlargePipe(pid: number, fd: number): (() => void) | undefined {
  if (enlarged >= MAX_ENLARGED) return undefined;
  const done = withLibc(SYMBOLS, (lib) => {
    const path = new TextEncoder().encode(`/proc/${pid}/fd/${fd}\0`);
    const link = new Uint8Array(64);
    const n = Number(lib.symbols.readlink(path, link, BigInt(link.length)));
    if (n <= 0 || !new TextDecoder().decode(link.subarray(0, n)).startsWith("pipe:[")) {
      return false;
    }
    const f = lib.symbols.open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (f < 0) return false;
    try {
      const size = lib.symbols.fcntl(f, F_GETPIPE_SZ, 0);
      return size >= 0 && size < BULK_PIPE && lib.symbols.fcntl(f, F_SETPIPE_SZ, BULK_PIPE) >= 0;
    } finally {
      lib.symbols.close(f);
    }
  });
  if (!done) return undefined;
  enlarged++;
  let given = false;
  return () => {
    if (given) return;
    given = true;
    enlarged--;
  };
}
