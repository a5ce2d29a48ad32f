/**
 * A larger pipe for a command's output once it proves to be a bulk stream.
 *
 * A Linux pipe holds 64 KiB, so a command writing fast is read 64 KiB at a time, and each
 * read becomes a frame with its own seal, WebSocket frame and a write at every hop (agent,
 * relay, client). Given 256 KiB (F_SETPIPE_SZ), the agent reads and frames a quarter as
 * often: 1 GiB of `exec` output went ~1.27× as fast over ws:// and ~1.11× over wss://
 * in alternating runs (docs/BENCHMARKS.md, "Where the time and memory go").
 *
 * `Deno.Command` does not give the descriptor, so it is found through /proc: the child's
 * `/proc/PID/fd/N` names the pipe (`pipe:[inode]`), and the agent's own descriptor of that
 * pipe (the descriptor whose `/proc/self/fd` link names the same inode) is resized. Nothing of the child's
 * is opened, and a descriptor the command pointed elsewhere (`exec >file`, a pipe of its
 * own) is left alone: only a pipe the agent itself holds an end of is resized.
 * It is done for output that fills a whole 64 KiB read, not for every command: pipe pages
 * count against a per-user quota (/proc/sys/fs/pipe-user-pages-soft, 64 MiB by default),
 * past which the kernel refuses to grow that user's pipes and makes their new ones two
 * pages, so at most MAX_ENLARGED pipes are enlarged at a time (4 MiB). Where FFI or /proc
 * is not to be had, or the kernel refuses, the pipe stays as it is and nothing else changes.
 */
import { findDescriptor, withLibc } from "../common/libc.ts";

/** The size an enlarged pipe gets: one DATA frame's payload (MAX_DATA_PAYLOAD). */
export const BULK_PIPE = 256 * 1024;
/** At most this many pipes enlarged at once, by this agent. */
export const MAX_ENLARGED = 16;

const SYMBOLS = {
  readlink: { parameters: ["buffer", "buffer", "usize"], result: "isize" },
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
} as const;

type Lib = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

const F_GETFD = 1;
const F_SETPIPE_SZ = 1031;
const F_GETPIPE_SZ = 1032;

let enlarged = 0;

const cPath = (path: string) => new TextEncoder().encode(`${path}\0`);

/** Where the symbolic link at `path` points, or undefined. */
function readLink(lib: Lib, path: string): string | undefined {
  const buf = new Uint8Array(256);
  const n = Number(lib.readlink(cPath(path), buf, BigInt(buf.length)));
  return n > 0 ? new TextDecoder().decode(buf.subarray(0, n)) : undefined;
}

/** This process's descriptor whose link is `target` (e.g. `pipe:[123]`), or undefined. */
function ownDescriptor(lib: Lib, target: string): number | undefined {
  return findDescriptor(
    (fd) => lib.fcntl(fd, F_GETFD, 0) !== -1,
    (fd) => readLink(lib, `/proc/self/fd/${fd}`) === target,
  );
}

/**
 * Gives the pipe on descriptor `fd` of process `pid` BULK_PIPE bytes, through this
 * process's own end of it. Returns a function that gives its place back (call it once the
 * pipe is done with), or undefined when the pipe was not enlarged.
 */
export function enlargePipe(pid: number, fd: number): (() => void) | undefined {
  if (enlarged >= MAX_ENLARGED) return undefined;
  const done = withLibc(SYMBOLS, ({ symbols: lib }) => {
    const target = readLink(lib, `/proc/${pid}/fd/${fd}`);
    if (!target?.startsWith("pipe:[")) return false;
    const own = ownDescriptor(lib, target);
    if (own === undefined) return false;
    const size = lib.fcntl(own, F_GETPIPE_SZ, 0);
    return size >= 0 && size < BULK_PIPE && lib.fcntl(own, F_SETPIPE_SZ, BULK_PIPE) >= 0;
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
