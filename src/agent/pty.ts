/**
 * Pseudo-terminals for `connect` sessions. Deno has no PTY API, so this module
 * drives glibc through `Deno.dlopen("libc.so.6")`:
 *
 * - `posix_openpt` / `grantpt` / `unlockpt` / `ptsname_r` make the pair; the
 *   master is opened `O_NONBLOCK | O_CLOEXEC | O_NOCTTY` and never leaks into
 *   a child.
 * - The child is started by `posix_spawn` with `POSIX_SPAWN_SETSID` (glibc ≥
 *   2.26): it becomes a session leader first, then its file actions open the
 *   slave by path on fd 0 (without `O_NOCTTY`) and dup it to 1 and 2. A
 *   session leader without a controlling terminal that opens a terminal
 *   acquires it, and the kernel makes the leader's group the foreground group,
 *   so `bash -i` gets full job control. Ignored signals (Deno ignores SIGPIPE)
 *   are reset to default and the signal mask is cleared, like a login.
 * - Reads and writes are plain non-blocking `read`/`write` calls on the
 *   master. When one would block, the wait is a `poll` declared
 *   `nonblocking: true`, which Deno runs on its blocking thread pool and
 *   returns as a Promise, so the event loop keeps running. The poll also
 *   watches a private eventfd that `close()` signals, so a pending read ends
 *   (with `null`) as soon as the Pty is closed.
 * - Exit is noticed with a shared `SIGCHLD` listener that calls
 *   `waitpid(pid, WNOHANG)` for each of our own children only, never
 *   `waitpid(-1)`, so Deno's own `Deno.Command` children are left alone.
 *   While any child is unreaped, a 1 s interval timer keeps the event loop
 *   alive (signal listeners do not) and doubles as a backstop reaper.
 * - `/proc` is read through libc too (`sessionProcesses`, used by
 *   `terminate()`), because Deno wants `--allow-all` before it reads /proc.
 *
 * Linux (x86_64, aarch64) with glibc only; elsewhere `Pty.spawn` throws an
 * Error that says so.
 *
 * @example
 * ```ts
 * const pty = Pty.spawn({ argv: ["bash", "-i"], cols: 80, rows: 24 });
 * await pty.write(new TextEncoder().encode("echo hi; exit\n"));
 * const buf = new Uint8Array(4096);
 * for (let n; (n = await pty.read(buf)) !== null;) Deno.stdout.writeSync(buf.subarray(0, n));
 * const { code } = await pty.exited;
 * pty.close();
 * ```
 */

import { DEFAULT_PATH, resolveCommand } from "./command_path.ts";
import { signalName } from "../common/signals.ts";
import { killGroup } from "./process_group.ts";

/** How a Pty child is started. */
export interface PtyOptions {
  /** Program and arguments. `argv[0]` is looked up in the child's `PATH` if it has no `/`. */
  argv: string[];
  /**
   * Variables for the child, laid over this process's environment (as
   * `Deno.Command` does) unless `clearEnv` is set. `TERM` defaults to
   * {@link DEFAULT_TERM} when it ends up unset or empty.
   */
  env?: Record<string, string>;
  /** Start from an empty environment plus `env` (like `Deno.Command`'s `clearEnv`). */
  clearEnv?: boolean;
  /** Working directory of the child; must be an existing directory. */
  cwd?: string;
  /** Initial window size, 1..65535 each. */
  cols: number;
  rows: number;
}

/**
 * How the child ended. Like `Deno.CommandStatus`: `code` is the exit code, or
 * 128+n when signal n ended it (then `signal` is its name, e.g. "SIGTERM").
 * `code` is -1 (and `signal` null) only if the status was lost because
 * something else in this process reaped the child; treat that as a failure.
 */
export interface PtyExit {
  code: number;
  signal: string | null;
}

/** TERM given to the child when the caller's environment has none. */
export const DEFAULT_TERM = "xterm-256color";

/** Time `terminate()` waits after SIGHUP/SIGTERM before SIGKILL. */
export const PTY_KILL_GRACE_MS = 2_000;

// Linux values, the same on x86_64 and aarch64 (asm-generic).
const O_RDONLY = 0x0;
const O_RDWR = 0x2;
const O_NOCTTY = 0x100;
const O_NONBLOCK = 0x800;
const O_CLOEXEC = 0x80000;
const EFD_NONBLOCK = 0x800;
const EFD_CLOEXEC = 0x80000;
const EINTR = 4;
const EIO = 5;
const EAGAIN = 11;
const ECHILD = 10;
const TIOCSWINSZ = 0x5414;
const TCSANOW = 0;
const IUTF8 = 0x4000;
const POLLIN = 0x1;
const POLLOUT = 0x4;
const POLLERR = 0x8;
const POLLHUP = 0x10;
const POLLNVAL = 0x20;
const WNOHANG = 1;
const X_OK = 1;
const POSIX_SPAWN_SETSIGDEF = 0x04;
const POSIX_SPAWN_SETSIGMASK = 0x08;
const POSIX_SPAWN_SETSID = 0x80;

const SYMBOLS = {
  posix_openpt: { parameters: ["i32"], result: "i32" },
  grantpt: { parameters: ["i32"], result: "i32" },
  unlockpt: { parameters: ["i32"], result: "i32" },
  ptsname_r: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  // Variadic in C; integer and pointer arguments pass the same way on x86_64 and aarch64 Linux.
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  tcgetattr: { parameters: ["i32", "buffer"], result: "i32" },
  tcsetattr: { parameters: ["i32", "i32", "buffer"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  waitpid: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  access: { parameters: ["buffer", "i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
  sigemptyset: { parameters: ["buffer"], result: "i32" },
  sigfillset: { parameters: ["buffer"], result: "i32" },
  posix_spawn: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  posix_spawnattr_init: { parameters: ["buffer"], result: "i32" },
  posix_spawnattr_destroy: { parameters: ["buffer"], result: "i32" },
  posix_spawnattr_setflags: { parameters: ["buffer", "i16"], result: "i32" },
  posix_spawnattr_setsigmask: { parameters: ["buffer", "buffer"], result: "i32" },
  posix_spawnattr_setsigdefault: { parameters: ["buffer", "buffer"], result: "i32" },
  posix_spawn_file_actions_init: { parameters: ["buffer"], result: "i32" },
  posix_spawn_file_actions_destroy: { parameters: ["buffer"], result: "i32" },
  posix_spawn_file_actions_addopen: {
    parameters: ["buffer", "i32", "buffer", "i32", "u32"],
    result: "i32",
  },
  posix_spawn_file_actions_adddup2: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  // glibc ≥ 2.29; without it a cwd is reached through /bin/sh.
  posix_spawn_file_actions_addchdir_np: {
    parameters: ["buffer", "buffer"],
    result: "i32",
    optional: true,
  },
  // glibc ≥ 2.34; without it fds this process inherited without FD_CLOEXEC leak into children.
  posix_spawn_file_actions_addclosefrom_np: {
    parameters: ["buffer", "i32"],
    result: "i32",
    optional: true,
  },
  open: { parameters: ["buffer", "i32"], result: "i32" }, // variadic; no mode without O_CREAT
  opendir: { parameters: ["buffer"], result: "pointer" },
  readdir: { parameters: ["pointer"], result: "pointer" },
  closedir: { parameters: ["pointer"], result: "i32" },
  gnu_get_libc_version: { parameters: [], result: "pointer", optional: true },
} as const satisfies Deno.ForeignLibraryInterface;

type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

let libc: Libc | undefined;

/**
 * Opens the shared libc handle now (it is otherwise opened by the first
 * `Pty.spawn`), or throws an Error that says why pseudo-terminals are not
 * available here. Cheap after the first call.
 */
export function ensurePtySupport(): void {
  loadLibc();
}

function loadLibc(): Libc {
  if (libc) return libc;
  if (Deno.build.os !== "linux") {
    throw new Error(
      `pseudo-terminals are supported on Linux (glibc) only, not on ${Deno.build.os}; ` +
        "use `tether exec` (no PTY) on this machine",
    );
  }
  if (Deno.build.arch !== "x86_64" && Deno.build.arch !== "aarch64") {
    throw new Error(`pseudo-terminals are not supported on ${Deno.build.arch}`);
  }
  try {
    libc = Deno.dlopen("libc.so.6", SYMBOLS).symbols;
  } catch (e) {
    throw new Error(
      `cannot load glibc (libc.so.6) for pseudo-terminals: ${(e as Error).message}; ` +
        "a Linux system with glibc 2.26 or later is required",
      { cause: e },
    );
  }
  return libc;
}

/**
 * errno of the last failed synchronous libc call. Synchronous FFI calls run on
 * the isolate's own thread, and nothing runs there between the call and this.
 */
function errno(): number {
  const p = libc?.__errno_location();
  return p ? new Deno.UnsafePointerView(p).getInt32() : 0;
}

function strerror(code: number): string {
  const p = libc?.strerror(code);
  return p ? Deno.UnsafePointerView.getCString(p) : `errno ${code}`;
}

function libcVersion(): string {
  const p = libc?.gnu_get_libc_version?.();
  return p ? Deno.UnsafePointerView.getCString(p) : "unknown";
}

function osError(what: string, code: number): Error {
  const message = `${what}: ${strerror(code)} (errno ${code})`;
  switch (code) {
    case 2:
      return new Deno.errors.NotFound(message);
    case 1:
    case 13:
      return new Deno.errors.PermissionDenied(message);
    case 20:
      return new Deno.errors.NotADirectory(message);
    default:
      return new Error(message);
  }
}

/** Throws for a libc call that returns -1 and sets errno. */
function check(what: string, rc: number | bigint): number {
  const n = Number(rc);
  if (n === -1) throw osError(what, errno());
  return n;
}

/** Throws for a posix_spawn* call, which returns the error number itself. */
function checkRc(what: string, rc: number): void {
  if (rc !== 0) throw osError(what, rc);
}

/** Memory that libc may keep a pointer into: always off the V8 heap. */
function mem(size: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array(new ArrayBuffer(size));
}

function cBytes(s: string, what: string): Uint8Array {
  if (s.includes("\0")) throw new TypeError(`${what} contains a NUL character`);
  return new TextEncoder().encode(s + "\0");
}

function cString(s: string, what: string): Uint8Array<ArrayBuffer> {
  const b = cBytes(s, what);
  const out = mem(b.length);
  out.set(b);
  return out;
}

/**
 * A NULL-terminated `char *[]` for argv/envp. The strings live in `arena`,
 * which the caller must keep referenced until libc no longer needs them.
 */
function cStringArray(items: string[], what: string) {
  const encoded = items.map((s) => cBytes(s, what));
  const arena = mem(Math.max(8, encoded.reduce((n, b) => n + b.length, 0)));
  const base = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(arena)));
  const table = new BigUint64Array(new ArrayBuffer((items.length + 1) * 8));
  let off = 0;
  encoded.forEach((b, i) => {
    arena.set(b, off);
    table[i] = base + BigInt(off);
    off += b.length;
  });
  table[items.length] = 0n;
  return { table, arena };
}

/** Whether `path` is an executable regular file for us, as execve would see it. */
function executable(lib: Libc, path: string): "ok" | "missing" | "denied" {
  let info: Deno.FileInfo;
  try {
    info = Deno.statSync(path);
  } catch {
    return "missing";
  }
  if (!info.isFile) return "denied";
  return lib.access(cString(path, "path"), X_OK) === 0 ? "ok" : "denied";
}

function childEnv(opts: PtyOptions): Record<string, string> {
  const env: Record<string, string> = opts.clearEnv ? {} : Deno.env.toObject();
  for (const [k, v] of Object.entries(opts.env ?? {})) {
    if (k === "" || k.includes("=")) throw new TypeError(`bad environment variable name: ${k}`);
    env[k] = v;
  }
  if (!env.TERM) env.TERM = DEFAULT_TERM;
  return env;
}

function checkSize(cols: number, rows: number): void {
  for (const [name, v] of [["cols", cols], ["rows", rows]] as const) {
    if (!Number.isInteger(v) || v < 1 || v > 0xffff) {
      throw new RangeError(`${name} must be an integer from 1 to 65535, got ${v}`);
    }
  }
}

function setWindowSize(lib: Libc, fd: number, cols: number, rows: number): void {
  const ws = new Uint16Array(new ArrayBuffer(8)); // struct winsize: rows, cols, xpixel, ypixel
  ws[0] = rows;
  ws[1] = cols;
  check("ioctl(TIOCSWINSZ)", lib.ioctl(fd, BigInt(TIOCSWINSZ), ws));
}

// ---- exit watching: one SIGCHLD listener for all our children ----

const watched = new Map<number, (exit: PtyExit) => void>();
let listening = false;

function decodeStatus(status: number): PtyExit {
  const sig = status & 0x7f;
  if (sig === 0) return { code: (status >> 8) & 0xff, signal: null };
  return { code: 128 + sig, signal: signalName(sig) };
}

function reapWatched(): void {
  const lib = libc!;
  const status = new Int32Array(new ArrayBuffer(4));
  for (const [pid, done] of [...watched]) {
    const r = lib.waitpid(pid, status, WNOHANG);
    if (r === pid) {
      watched.delete(pid);
      done(decodeStatus(status[0]));
    } else if (r === -1 && errno() === ECHILD) {
      watched.delete(pid);
      done({ code: -1, signal: null });
    }
  }
  if (watched.size === 0) stopListening();
}

/**
 * Deno's signal listeners do not keep the event loop alive, so while a child
 * is unreaped a slow timer does (as a running `Deno.Command` child would); it
 * also reaps a child whose SIGCHLD was somehow missed.
 */
let keepAlive: ReturnType<typeof setInterval> | undefined;
const REAP_BACKSTOP_MS = 1_000;

function startListening(): void {
  if (listening) return;
  Deno.addSignalListener("SIGCHLD", reapWatched);
  keepAlive = setInterval(reapWatched, REAP_BACKSTOP_MS);
  listening = true;
}

function stopListening(): void {
  if (!listening) return;
  Deno.removeSignalListener("SIGCHLD", reapWatched);
  clearInterval(keepAlive);
  keepAlive = undefined;
  listening = false;
}

// ---- /proc, read through libc: Deno asks for --allow-all before it reads /proc itself ----

/** One line of /proc/PID/stat, the fields a session owner cares about. */
export interface ProcessInfo {
  pid: number;
  /** Executable name as the kernel keeps it (at most 15 bytes). */
  comm: string;
  /** R, S, D, T, Z, … as in ps(1). */
  state: string;
  ppid: number;
  pgrp: number;
  session: number;
  /** Foreground process group of the process's controlling terminal, -1 without one. */
  tpgid: number;
}

const statBuf = mem(4096);

function readProcStat(lib: Libc, pid: number): ProcessInfo | null {
  const fd = lib.open(cString(`/proc/${pid}/stat`, "path"), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return null;
  let n: number;
  try {
    n = Number(lib.read(fd, statBuf, BigInt(statBuf.length)));
  } finally {
    lib.close(fd);
  }
  if (n <= 0) return null;
  const s = new TextDecoder().decode(statBuf.subarray(0, n));
  // "pid (comm) state ppid pgrp session tty_nr tpgid ..."; comm may hold spaces and ")".
  const close = s.lastIndexOf(")");
  const f = s.slice(close + 2).split(" ");
  return {
    pid,
    comm: s.slice(s.indexOf("(") + 1, close),
    state: f[0],
    ppid: Number(f[1]),
    pgrp: Number(f[2]),
    session: Number(f[3]),
    tpgid: Number(f[5]),
  };
}

/** What /proc says about `pid`, or null if there is no such process. Linux only. */
export function processInfo(pid: number): ProcessInfo | null {
  return readProcStat(loadLibc(), pid);
}

/**
 * The processes, zombies left out, whose session or process group is `sid`
 * — for a Pty's pid: everything still running on behalf of that session,
 * including jobs a shell moved to groups of their own. Linux only.
 */
export function sessionProcesses(sid: number): ProcessInfo[] {
  const lib = loadLibc();
  const out: ProcessInfo[] = [];
  const dir = lib.opendir(cString("/proc", "path"));
  if (dir === null) return out;
  try {
    for (let ent = lib.readdir(dir); ent !== null; ent = lib.readdir(dir)) {
      // struct dirent on 64-bit glibc: d_ino, d_off (8 bytes each), d_reclen (2), d_type (1), d_name.
      const name = new Deno.UnsafePointerView(ent).getCString(19);
      if (!/^\d+$/.test(name)) continue;
      const info = readProcStat(lib, Number(name));
      if (info && info.state !== "Z" && (info.session === sid || info.pgrp === sid)) {
        out.push(info);
      }
    }
  } finally {
    lib.closedir(dir);
  }
  return out;
}

// ---- spawning ----

function spawnChild(
  lib: Libc,
  file: string,
  argv: string[],
  envp: string[],
  slave: string,
  cwd: string | undefined,
): number {
  let path = file;
  let args = argv;
  const chdirInSpawn = cwd !== undefined && lib.posix_spawn_file_actions_addchdir_np !== null;
  if (cwd !== undefined && !chdirInSpawn) {
    // Old glibc: let a shell change directory, then exec the resolved program.
    path = "/bin/sh";
    args = ["/bin/sh", "-c", 'cd -- "$1" || exit 1; shift; exec "$@"', "sh", cwd, file];
    args.push(...argv.slice(1));
  }
  const argvC = cStringArray(args, "argv");
  const envC = cStringArray(envp, "env");
  const pathC = cString(path, "command");
  const slaveC = cString(slave, "pty name");
  const cwdC = cString(cwd ?? "", "cwd");

  const actions = mem(512); // posix_spawn_file_actions_t is 80 bytes on glibc
  const attr = mem(1024); // posix_spawnattr_t is 336 bytes on glibc
  const noSignals = mem(128);
  const allSignals = mem(128);
  const pid = new Int32Array(new ArrayBuffer(4));

  checkRc("posix_spawn_file_actions_init", lib.posix_spawn_file_actions_init(actions));
  try {
    checkRc("posix_spawnattr_init", lib.posix_spawnattr_init(attr));
    try {
      lib.sigemptyset(noSignals);
      lib.sigfillset(allSignals);
      checkRc("posix_spawnattr_setsigmask", lib.posix_spawnattr_setsigmask(attr, noSignals));
      checkRc(
        "posix_spawnattr_setsigdefault",
        lib.posix_spawnattr_setsigdefault(attr, allSignals),
      );
      const flags = POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
      const rc = lib.posix_spawnattr_setflags(attr, flags);
      if (rc !== 0) {
        throw new Error(
          `posix_spawnattr_setflags(POSIX_SPAWN_SETSID): ${strerror(rc)}; ` +
            `pseudo-terminals need glibc 2.26 or later (this is ${libcVersion()})`,
        );
      }
      // setsid() runs before the file actions, so this open makes the slave
      // the controlling terminal of the new session.
      checkRc(
        "posix_spawn_file_actions_addopen",
        lib.posix_spawn_file_actions_addopen(actions, 0, slaveC, O_RDWR, 0),
      );
      checkRc(
        "posix_spawn_file_actions_adddup2",
        lib.posix_spawn_file_actions_adddup2(actions, 0, 1),
      );
      checkRc(
        "posix_spawn_file_actions_adddup2",
        lib.posix_spawn_file_actions_adddup2(actions, 0, 2),
      );
      if (lib.posix_spawn_file_actions_addclosefrom_np) {
        checkRc(
          "posix_spawn_file_actions_addclosefrom_np",
          lib.posix_spawn_file_actions_addclosefrom_np(actions, 3),
        );
      }
      if (chdirInSpawn) {
        checkRc(
          "posix_spawn_file_actions_addchdir_np",
          lib.posix_spawn_file_actions_addchdir_np!(actions, cwdC),
        );
      }
      const rc2 = lib.posix_spawn(pid, pathC, actions, attr, argvC.table, envC.table);
      if (rc2 !== 0) throw osError(`cannot start ${argv[0]}`, rc2);
    } finally {
      lib.posix_spawnattr_destroy(attr);
    }
  } finally {
    lib.posix_spawn_file_actions_destroy(actions);
  }
  // The strings must stay reachable until posix_spawn has returned.
  void [argvC.arena.byteLength, envC.arena.byteLength];
  return pid[0];
}

/**
 * A child process on its own pseudo-terminal, in its own session.
 *
 * Reads are not shared: call `read` from one reader at a time. Writes may be
 * called concurrently; they are queued and each is written whole, in order.
 * Each pending `read`, and each `write` that has to wait for room, holds one
 * thread of Deno's blocking pool while it waits (so a session normally uses
 * one). `close()` releases them at once.
 */
export class Pty {
  /** The child's pid; also its process group id and session id. */
  readonly pid: number;
  /** Resolves once, after the child has been reaped with `waitpid(pid)`. */
  readonly exited: Promise<PtyExit>;

  #lib: Libc;
  #fd: number;
  #wake: number;
  #closed = false;
  #eof = false;
  #reading = false;
  #polling = 0;
  #exit: PtyExit | undefined;
  #writeTail: Promise<void> = Promise.resolve();
  // struct pollfd[2] buffers: [master, wake]; one each for the reader and the writer.
  #readPoll = mem(16);
  #writePoll = mem(16);

  private constructor(lib: Libc, fd: number, wake: number, pid: number) {
    this.#lib = lib;
    this.#fd = fd;
    this.#wake = wake;
    this.pid = pid;
    this.exited = new Promise((resolve) => {
      watched.set(pid, (exit) => {
        this.#exit = exit;
        resolve(exit);
      });
    });
  }

  /**
   * Starts `opts.argv` on a new pseudo-terminal of `opts.cols` x `opts.rows`.
   *
   * A command that cannot be started is reported by throwing, never as an
   * exit status: `Deno.errors.NotFound` when `argv[0]` is not found in the
   * child's PATH (or a given path does not exist) or `cwd` does not exist,
   * `Deno.errors.PermissionDenied` when it is not executable,
   * `Deno.errors.NotADirectory` for a `cwd` that is not a directory. (A
   * caller that wants shell-like codes maps these to 127 and 126.) Off Linux
   * or without glibc it throws a plain Error saying so.
   */
  static spawn(opts: PtyOptions): Pty {
    const lib = loadLibc();
    if (!Array.isArray(opts.argv) || opts.argv.length === 0) {
      throw new TypeError("Pty.spawn: argv must name a program");
    }
    checkSize(opts.cols, opts.rows);
    const env = childEnv(opts);
    const cwd = opts.cwd;
    if (cwd !== undefined) {
      const info = Deno.statSync(cwd); // NotFound with the path in the message
      if (!info.isDirectory) throw new Deno.errors.NotADirectory(`cwd ${cwd}: not a directory`);
    }
    const file = resolveCommand(
      opts.argv[0],
      env.PATH ?? DEFAULT_PATH,
      cwd,
      (f) => executable(lib, f),
    );

    const fd = check("posix_openpt", lib.posix_openpt(O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC));
    let wake = -1;
    startListening();
    try {
      check("grantpt", lib.grantpt(fd));
      check("unlockpt", lib.unlockpt(fd));
      const name = mem(128);
      checkRc("ptsname_r", lib.ptsname_r(fd, name, BigInt(name.length)));
      const slave = new TextDecoder().decode(name.subarray(0, name.indexOf(0)));
      // Line editing in canonical mode should know characters are UTF-8 (like `stty iutf8`).
      const termios = mem(128);
      if (lib.tcgetattr(fd, termios) === 0) {
        const view = new DataView(termios.buffer);
        view.setUint32(0, view.getUint32(0, true) | IUTF8, true);
        lib.tcsetattr(fd, TCSANOW, termios);
      }
      setWindowSize(lib, fd, opts.cols, opts.rows);
      wake = check("eventfd", lib.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      const envp = Object.entries(env).map(([k, v]) => `${k}=${v}`);
      const pid = spawnChild(lib, file, opts.argv, envp, slave, cwd);
      return new Pty(lib, fd, wake, pid);
    } catch (e) {
      lib.close(fd);
      if (wake !== -1) lib.close(wake);
      if (watched.size === 0) stopListening();
      throw e;
    }
  }

  /** True once `close()` has been called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Reads what the terminal printed into `buf`: the number of bytes read, or
   * `null` at end of file (Linux reports EIO once every slave fd is closed,
   * normally because the session has ended) or after `close()`.
   * Throws `Deno.errors.Busy` if another read is pending.
   */
  async read(buf: Uint8Array): Promise<number | null> {
    if (this.#reading) throw new Deno.errors.Busy("Pty.read: another read is pending");
    this.#reading = true;
    try {
      let hungUp = false;
      for (;;) {
        if (this.#closed || this.#eof) return null;
        if (buf.length === 0) return 0;
        const n = Number(this.#lib.read(this.#fd, buf, BigInt(buf.length)));
        if (n > 0) return n;
        const err = n === 0 ? EIO : errno();
        if (err === EINTR) continue;
        if (err === EAGAIN && !hungUp) {
          const revents = await this.#wait(this.#readPoll, POLLIN);
          hungUp = (revents & (POLLHUP | POLLERR | POLLNVAL)) !== 0 &&
            (revents & POLLIN) === 0;
          continue;
        }
        if (err === EIO || err === EAGAIN) {
          this.#eof = true;
          // The terminal hung up, usually because the child is gone: reap it now.
          if (listening) reapWatched();
          return null;
        }
        throw osError("read from pty", err);
      }
    } finally {
      this.#reading = false;
    }
  }

  /**
   * Writes all of `data` to the terminal (the child's input). Resolves once
   * the kernel has taken every byte. Throws `Deno.errors.BadResource` after
   * `close()` and `Deno.errors.BrokenPipe` once the terminal has hung up.
   */
  write(data: Uint8Array): Promise<void> {
    const p = this.#writeTail.then(() => this.#writeAll(data));
    this.#writeTail = p.catch(() => {});
    return p;
  }

  async #writeAll(data: Uint8Array): Promise<void> {
    let off = 0;
    while (off < data.length) {
      if (this.#closed) throw new Deno.errors.BadResource("Pty.write: the pty is closed");
      const chunk = data.subarray(off);
      const n = Number(this.#lib.write(this.#fd, chunk, BigInt(chunk.length)));
      if (n > 0) {
        off += n;
        continue;
      }
      const err = n === 0 ? EAGAIN : errno();
      if (err === EINTR) continue;
      if (err === EAGAIN) {
        await this.#wait(this.#writePoll, POLLOUT);
        continue;
      }
      if (err === EIO) throw new Deno.errors.BrokenPipe("Pty.write: the terminal has hung up");
      throw osError("write to pty", err);
    }
  }

  /** Waits on a worker thread until the master is ready for `events` or close() is called. */
  async #wait(pfd: Uint8Array<ArrayBuffer>, events: number): Promise<number> {
    const v = new DataView(pfd.buffer);
    v.setInt32(0, this.#fd, true);
    v.setInt16(4, events, true);
    v.setInt16(6, 0, true);
    v.setInt32(8, this.#wake, true);
    v.setInt16(12, POLLIN, true);
    v.setInt16(14, 0, true);
    this.#polling++;
    try {
      await this.#lib.poll(pfd, 2n, -1); // -1 with EINTR just means "look again"
    } finally {
      this.#polling--;
      if (this.#closed && this.#polling === 0) this.#closeWake();
    }
    return v.getInt16(6, true);
  }

  /**
   * Sets the window size (TIOCSWINSZ on the master); the kernel sends
   * SIGWINCH to the terminal's foreground process group.
   */
  resize(cols: number, rows: number): void {
    checkSize(cols, rows);
    if (this.#closed) throw new Deno.errors.BadResource("Pty.resize: the pty is closed");
    setWindowSize(this.#lib, this.#fd, cols, rows);
  }

  /**
   * Sends `signal` to the child's whole process group (its pid is the
   * group id). Jobs that a shell with job control put in groups of their
   * own are not in it; `terminate()` reaches those too. Quiet if the group
   * is gone.
   */
  kill(signal: Deno.Signal = "SIGTERM"): void {
    killGroup(this.pid, signal, !this.#exit);
  }

  /**
   * Ends the session: closes the master (the kernel hangs up the terminal),
   * sends SIGHUP, SIGTERM and SIGCONT to every process of the child's
   * session and process group (background jobs included), SIGKILL after
   * `graceMs` if the child is still alive, and SIGKILL to whatever is left
   * of the session once the child has exited. Resolves with the exit.
   */
  async terminate(graceMs = PTY_KILL_GRACE_MS): Promise<PtyExit> {
    this.close();
    if (!this.#exit) {
      for (const sig of ["SIGHUP", "SIGTERM", "SIGCONT"] as const) this.#signalSession(sig);
      const timer = setTimeout(() => this.#signalSession("SIGKILL"), graceMs);
      try {
        await this.exited;
      } finally {
        clearTimeout(timer);
      }
    }
    this.#signalSession("SIGKILL");
    return await this.exited;
  }

  #signalSession(signal: Deno.Signal): void {
    if (!this.#exit) this.kill(signal);
    for (const { pid } of sessionProcesses(this.pid)) {
      try {
        Deno.kill(pid, signal);
      } catch { /* gone meanwhile */ }
    }
  }

  /**
   * Closes the master fd; idempotent. A pending `read` resolves to `null`
   * and later writes throw. Closing hangs the terminal up, which sends
   * SIGHUP to the session leader (a shell then ends and hangs up its jobs);
   * it does not wait for the child — see `terminate()` and `exited`.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#lib.close(this.#fd);
    if (this.#polling === 0) {
      this.#closeWake();
    } else {
      // Wake the pending polls; the eventfd is closed when the last one returns.
      const one = new BigUint64Array(new ArrayBuffer(8));
      one[0] = 1n;
      this.#lib.write(this.#wake, one, 8n);
    }
  }

  #closeWake(): void {
    if (this.#wake === -1) return;
    this.#lib.close(this.#wake);
    this.#wake = -1;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
