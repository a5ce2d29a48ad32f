/**
 * The dialing side of the WebSocket handshake (RFC 6455 §4.1) over
 * Deno.connect, for agents and clients. The framing that follows is
 * ws_socket.ts, shared with the relay.
 *
 * Why not the built-in `WebSocket`: its TCP socket keeps Nagle's algorithm
 * on, so two small messages in a row wait for the peer's delayed ACK (~40 ms
 * per turn on Linux), which ruins `exec --stream`. Here the socket has
 * TCP_NODELAY, and a non-101 answer to the upgrade is visible (401 vs 403 vs
 * 429).
 */
import { MAX_RELAY_MESSAGE } from "./messages.ts";
import { WsSocket } from "./ws_socket.ts";
import { acceptKey, readHead } from "./http1.ts";
import { writeAll } from "../common/bytes.ts";
import { keepConnectionAlive } from "../common/tcp_options.ts";

/** Largest message accepted from the relay (see MAX_RELAY_MESSAGE). */
const MAX_MESSAGE = MAX_RELAY_MESSAGE + 1024;

export interface HandshakeRefused {
  status: number;
  headers: Headers;
  body: string;
}

/** The relay could not be reached within the dial timeout. */
export class DialTimeout extends Error {
  constructor(readonly ms: number) {
    super(`no answer within ${ms / 1000}s`);
  }
}

export class UpgradeRefused extends Error {
  constructor(readonly refused: HandshakeRefused) {
    super(`upgrade refused with HTTP ${refused.status}`);
  }
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/**
 * Connects and upgrades. Throws UpgradeRefused for a non-101 answer, and
 * the underlying error when the TCP/TLS connection fails.
 */
export async function connectWebSocket(
  url: string,
  opts: {
    headers?: Record<string, string>;
    caCerts?: string[];
    timeoutMs?: number;
    /** Hand binary messages over as views valid only during onmessage (see ws_socket.ts). */
    borrowBinary?: boolean;
    /** Connect to this address (one of the host name's); TLS and Host still name the host. */
    address?: string;
    /** Kernel keepalive on the TCP connection, where it can be set (common/tcp_options.ts). */
    keepalive?: boolean;
  } = {},
): Promise<WsSocket> {
  const u = new URL(url);
  const tls = u.protocol === "wss:";
  const hostname = u.hostname.replace(/^\[|\]$/g, "");
  const port = Number(u.port) || (tls ? 443 : 80);
  const timeoutMs = opts.timeoutMs ?? 10_000;
  // One deadline for all of it: TCP (a black-holed address never answers), TLS, the upgrade.
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new DialTimeout(timeoutMs)), timeoutMs);
  });
  let conn: Deno.Conn | undefined;
  const handshake = async (): Promise<WsSocket> => {
    const tcp = await Deno.connect({ hostname: opts.address ?? hostname, port });
    conn = tcp;
    tcp.setNoDelay(true);
    if (opts.keepalive) keepConnectionAlive(tcp.localAddr, tcp.remoteAddr);
    if (tls) conn = await Deno.startTls(tcp, { hostname, caCerts: opts.caCerts });
    const key = crypto.getRandomValues(new Uint8Array(16)).toBase64();
    const lines = [
      `GET ${u.pathname}${u.search} HTTP/1.1`,
      `Host: ${u.host}`,
      "Upgrade: websocket",
      "Connection: Upgrade",
      `Sec-WebSocket-Key: ${key}`,
      "Sec-WebSocket-Version: 13",
      ...Object.entries(opts.headers ?? {}).map(([k, v]) => `${k}: ${v}`),
    ];
    await writeAll(conn, enc.encode(lines.join("\r\n") + "\r\n\r\n"));
    const { line, headers, rest } = await readHead(conn);
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(line);
    if (!m) throw new Error(`not an HTTP answer: ${line.slice(0, 80)}`);
    const status = Number(m[1]);
    if (status !== 101) {
      const body = dec.decode(rest.subarray(0, 512));
      throw new UpgradeRefused({ status, headers, body });
    }
    if (headers.get("sec-websocket-accept") !== await acceptKey(key)) {
      throw new Error("the server's Sec-WebSocket-Accept does not match");
    }
    return new WsSocket(conn, rest, {
      role: "client",
      maxMessage: MAX_MESSAGE,
      borrowBinary: opts.borrowBinary,
    });
  };
  const attempt = handshake();
  try {
    return await Promise.race([attempt, late]);
  } catch (e) {
    // Whatever is still pending (a TCP connect) is closed once it settles.
    attempt.catch(() => {}).finally(() => closeQuietly(conn));
    closeQuietly(conn);
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

function closeQuietly(c: { close(): void } | undefined): void {
  try {
    c?.close();
  } catch { /* already closed */ }
}
