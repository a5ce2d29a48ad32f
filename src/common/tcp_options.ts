/**
 * Socket options Deno does not offer, on Linux, through libc by FFI. The descriptor of a socket
 * is found by its addresses and ports (getsockname, getpeername, and SO_ACCEPTCONN for a
 * listener; Deno hides descriptors, and reading /proc/net would need every permission). Without FFI permission, on
 * another system, or if any step fails, the functions say so and the caller does without (the
 * relay then uses its other TLS listener, node:tls, which sets the options per socket and times
 * out handshakes itself, but costs more CPU and memory per connection).
 *
 * - TCP_NODELAY for every connection a `Deno.listenTls` listener accepts: Deno's TLS listener
 *   offers no switch for Nagle's algorithm (`setNoDelay` is for TcpConn only), but Linux copies
 *   TCP_NODELAY from a listening socket to each socket accept() returns
 *   (tests/unit/tls_listener_test.ts checks it on the accepted side), so it is set once, on the
 *   listener.
 * - Kernel keepalive (KEEPALIVE) on the relay's connections, set on its listener in the same
 *   way, and on an agent's own connection to the relay: the kernel, not the program, checks
 *   that an idle link's far host is still there (conn.ts).
 * - Ending a connection whose TLS handshake never finished: closing a Deno TlsConn waits for the
 *   handshake (denoland/deno#14547), so a client that connects and says nothing would keep its
 *   socket for ever; shutdown(2) on the socket ends the handshake, and Deno then lets it go.
 */

import { findDescriptor, withLibc as withSymbols } from "./libc.ts";

const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;
const TCP_KEEPIDLE = 4;
const TCP_KEEPINTVL = 5;
const TCP_KEEPCNT = 6;
const TCP_USER_TIMEOUT = 18;
const SOL_SOCKET = 1;
const SO_KEEPALIVE = 9;
const SO_TYPE = 3;
const SOCK_STREAM = 1;
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

/**
 * Kernel keepalive on a link: after `idleS` seconds in which nothing was received, the
 * kernel sends a TCP probe every `intervalS`, and after `count` unanswered ones the connection
 * fails (ETIMEDOUT), so a peer whose host vanished (powered off, a cable pulled, a network gone)
 * is noticed within idleS + intervalS × count = 30 s with no work for the process. Keepalive
 * waits while sent data is unacknowledged, when retransmission would take a quarter of an hour
 * to give up: TCP_USER_TIMEOUT, set to the same 30 s, ends such a connection too. A peer that
 * is there but hangs (its process stopped) still answers both; conn.ts's idle heartbeat, at
 * longer intervals, is for that.
 *
 * Five probes, not three: probes go out in bursts (the kernel's timer wheel puts 20 s timers in
 * half-second slots, and a relay's idle links probed together fall due together), and a burst
 * larger than a receive queue loses its tail. With 19,900 agents on loopback probed every 75 s,
 * three missed probes in a row cut 0.4–1.5 % of the live idle links in two runs; five cut none.
 */
export const KEEPALIVE = { idleS: 20, intervalS: 2, count: 5 } as const;

/** Milliseconds sent data may stay unacknowledged (TCP_USER_TIMEOUT): the same bound. */
export const USER_TIMEOUT_MS = (KEEPALIVE.idleS + KEEPALIVE.intervalS * KEEPALIVE.count) * 1000;

export interface TcpOptions {
  noDelay: boolean;
  /** The keepalive settings, when keepalive is on. */
  keepalive?: { idleS: number; intervalS: number; count: number };
  /** TCP_USER_TIMEOUT (0: the kernel's retransmission limits). */
  userTimeoutMs: number;
}

/** What was set on a listener: each socket it accepts inherits it (Linux). */
export interface Tuned {
  noDelay: boolean;
  keepalive: boolean;
}

/**
 * Sets TCP_NODELAY if asked and, as far as the kernel allows, KEEPALIVE on this process's socket
 * listening on `port`; says what is now on.
 */
export function tuneListener(port: number, opts: { noDelay: boolean }): Tuned {
  return withLibc((lib) => {
    const fd = socket(
      lib,
      (fd) =>
        portOf(lib, fd, "sock") === port && intOption(lib, fd, SOL_SOCKET, SO_ACCEPTCONN) === 1,
    );
    if (fd === undefined) return { noDelay: false, keepalive: false };
    if (opts.noDelay) lib.symbols.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, int(1), 4);
    return { keepalive: setKeepalive(lib, fd), noDelay: options(lib, fd).noDelay };
  }) ?? { noDelay: false, keepalive: false };
}

/** Sets KEEPALIVE on this process's TCP connection from `local` to `remote`; true if on. */
export function keepConnectionAlive(local: Deno.NetAddr, remote: Deno.NetAddr): boolean {
  return withLibc((lib) => {
    const fd = connection(lib, local, remote);
    return fd !== undefined && setKeepalive(lib, fd);
  }) ?? false;
}

/**
 * TCP_NODELAY and keepalive of this process's TCP connection from `local` to `remote`;
 * undefined when that cannot be known here (another system, no FFI, no such connection).
 */
export function connectionOptions(
  local: Deno.NetAddr,
  remote: Deno.NetAddr,
): TcpOptions | undefined {
  return withLibc((lib) => {
    const fd = connection(lib, local, remote);
    return fd === undefined ? undefined : options(lib, fd);
  });
}

/**
 * Keepalive first (the timer), then its bounds, each on its own: a kernel that refuses one
 * (say TCP_USER_TIMEOUT) leaves the others on. True when all of it is on.
 */
function setKeepalive(lib: Libc, fd: number): boolean {
  const set = (level: number, name: number, v: number) =>
    lib.symbols.setsockopt(fd, level, name, int(v), 4) === 0;
  return [
    set(IPPROTO_TCP, TCP_KEEPIDLE, KEEPALIVE.idleS),
    set(IPPROTO_TCP, TCP_KEEPINTVL, KEEPALIVE.intervalS),
    set(IPPROTO_TCP, TCP_KEEPCNT, KEEPALIVE.count),
    set(IPPROTO_TCP, TCP_USER_TIMEOUT, USER_TIMEOUT_MS),
    set(SOL_SOCKET, SO_KEEPALIVE, 1),
  ].every(Boolean);
}

function options(lib: Libc, fd: number): TcpOptions {
  const noDelay = intOption(lib, fd, IPPROTO_TCP, TCP_NODELAY) === 1;
  const userTimeoutMs = intOption(lib, fd, IPPROTO_TCP, TCP_USER_TIMEOUT) ?? 0;
  if (intOption(lib, fd, SOL_SOCKET, SO_KEEPALIVE) !== 1) return { noDelay, userTimeoutMs };
  return {
    noDelay,
    userTimeoutMs,
    keepalive: {
      idleS: intOption(lib, fd, IPPROTO_TCP, TCP_KEEPIDLE) ?? 0,
      intervalS: intOption(lib, fd, IPPROTO_TCP, TCP_KEEPINTVL) ?? 0,
      count: intOption(lib, fd, IPPROTO_TCP, TCP_KEEPCNT) ?? 0,
    },
  };
}

const int = (v: number) => new Int32Array([v]);

/** Shuts this process's TCP connection from `local` to `remote` down; true if it did. */
export function shutdownConnection(local: Deno.NetAddr, remote: Deno.NetAddr): boolean {
  return withLibc((lib) => {
    const fd = connection(lib, local, remote);
    return fd !== undefined && lib.symbols.shutdown(fd, SHUT_RDWR) === 0;
  }) ?? false;
}

/**
 * The TCP socket with both of these ends. Ports alone would not do: two connections from one
 * port to different hosts can exist at once (an agent's `tether forward` to a service on the
 * relay's port).
 */
function connection(lib: Libc, local: Deno.NetAddr, remote: Deno.NetAddr): number | undefined {
  const want = [endpoint(local.hostname, local.port), endpoint(remote.hostname, remote.port)];
  // Ports first: a relay looks through one descriptor per agent, and most differ there.
  return socket(
    lib,
    (fd) =>
      portOf(lib, fd, "sock") === local.port && portOf(lib, fd, "peer") === remote.port &&
      intOption(lib, fd, SOL_SOCKET, SO_TYPE) === SOCK_STREAM &&
      endpointOf(lib, fd, "sock") === want[0] && endpointOf(lib, fd, "peer") === want[1],
  );
}

/** "host port" with the host in one spelling: IPv4 dotted (an IPv4-mapped IPv6 one too), IPv6 as URLs write it. */
function endpoint(host: string, port: number): string {
  const h = host.replace(/^\[|\]$/g, "");
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(h);
  if (mapped) return `${mapped[1]} ${port}`;
  if (!h.includes(":")) return `${h} ${port}`;
  try {
    return `${new URL(`http://[${h}]/`).hostname} ${port}`;
  } catch {
    return `${h} ${port}`;
  }
}

/** `fd`'s own ("sock") or its peer's address as endpoint() spells it, if it is an IP socket. */
function endpointOf(lib: Libc, fd: number, which: "sock" | "peer"): string | undefined {
  const a = sockaddr(lib, fd, which);
  if (!a) return undefined;
  const port = (a[2] << 8) | a[3];
  if (a.length === 8) return endpoint(a.subarray(4, 8).join("."), port);
  const groups = [];
  for (let i = 8; i < 24; i += 2) groups.push(((a[i] << 8) | a[i + 1]).toString(16));
  const isMapped = groups.slice(0, 5).every((g) => g === "0") && groups[5] === "ffff";
  return endpoint(isMapped ? a.subarray(20, 24).join(".") : groups.join(":"), port);
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
  const a = sockaddr(lib, fd, which);
  return a ? (a[2] << 8) | a[3] : undefined;
}

/**
 * `fd`'s own ("sock") or its peer's sockaddr, if it is an IP socket: a sockaddr_in (family,
 * port, 4 address bytes; 8 bytes here) or a sockaddr_in6 (the address at 8 to 24).
 */
function sockaddr(lib: Libc, fd: number, which: "sock" | "peer"): Uint8Array | undefined {
  const addr = new Uint8Array(128);
  const len = new Uint32Array([addr.length]);
  const get = which === "sock" ? lib.symbols.getsockname : lib.symbols.getpeername;
  if (get(fd, addr, len) !== 0) return undefined;
  const family = addr[0] | (addr[1] << 8);
  if (family === AF_INET) return addr.subarray(0, 8);
  return family === AF_INET6 ? addr.subarray(0, 28) : undefined;
}
