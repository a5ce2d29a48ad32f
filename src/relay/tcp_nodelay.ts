/**
 * TCP_NODELAY for every connection a `Deno.listenTls` listener accepts, on Linux.
 *
 * Deno's TLS listener offers no switch for Nagle's algorithm (`setNoDelay` is for TcpConn
 * only), but Linux copies TCP_NODELAY from a listening socket to each socket accept() returns
 * (tests/unit/tls_listener_test.ts checks it on the accepted side). So the option is set once,
 * on the listener, through libc by FFI: its descriptor is the one of this process's that is a
 * listening socket bound to the port (getsockname, SO_ACCEPTCONN; Deno hides descriptors, and
 * reading /proc/net would need every permission). Without FFI permission, on another system,
 * or if any step fails, the caller gets `false` and uses its other listener (node:tls, which
 * sets the option per socket but costs more CPU and memory per connection).
 */

const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;
const SOL_SOCKET = 1;
const SO_ACCEPTCONN = 30;
const AF_INET = 2;
const AF_INET6 = 10;
/** Descriptors looked at: a relay opens its listener among its first. */
const MAX_FD = 4096;
const LIBC = ["libc.so.6", "libc.so"];

const SYMBOLS = {
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
} as const;

type Libc = Deno.DynamicLibrary<typeof SYMBOLS>;

/** Sets TCP_NODELAY on this process's socket listening on `port`; true once it is on. */
export function setListenerNoDelay(port: number): boolean {
  return withLibc((lib) => {
    const fds = sockets(
      (fd) =>
        portOf(lib, fd, "sock") === port && intOption(lib, fd, SOL_SOCKET, SO_ACCEPTCONN) === 1,
    );
    return fds.length > 0 && fds.every((fd) => {
      lib.symbols.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, new Int32Array([1]), 4);
      return intOption(lib, fd, IPPROTO_TCP, TCP_NODELAY) === 1;
    });
  }) ?? false;
}

/**
 * Whether this process's connection from `localPort` to `remotePort` has TCP_NODELAY set;
 * undefined when that cannot be known here (another system, no FFI, no such connection).
 */
export function connectionNoDelay(localPort: number, remotePort: number): boolean | undefined {
  return withLibc((lib) => {
    const fds = sockets(
      (fd) => portOf(lib, fd, "sock") === localPort && portOf(lib, fd, "peer") === remotePort,
    );
    return fds.length === 1 ? intOption(lib, fds[0], IPPROTO_TCP, TCP_NODELAY) === 1 : undefined;
  });
}

function withLibc<T>(fn: (lib: Libc) => T): T | undefined {
  if (Deno.build.os !== "linux") return undefined;
  try {
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return undefined;
  } catch {
    return undefined;
  }
  for (const name of LIBC) {
    let lib: Libc;
    try {
      lib = Deno.dlopen(name, SYMBOLS);
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

/** This process's descriptors for which `match` holds. */
function sockets(match: (fd: number) => boolean): number[] {
  const fds: number[] = [];
  for (let fd = 3; fd < MAX_FD; fd++) if (match(fd)) fds.push(fd);
  return fds;
}

/** An int socket option, or undefined when `fd` is not a socket that has it. */
function intOption(lib: Libc, fd: number, level: number, name: number): number | undefined {
  const value = new Int32Array(1);
  const len = new Uint32Array([4]);
  return lib.symbols.getsockopt(fd, level, name, value, len) === 0 ? value[0] : undefined;
}

/** The port of `fd`'s own ("sock") or its peer's address, if it is an IP socket. */
function portOf(lib: Libc, fd: number, which: "sock" | "peer"): number | undefined {
  const addr = new Uint8Array(128);
  const len = new Uint32Array([addr.length]);
  const get = which === "sock" ? lib.symbols.getsockname : lib.symbols.getpeername;
  if (get(fd, addr, len) !== 0) return undefined;
  const family = addr[0] | (addr[1] << 8);
  if (family !== AF_INET && family !== AF_INET6) return undefined;
  return (addr[2] << 8) | addr[3];
}
