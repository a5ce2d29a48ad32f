/**
 * A small WebSocket client (RFC 6455) over Deno.connect, for agents and
 * clients dialing the relay.
 *
 * Why not the built-in `WebSocket`: its TCP socket keeps Nagle's algorithm
 * on, so two small messages in a row wait for the peer's delayed ACK (~40 ms
 * per turn on Linux), which ruins `exec --stream`. Here the socket has
 * TCP_NODELAY, queued frames are coalesced into one write, a non-101 answer
 * to the upgrade is visible (401 vs 403 vs 429), and the send queue is ours.
 *
 * Client frames must be masked; this client uses the all-zero mask key.
 * Masking protects browsers' intermediaries from script-chosen bytes; a
 * CLI has no such adversary, and a zero key makes masking free.
 */
import { encodeBase64 } from "../common/base64.ts";
import { MAX_RELAY_MESSAGE } from "./messages.ts";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const OP_CONT = 0x0, OP_TEXT = 0x1, OP_BINARY = 0x2, OP_CLOSE = 0x8, OP_PING = 0x9, OP_PONG = 0xa;
/** Largest message accepted from the relay (see MAX_RELAY_MESSAGE). */
const MAX_MESSAGE = MAX_RELAY_MESSAGE + 1024;
const READ_BUFFER = 1024 * 1024;
const COALESCE_LIMIT = 256 * 1024;

const CONNECTING = 0, OPEN = 1, CLOSING = 2, CLOSED = 3;

export interface HandshakeRefused {
  status: number;
  headers: Headers;
  body: string;
}

export class UpgradeRefused extends Error {
  constructor(readonly refused: HandshakeRefused) {
    super(`upgrade refused with HTTP ${refused.status}`);
  }
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Exposes the subset of the WebSocket API that conn.ts uses. */
export class TcpWebSocket {
  readyState = CONNECTING;
  binaryType = "arraybuffer";
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  private queue: Uint8Array[] = [];
  private queued = 0;
  private writing = false;
  private closeSent = false;
  private closeEvent?: { code: number; reason: string };

  private constructor(private readonly conn: Deno.Conn, private leftover: Uint8Array) {}

  get bufferedAmount(): number {
    return this.queued;
  }

  /**
   * Connects and upgrades. Throws UpgradeRefused for a non-101 answer, and
   * the underlying error when the TCP/TLS connection fails.
   */
  static async connect(
    url: string,
    opts: { headers?: Record<string, string>; caCerts?: string[]; timeoutMs?: number } = {},
  ): Promise<TcpWebSocket> {
    const u = new URL(url);
    const tls = u.protocol === "wss:";
    const hostname = u.hostname.replace(/^\[|\]$/g, "");
    const port = Number(u.port) || (tls ? 443 : 80);
    const tcp = await Deno.connect({ hostname, port });
    tcp.setNoDelay(true);
    let conn: Deno.Conn = tcp;
    const timer = setTimeout(() => conn.close(), opts.timeoutMs ?? 10_000);
    try {
      if (tls) conn = await Deno.startTls(tcp, { hostname, caCerts: opts.caCerts });
      const key = encodeBase64(crypto.getRandomValues(new Uint8Array(16)));
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
      const { status, headers, rest } = await readHead(conn);
      if (status !== 101) {
        const body = dec.decode(rest.subarray(0, 512));
        conn.close();
        throw new UpgradeRefused({ status, headers, body });
      }
      const expect = encodeBase64(
        new Uint8Array(await crypto.subtle.digest("SHA-1", enc.encode(key + GUID))),
      );
      if (headers.get("sec-websocket-accept") !== expect) {
        conn.close();
        throw new Error("the server's Sec-WebSocket-Accept does not match");
      }
      const ws = new TcpWebSocket(conn, rest);
      ws.readyState = OPEN;
      ws.readLoop();
      return ws;
    } catch (e) {
      try {
        conn.close();
      } catch { /* already closed */ }
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  send(data: string | Uint8Array): void {
    if (this.readyState !== OPEN) return;
    if (typeof data === "string") this.enqueue(OP_TEXT, enc.encode(data));
    else this.enqueue(OP_BINARY, data);
  }

  /**
   * Sends a binary message without copying it: the WS_HEADROOM (14) bytes
   * before `data` in its buffer must be free; the frame header goes there.
   */
  sendInPlace(data: Uint8Array): void {
    if (this.readyState !== OPEN) return;
    const h = headerLength(data.length);
    if (data.byteOffset < h) {
      this.enqueue(OP_BINARY, data);
      return;
    }
    const frame = new Uint8Array(data.buffer, data.byteOffset - h, h + data.length);
    writeHeader(frame, OP_BINARY, data.length);
    this.push(frame);
  }

  close(code = 1000, reason = ""): void {
    if (this.readyState >= CLOSING) return;
    this.readyState = CLOSING;
    this.sendClose(code, reason);
    this.closeEvent = { code, reason };
    // The relay answers with its own close and ends TCP; don't wait forever.
    setTimeout(() => this.shutdown(), 1000);
  }

  private sendClose(code: number, reason: string): void {
    if (this.closeSent) return;
    this.closeSent = true;
    const r = enc.encode(reason).subarray(0, 123);
    const p = new Uint8Array(2 + r.length);
    new DataView(p.buffer).setUint16(0, code);
    p.set(r, 2);
    this.enqueue(OP_CLOSE, p, true);
  }

  private enqueue(opcode: number, payload: Uint8Array, force = false): void {
    if (this.readyState !== OPEN && !force) return;
    const h = headerLength(payload.length);
    const frame = new Uint8Array(h + payload.length);
    writeHeader(frame, opcode, payload.length);
    frame.set(payload, h);
    this.push(frame);
  }

  private push(frame: Uint8Array): void {
    this.queue.push(frame);
    this.queued += frame.length;
    this.flush();
  }

  private async flush(): Promise<void> {
    if (this.writing) return;
    this.writing = true;
    try {
      while (this.queue.length > 0) {
        let chunk = this.queue.shift()!;
        if (this.queue.length > 0 && chunk.length < COALESCE_LIMIT) {
          // Several frames waiting: one write, one TCP segment where they fit.
          const parts = [chunk];
          let size = chunk.length;
          while (this.queue.length > 0 && size + this.queue[0].length <= COALESCE_LIMIT) {
            const next = this.queue.shift()!;
            parts.push(next);
            size += next.length;
          }
          chunk = new Uint8Array(size);
          let off = 0;
          for (const p of parts) {
            chunk.set(p, off);
            off += p.length;
          }
        }
        await writeAll(this.conn, chunk);
        this.queued -= chunk.length;
      }
    } catch {
      this.shutdown(1006, "connection lost");
    } finally {
      this.writing = false;
    }
  }

  private async readLoop(): Promise<void> {
    let buf = new Uint8Array(READ_BUFFER);
    buf.set(this.leftover);
    let start = 0;
    let end = this.leftover.length;
    this.leftover = new Uint8Array();
    let fragments: Uint8Array[] = [];
    let fragOpcode = 0;
    let fragSize = 0;
    try {
      for (;;) {
        // Parse every complete frame in buf[start, end).
        for (;;) {
          const avail = end - start;
          if (avail < 2) break;
          const b0 = buf[start], b1 = buf[start + 1];
          if (b0 & 0x70) throw new Error("reserved bits set");
          const opcode = b0 & 0x0f;
          const masked = (b1 & 0x80) !== 0;
          let len = b1 & 0x7f;
          let hdr = 2;
          if (len === 126) {
            if (avail < 4) break;
            len = (buf[start + 2] << 8) | buf[start + 3];
            hdr = 4;
          } else if (len === 127) {
            if (avail < 10) break;
            const big = new DataView(buf.buffer, start + 2, 8).getBigUint64(0);
            if (big > BigInt(MAX_MESSAGE)) throw new Error("frame too large");
            len = Number(big);
            hdr = 10;
          }
          if (len > MAX_MESSAGE) throw new Error("frame too large");
          const maskAt = start + hdr;
          if (masked) hdr += 4;
          if (avail < hdr + len) {
            if (hdr + len > buf.length) {
              const bigger = new Uint8Array(hdr + len);
              bigger.set(buf.subarray(start, end));
              buf = bigger;
              end -= start;
              start = 0;
            }
            break;
          }
          const payload = buf.slice(start + hdr, start + hdr + len);
          if (masked) {
            for (let i = 0; i < payload.length; i++) payload[i] ^= buf[maskAt + (i & 3)];
          }
          start += hdr + len;
          const fin = (b0 & 0x80) !== 0;
          if (opcode >= 0x8) {
            if (opcode === OP_CLOSE) {
              const code = payload.length >= 2 ? (payload[0] << 8) | payload[1] : 1005;
              const reason = dec.decode(payload.subarray(2));
              this.closeEvent ??= { code, reason };
              this.sendClose(code === 1005 ? 1000 : code, "");
              await this.drainWrites();
              this.shutdown();
              return;
            }
            if (opcode === OP_PING) this.enqueue(OP_PONG, payload);
            continue; // pong: nothing to do
          }
          if (opcode === OP_CONT) {
            if (!fragOpcode) throw new Error("continuation without a start");
            fragments.push(payload);
            fragSize += payload.length;
            if (fragSize > MAX_MESSAGE) throw new Error("message too large");
            if (!fin) continue;
            const whole = concat(fragments, fragSize);
            this.deliver(fragOpcode, whole);
            fragments = [];
            fragOpcode = 0;
            fragSize = 0;
            continue;
          }
          if (opcode !== OP_TEXT && opcode !== OP_BINARY) throw new Error(`bad opcode ${opcode}`);
          if (!fin) {
            fragOpcode = opcode;
            fragments = [payload];
            fragSize = payload.length;
            continue;
          }
          this.deliver(opcode, payload);
          if (this.readyState === CLOSED) return;
        }
        if (start === end) {
          start = end = 0;
        } else if (buf.length - end < 64 * 1024) {
          buf.copyWithin(0, start, end);
          end -= start;
          start = 0;
        }
        const n = await this.conn.read(buf.subarray(end));
        if (n === null) break;
        end += n;
      }
      this.shutdown(1006, "connection closed by the relay");
    } catch (e) {
      this.shutdown(1006, `connection lost: ${(e as Error).message}`);
    }
  }

  private deliver(opcode: number, payload: Uint8Array): void {
    const data = opcode === OP_TEXT ? dec.decode(payload) : payload.buffer as ArrayBuffer;
    this.onmessage?.({ data });
  }

  private async drainWrites(): Promise<void> {
    for (let i = 0; i < 100 && (this.writing || this.queue.length > 0); i++) {
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  private shutdown(code = 1006, reason = ""): void {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    try {
      this.conn.close();
    } catch { /* already closed */ }
    this.queue = [];
    this.queued = 0;
    const ev = this.closeEvent ?? { code, reason };
    this.onclose?.(ev);
  }
}

/** Bytes of a client frame header (with its 4-byte mask key) for a payload of `n` bytes. */
function headerLength(n: number): number {
  return n < 126 ? 6 : n < 65536 ? 8 : 14;
}

/** Writes a final-fragment client header at the start of `frame`; the mask key is all zero. */
function writeHeader(frame: Uint8Array, opcode: number, n: number): void {
  const h = headerLength(n);
  frame[0] = 0x80 | opcode;
  if (n < 126) {
    frame[1] = 0x80 | n;
  } else if (n < 65536) {
    frame[1] = 0x80 | 126;
    frame[2] = n >> 8;
    frame[3] = n & 0xff;
  } else {
    frame[1] = 0x80 | 127;
    new DataView(frame.buffer, frame.byteOffset, 10).setBigUint64(2, BigInt(n));
  }
  frame.fill(0, h - 4, h);
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}

function concat(parts: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

async function readHead(
  conn: Deno.Conn,
): Promise<{ status: number; headers: Headers; rest: Uint8Array }> {
  const buf = new Uint8Array(16 * 1024);
  let len = 0;
  for (;;) {
    const n = await conn.read(buf.subarray(len));
    if (n === null) throw new Error("connection closed during the upgrade");
    len += n;
    const text = dec.decode(buf.subarray(0, len));
    const at = text.indexOf("\r\n\r\n");
    if (at >= 0) {
      const headEnd = enc.encode(text.slice(0, at + 4)).length;
      const [statusLine, ...lines] = text.slice(0, at).split("\r\n");
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine);
      if (!m) throw new Error(`not an HTTP answer: ${statusLine.slice(0, 80)}`);
      const headers = new Headers();
      for (const l of lines) {
        const i = l.indexOf(":");
        if (i > 0) headers.append(l.slice(0, i).trim(), l.slice(i + 1).trim());
      }
      return { status: Number(m[1]), headers, rest: buf.slice(headEnd, len) };
    }
    if (len === buf.length) throw new Error("HTTP answer head too large");
  }
}
