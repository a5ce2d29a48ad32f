/**
 * What the relay needs of its TLS sockets that Deno does not offer, on Linux, through libc by
 * FFI. The descriptor of a socket is found by its ports (getsockname, getpeername, and
 * SO_ACCEPTCONN for a listener; Deno hides descriptors, and reading /proc/net would need every
 * permission). Without FFI permission, on another system, or if any step fails, the functions
 * say so and the caller uses its other listener (node:tls, which sets the option per socket and
 * times out handshakes itself, but costs more CPU and memory per connection).
 *
 * - TCP_NODELAY for every connection a `Deno.listenTls` listener accepts: Deno's TLS listener
 *   offers no switch for Nagle's algorithm (`setNoDelay` is for TcpConn only), but Linux copies
 *   TCP_NODELAY from a listening socket to each socket accept() returns
 *   (tests/unit/tls_listener_test.ts checks it on the accepted side), so it is set once, on the
 *   listener.
 * - Ending a connection whose TLS handshake never finished: closing a Deno TlsConn waits for the
 *   handshake (denoland/deno#14547), so a client that connects and says nothing would keep its
 *   socket for ever; shutdown(2) on the socket ends the handshake, and Deno then lets it go.
 */

import { findDescriptor, withLibc as withSymbols } from "../common/libc.ts";

const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;
const SOL_SOCKET = 1;
const SO_ACCEPTCONN = 30;
const AF_INET = 2;
const AF_INET6 = 10;
const SHUT_RDWR = 2;
const F_GETFD = 1;

const SYMBOLS = {
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  fcntl: { parameters: ["i32", "i32"], result: "i32" },
} as const;

type Libc = Deno.DynamicLibrary<typeof SYMBOLS>;

const withLibc = <T>(fn: (lib: Libc) => T): T | undefined => withSymbols(SYMBOLS, fn);

/** Sets TCP_NODELAY on this process's socket listening on `port`; true once it is on. */
export function setListenerNoDelay(port: number): boolean {
  return withLibc((lib) => {
    const fd = socket(
      lib,
      (fd) =>
        portOf(lib, fd, "sock") === port && intOption(lib, fd, SOL_SOCKET, SO_ACCEPTCONN) === 1,
    );
    if (fd === undefined) return false;
    lib.symbols.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, new Int32Array([1]), 4);
    return intOption(lib, fd, IPPROTO_TCP, TCP_NODELAY) === 1;
  }) ?? false;
}

/**
 * Whether this process's connection from `localPort` to `remotePort` has TCP_NODELAY set;
 * undefined when that cannot be known here (another system, no FFI, no such connection).
 */
export function connectionNoDelay(localPort: number, remotePort: number): boolean | undefined {
  return withLibc((lib) => {
    const fd = connection(lib, localPort, remotePort);
    return fd === undefined ? undefined : intOption(lib, fd, IPPROTO_TCP, TCP_NODELAY) === 1;
  });
}

/** Shuts this process's connection from `localPort` to `remotePort` down; true if it did. */
export function shutdownConnection(localPort: number, remotePort: number): boolean {
  return withLibc((lib) => {
    const fd = connection(lib, localPort, remotePort);
    return fd !== undefined && lib.symbols.shutdown(fd, SHUT_RDWR) === 0;
  }) ?? false;
}

function connection(lib: Libc, localPort: number, remotePort: number): number | undefined {
  return socket(
    lib,
    (fd) => portOf(lib, fd, "sock") === localPort && portOf(lib, fd, "peer") === remotePort,
  );
}

/** The lowest of this process's descriptors for which `match` holds. */
function socket(lib: Libc, match: (fd: number) => boolean): number | undefined {
  return findDescriptor((fd) => lib.symbols.fcntl(fd, F_GETFD) !== -1, match);
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
