/**
 * The relay's HTTP/1.1 front: a TCP or TLS listener that reads one request
 * head per connection and either answers it and closes, or upgrades it to a
 * WebSocket (protocol/ws_socket.ts). The relay serves nothing else: /healthz
 * and its two WebSocket endpoints, so a full HTTP server is not needed, and
 * owning the socket lets the relay forward frames from one read buffer into
 * another connection's write buffer with no allocation per frame, and set
 * TCP_NODELAY on every accepted connection.
 */
import { acceptKey, HeadError, readHead } from "../protocol/http1.ts";
import { writeAll } from "../common/bytes.ts";
import { WsSocket } from "../protocol/ws_socket.ts";
import { type ConnLike, type ListenerLike, listenTlsNoDelay } from "./tls_listener.ts";
import { tuneListener } from "../common/tcp_options.ts";

/** A client must finish its request head (and TLS handshake) within this. */
const HEAD_TIMEOUT_MS = 10_000;

export interface HttpRequest {
  method: string;
  /** The path, without the query. */
  path: string;
  headers: Headers;
  remote: Deno.NetAddr;
}

export type HttpAnswer =
  | { status: number; body: string | Uint8Array; headers?: Record<string, string> }
  /** Upgrade to a WebSocket; `accept` gets the open socket. */
  | { upgrade: (ws: WsSocket) => void };

export interface HttpServerOptions {
  hostname: string;
  port: number;
  /** PEM certificate chain and key: serve TLS. */
  cert?: string;
  key?: string;
  /** Largest WebSocket message accepted from a peer. */
  maxMessage: number;
  /** Time allowed for the request head (default HEAD_TIMEOUT_MS). */
  headTimeoutMs?: number;
  log: (line: string) => void;
}

export interface HttpServer {
  addr: Deno.NetAddr;
  /** Resolves once the listener is closed. */
  finished: Promise<void>;
  /** Stops accepting and drops connections still sending their head. */
  shutdown(): Promise<void>;
}

const REASONS: Record<number, string> = {
  200: "OK",
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  426: "Upgrade Required",
  429: "Too Many Requests",
  500: "Internal Server Error",
};

const enc = new TextEncoder();

/** A plain TCP listener whose connections get kernel keepalive (where it can be set). */
function listenTcp(hostname: string, port: number): Deno.TcpListener {
  const l = Deno.listen({ hostname, port });
  tuneListener(l.addr.port, { noDelay: false });
  return l;
}

/**
 * Listens (rejects with Deno.errors.AddrInUse and the like). TLS goes through
 * tls_listener.ts, whose connections have TCP_NODELAY as the plain ones do.
 */
export async function serveHttp(
  opts: HttpServerOptions,
  handler: (req: HttpRequest) => HttpAnswer | Promise<HttpAnswer>,
): Promise<HttpServer> {
  const listener: ListenerLike = opts.cert && opts.key
    ? await listenTlsNoDelay({
      hostname: opts.hostname,
      port: opts.port,
      cert: opts.cert,
      key: opts.key,
    })
    : listenTcp(opts.hostname, opts.port);
  const inHead = new Set<ConnLike>();
  let closing = false;

  const finished = (async () => {
    for (;;) {
      let conn: ConnLike;
      try {
        conn = await listener.accept();
      } catch (e) {
        if (closing || e instanceof Deno.errors.BadResource) return;
        // Out of file descriptors and the like: say so, wait a little, go on.
        opts.log(`accept failed: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      serveConn(conn);
    }
  })();

  async function serveConn(conn: ConnLike): Promise<void> {
    // TCP_NODELAY: small frames (a turn of `exec --stream`) leave at once (TLS ones have it
    // from tls_listener.ts).
    if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
    inHead.add(conn);
    const timer = setTimeout(() => closeQuietly(conn), opts.headTimeoutMs ?? HEAD_TIMEOUT_MS);
    let head;
    try {
      head = await readHead(conn);
    } catch (e) {
      // A malformed head gets a 400; a peer that went away (or failed TLS) gets nothing.
      if (e instanceof HeadError && !/closed/.test(e.message)) {
        await respond(conn, { status: 400, body: `bad request: ${e.message}\n` });
      }
      closeQuietly(conn);
      return;
    } finally {
      clearTimeout(timer);
      inHead.delete(conn);
    }
    const m = /^([A-Z]+) (\S+) HTTP\/1\.[01]$/.exec(head.line);
    let path: string | undefined;
    try {
      if (m) path = new URL(m[2], "http://relay").pathname;
    } catch { /* an unparseable target: below */ }
    if (!m || path === undefined) {
      await respond(conn, { status: 400, body: "bad request line\n" });
      closeQuietly(conn);
      return;
    }
    let answer: HttpAnswer;
    try {
      answer = await handler({
        method: m[1],
        path,
        headers: head.headers,
        remote: conn.remoteAddr as Deno.NetAddr,
      });
    } catch (e) {
      opts.log(`request failed: ${(e as Error)?.message ?? e}`);
      answer = { status: 500, body: "internal error\n" };
    }
    if (!("upgrade" in answer)) {
      await respond(conn, answer);
      closeQuietly(conn);
      return;
    }
    const key = head.headers.get("sec-websocket-key") ?? "";
    const version = head.headers.get("sec-websocket-version");
    const problem = m[1] !== "GET"
      ? "a WebSocket upgrade must be a GET"
      : !/\bupgrade\b/i.test(head.headers.get("connection") ?? "")
      ? "missing Connection: Upgrade"
      : version !== "13"
      ? "unsupported Sec-WebSocket-Version (want 13)"
      : !/^[A-Za-z0-9+/]{22}==$/.test(key)
      ? "missing or malformed Sec-WebSocket-Key"
      : undefined;
    if (problem) {
      await respond(conn, {
        status: 400,
        body: `bad request: ${problem}\n`,
        headers: { "sec-websocket-version": "13" },
      });
      closeQuietly(conn);
      return;
    }
    try {
      await writeAll(
        conn,
        enc.encode(
          "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
            `Sec-WebSocket-Accept: ${await acceptKey(key)}\r\n\r\n`,
        ),
      );
    } catch {
      closeQuietly(conn);
      return;
    }
    answer.upgrade(
      new WsSocket(conn, head.rest, {
        role: "server",
        maxMessage: opts.maxMessage,
        borrowBinary: true,
      }),
    );
  }

  return {
    addr: listener.addr as Deno.NetAddr,
    finished,
    async shutdown() {
      closing = true;
      closeQuietly(listener);
      for (const c of inHead) closeQuietly(c);
      inHead.clear();
      await finished;
    },
  };
}

async function respond(
  conn: ConnLike,
  a: { status: number; body: string | Uint8Array; headers?: Record<string, string> },
): Promise<void> {
  const body = typeof a.body === "string" ? enc.encode(a.body) : a.body;
  // Plain text unless the answer says otherwise (/metrics names its format's version).
  const headers = { "content-type": "text/plain; charset=utf-8", ...a.headers };
  const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("");
  const head = enc.encode(
    `HTTP/1.1 ${a.status} ${REASONS[a.status] ?? "Status"}\r\n` +
      `Content-Length: ${body.length}\r\nConnection: close\r\n${extra}\r\n`,
  );
  const bytes = new Uint8Array(head.length + body.length);
  bytes.set(head);
  bytes.set(body, head.length);
  try {
    await writeAll(conn, bytes);
  } catch { /* the client went away */ }
}

function closeQuietly(c: { close(): void }): void {
  try {
    c.close();
  } catch { /* already closed */ }
}
