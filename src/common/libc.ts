/**
 * The C library through FFI, for what Deno does not offer (socket options, descriptor flags,
 * a read that need not leave the event loop), loaded for one call and closed again or kept
 * by its caller. Linux only (glibc's names); elsewhere, without FFI
 * permission, or when the call throws, the answer is undefined and the caller does without.
 */

const LIBC = ["libc.so.6", "libc.so"];

/** libc with `symbols`, open until the caller closes it; undefined where it cannot be had. */
export function openLibc<S extends Deno.ForeignLibraryInterface>(
  symbols: S,
): Deno.DynamicLibrary<S> | undefined {
  if (Deno.build.os !== "linux") return undefined;
  try {
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return undefined;
  } catch {
    return undefined;
  }
  for (const name of LIBC) {
    try {
      return Deno.dlopen(name, symbols);
    } catch {
      continue;
    }
  }
  return undefined;
}

/** `fn` run with libc's `symbols`; undefined where that cannot be done here. */
export function withLibc<S extends Deno.ForeignLibraryInterface, T>(
  symbols: S,
  fn: (lib: Deno.DynamicLibrary<S>) => T,
): T | undefined {
  const lib = openLibc(symbols);
  if (!lib) return undefined;
  try {
    return fn(lib);
  } catch {
    return undefined;
  } finally {
    lib.close();
  }
}

/** Descriptors looked at, at most (numbered densely: a relay holds one per agent). */
const MAX_FD = 1 << 20;

/**
 * The lowest of this process's descriptors, from 3, that is open (`isOpen`, e.g. fcntl's
 * F_GETFD through the caller's libc) and for which `match` holds. Descriptors are handed out
 * lowest first, so the search ends after a long run of closed ones.
 */
export function findDescriptor(
  isOpen: (fd: number) => boolean,
  match: (fd: number) => boolean,
): number | undefined {
  for (let fd = 3, closed = 0; fd < MAX_FD && closed < 4096; fd++) {
    if (!isOpen(fd)) closed++;
    else if (match(fd)) return fd;
    else closed = 0;
  }
  return undefined;
}

const FCNTL = { fcntl: { parameters: ["i32", "i32"], result: "i32" } } as const;
const F_GETFL = 3;
const O_NONBLOCK = 0o4000;

/** Whether descriptor `fd` is in non-blocking mode; undefined where that cannot be known. */
export function isNonBlocking(fd: number): boolean | undefined {
  return withLibc(FCNTL, (lib) => {
    const flags = lib.symbols.fcntl(fd, F_GETFL);
    return flags === -1 ? undefined : (flags & O_NONBLOCK) !== 0;
  });
}
