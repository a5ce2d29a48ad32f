/**
 * A TLS listener whose connections have TCP_NODELAY set, as the relay's plain TCP ones do.
 *
 * Deno's own `Deno.listenTls` accepts connections with Nagle's algorithm on and offers no
 * switch (`setNoDelay` is for TcpConn only), and a relay forwards many small frames: a
 * credit followed at once by data leaves the data waiting for the peer's delayed ACK, up to
 * 40 ms (issue 18 measured wss:// turns at p99 42.8 ms against 2.4 ms over ws://).
 *
 * On Linux, with FFI allowed, the option is set on Deno's listening socket, and every socket
 * it accepts inherits it, as it inherits kernel keepalive (common/tcp_options.ts). Elsewhere
 * the listener is a node:tls server, which can set it per socket, each shown to the rest of
 * the relay as the small part of a Deno.Conn it uses (read, write, close, remoteAddr); it
 * costs the relay more per connection (an idle agent's heartbeat ~25 µs of CPU per write
 * against ~5 µs, and ~20 KiB more memory).
 */
import { Buffer } from "node:buffer";
import type tls from "node:tls";
import type { ByteConn } from "../protocol/ws_socket.ts";
import { NodeReader } from "../common/node_reader.ts";
import { KEEPALIVE, shutdownConnection, tuneListener } from "../common/tcp_options.ts";

/** How long a closed connection may take to flush what was written to it. */
const CLOSE_GRACE_MS = 5_000;
/** Bytes read ahead of the reader before the socket is paused. */
const READ_AHEAD = 256 * 1024;

/** The part of Deno.Conn the relay's HTTP front and WebSockets use. */
export type ConnLike = ByteConn & Pick<Deno.Conn, "remoteAddr">;

/**
 * A node:tls socket as a ConnLike: reads copy out of what arrived, writes are queued. Deno's
 * node:tls does not report a peer's half-close (closeWrite) before its full close; the relay
 * never needs it (WebSocket peers close, and a request head arrives before any FIN).
 */
class NodeTlsConn implements ConnLike {
  readonly remoteAddr: Deno.NetAddr;
  readonly #reader: NodeReader;
  #closed = false;

  constructor(readonly sock: tls.TLSSocket) {
    this.remoteAddr = {
      transport: "tcp",
      hostname: sock.remoteAddress ?? "",
      port: sock.remotePort ?? 0,
    };
    this.#reader = new NodeReader(sock, READ_AHEAD);
  }

  async read(buf: Uint8Array): Promise<number | null> {
    try {
      return await this.#reader.read(buf);
    } catch (e) {
      throw new Deno.errors.ConnectionReset((e as Error).message);
    }
  }

  write(buf: Uint8Array): Promise<number> {
    if (this.#closed || this.#reader.error) {
      return Promise.reject(new Deno.errors.BrokenPipe("the connection is closed"));
    }
    // The caller may reuse `buf` once this resolves; node keeps what it is given until sent.
    const more = this.sock.write(Buffer.from(buf));
    if (more) return Promise.resolve(buf.length);
    return new Promise((resolve, reject) => {
      const done = () => {
        this.sock.off("drain", done);
        this.sock.off("close", done);
        if (this.#closed || this.#reader.error) reject(new Deno.errors.BrokenPipe("closed"));
        else resolve(buf.length);
      };
      this.sock.on("drain", done);
      this.sock.on("close", done);
    });
  }

  /**
   * Closes once what was written has gone out (a write here resolves when node has taken
   * the bytes, not the kernel: a last message before a close must not be dropped), with
   * TLS's close_notify; a peer that does not take it within 5 s is cut.
   */
  close(): void {
    if (this.#closed) throw new Deno.errors.BadResource("already closed");
    this.#closed = true;
    this.sock.end();
    const cut = setTimeout(() => this.sock.destroy(), CLOSE_GRACE_MS);
    Deno.unrefTimer(cut);
    this.sock.once("close", () => clearTimeout(cut));
    this.#reader.stop();
  }
}

/** A listener shaped like Deno.Listener where the relay's HTTP front uses it. */
export interface ListenerLike {
  readonly addr: Deno.NetAddr;
  accept(): Promise<ConnLike>;
  close(): void;
}

type TlsListenOptions = { hostname: string; port: number; cert: string; key: string };

/**
 * Listens for TLS on hostname:port, Deno's listener where TCP_NODELAY can be set on it and
 * node:tls's otherwise; rejects with Deno.errors.AddrInUse when the port is taken.
 */
export async function listenTlsNoDelay(opts: TlsListenOptions): Promise<ListenerLike> {
  return listenDenoTls(opts) ?? await listenNodeTls(opts);
}

/**
 * Deno.listenTls with TCP_NODELAY and, where the kernel allows, keepalive on its socket; or
 * undefined where TCP_NODELAY cannot be set.
 */
export function listenDenoTls(opts: TlsListenOptions): ListenerLike | undefined {
  const l = Deno.listenTls(opts);
  if (!tuneListener(l.addr.port, { noDelay: true }).noDelay) {
    l.close();
    return undefined;
  }
  return {
    addr: l.addr,
    accept: async () => new DenoTlsConn(await l.accept()),
    close: () => l.close(),
  };
}

/**
 * A Deno TlsConn whose close also ends a handshake still under way: Deno's own close waits
 * for it (common/tcp_options.ts), so a client that connects and says nothing would keep its
 * socket past the relay's head timeout, for as long as it likes.
 */
class DenoTlsConn implements ConnLike {
  #handshaken = false;

  constructor(readonly conn: Deno.TlsConn) {
    conn.handshake().then(() => this.#handshaken = true, () => {/* seen by read and write */});
  }

  get remoteAddr(): Deno.NetAddr {
    return this.conn.remoteAddr;
  }

  read(p: Uint8Array): Promise<number | null> {
    return this.conn.read(p);
  }

  write(p: Uint8Array): Promise<number> {
    return this.conn.write(p);
  }

  close(): void {
    this.conn.close();
    if (!this.#handshaken) {
      shutdownConnection(this.conn.localAddr as Deno.NetAddr, this.conn.remoteAddr);
    }
  }
}

/** A node:tls server, each socket with TCP_NODELAY and keepalive (its idle time only). */
export async function listenNodeTls(opts: TlsListenOptions): Promise<ListenerLike> {
  // Loaded here, not with the module: every command loads this bundle, few serve TLS.
  const { default: tls } = await import("node:tls");
  const waiting: ((c: ConnLike | Error) => void)[] = [];
  const ready: ConnLike[] = [];
  let closed = false;
  // A client that opens a connection must finish its TLS handshake within 10 s.
  // allowHalfOpen: a peer's end of stream ends our reading only, as with a Deno.Conn; what
  // we still write goes out until we close.
  const options = { cert: opts.cert, key: opts.key, handshakeTimeout: 10_000, allowHalfOpen: true };
  const server = tls.createServer(options, (sock) => {
    sock.setNoDelay(true);
    sock.setKeepAlive(true, KEEPALIVE.idleS * 1000);
    const conn = new NodeTlsConn(sock);
    const take = waiting.shift();
    if (take) take(conn);
    else ready.push(conn);
  });
  // A failed handshake is the client's problem; it must not reach the process.
  server.on("tlsClientError", () => {});
  return new Promise((resolve, reject) => {
    server.once("error", (e: NodeJS.ErrnoException) => {
      reject(
        e.code === "EADDRINUSE" ? new Deno.errors.AddrInUse(e.message) : e,
      );
    });
    server.listen(opts.port, opts.hostname, () => {
      const a = server.address() as { address: string; port: number };
      resolve({
        addr: { transport: "tcp", hostname: a.address, port: a.port },
        accept() {
          if (closed) return Promise.reject(new Deno.errors.BadResource("listener closed"));
          const c = ready.shift();
          if (c) return Promise.resolve(c);
          return new Promise((res, rej) =>
            waiting.push((x) => (x instanceof Error ? rej(x) : res(x)))
          );
        },
        close() {
          if (closed) return;
          closed = true;
          server.close();
          for (const w of waiting.splice(0)) w(new Deno.errors.BadResource("listener closed"));
          for (const c of ready.splice(0)) {
            try {
              c.close();
            } catch { /* closed */ }
          }
        },
      });
    });
  });
}
