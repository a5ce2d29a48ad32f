/**
 * The C library through FFI, for what Deno does not offer (socket options, descriptor flags),
 * loaded for one call and closed again. Linux only (glibc's names); elsewhere, without FFI
 * permission, or when the call throws, the answer is undefined and the caller does without.
 */

const LIBC = ["libc.so.6", "libc.so"];

/** `fn` run with libc's `symbols`; undefined where that cannot be done here. */
export function withLibc<S extends Deno.ForeignLibraryInterface, T>(
  symbols: S,
  fn: (lib: Deno.DynamicLibrary<S>) => T,
): T | undefined {
  if (Deno.build.os !== "linux") return undefined;
  try {
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return undefined;
  } catch {
    return undefined;
  }
  for (const name of LIBC) {
    let lib: Deno.DynamicLibrary<S>;
    try {
      lib = Deno.dlopen(name, symbols);
    } catch {
      continue;
    }
    try {
      return fn(lib);
    } catch {
      return undefined;
    } finally {
      lib.close();
    }
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
