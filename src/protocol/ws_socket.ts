/**
 * RFC 6455 framing over a Deno.Conn, for both ends of every tether
 * connection: agents and clients dial (ws_client.ts does the handshake), the
 * relay accepts (relay/http.ts does its side). Conn (conn.ts) runs on top.
 *
 * Why our own, on both sides:
 * - TCP_NODELAY. Deno's `WebSocket` client keeps Nagle on, which made every
 *   `exec --stream` turn wait ~40 ms for a delayed ACK.
 * - No garbage per message. Each connection has one read buffer and one
 *   write buffer, reused. `send` copies the message into the write buffer
 *   (one memcpy), so the caller may reuse its buffer at once, and whatever
 *   queues up while a write is in flight leaves in the next single write.
 *   Deno's WebSocket made a new ArrayBuffer for every message it received
 *   and copied each one it sent; at 64 KiB a frame that garbage is what grew
 *   a relay under a slow reader.
 * - Borrowed payloads. A receiver that handles each binary message at once
 *   (the relay forwards it into another socket's write buffer) can take it
 *   as a view into the read buffer, valid only during `onmessage`
 *   (`borrowBinary`); so do agents and clients, which copy what they keep
 *   (queued stdin, output waiting to be written) into buffers they reuse.
 *
 * A client masks each frame with its own unpredictable key, as RFC 6455
 * §5.3 requires (the keys come from crypto.getRandomValues, 4 KiB at a
 * time, and the mask is applied a 32-bit word at a time while the frame is
 * copied into the write buffer). As a server we unmask whatever key the
 * peer chose, and refuse unmasked frames.
 */

import { concatBytes } from "../common/bytes.ts";

export const OPEN = 1, CLOSING = 2, CLOSED = 3;

const OP_CONT = 0x0, OP_TEXT = 0x1, OP_BINARY = 0x2, OP_CLOSE = 0x8, OP_PING = 0x9, OP_PONG = 0xa;

/** A fresh or idle connection's read buffer; it grows while reads fill it. */
const READ_MIN = 2 * 1024;
/** Largest read buffer kept for throughput (a bigger frame still gets room). */
const READ_MAX = 256 * 1024;
/** A buffer above this size is given back after a second without traffic. */
const KEEP_IDLE = 64 * 1024;
/** Lingering after we sent a close, before the TCP connection is dropped. */
const CLOSE_WAIT_MS = 1000;

const EMPTY = new Uint8Array(0);
const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

export interface WsSocketOptions {
  /** "client" masks what it sends; "server" requires masked frames (RFC 6455 §5.1). */
  role: "client" | "server";
  /** Largest message accepted, in bytes; a bigger one closes the connection. */
  maxMessage: number;
  /** Hand binary messages over as views valid only during onmessage (no copy). */
  borrowBinary?: boolean;
}

export class WsError extends Error {}

/**
 * What a WebSocket needs of its connection: a Deno.Conn, or the relay's view of a node:tls
 * socket (relay/tls_listener.ts).
 */
export type ByteConn = Pick<Deno.Conn, "read" | "write" | "close">;

/** Shaped like the browser WebSocket API where conn.ts uses it (WsLike), plus `trim`. */
export class WsSocket {
  readyState = OPEN;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;

  readonly #conn: ByteConn;
  readonly #client: boolean;
  readonly #maxMessage: number;
  readonly #borrow: boolean;
  /** Being filled while #spare (the previous one) may be in flight. */
  #out: Uint8Array = EMPTY;
  #outLen = 0;
  #spare: Uint8Array | undefined;
  #writing = false;
  #queued = 0;
  #closeSent = false;
  #closeEvent?: { code: number; reason: string };
  #closeTimer?: ReturnType<typeof setTimeout>;
  /** Bytes moved since the last trim(); a connection with none is idle. */
  #activity = 0;
  #shrinkRead = false;
  #onmessage: ((ev: { data: string | Uint8Array }) => void) | null = null;
  /** Messages that came before onmessage was set (say, in the same read as the handshake). */
  #early: (string | Uint8Array)[] = [];

  constructor(conn: ByteConn, leftover: Uint8Array, opts: WsSocketOptions) {
    this.#conn = conn;
    this.#client = opts.role === "client";
    this.#maxMessage = opts.maxMessage;
    this.#borrow = opts.borrowBinary ?? false;
    this.#readLoop(leftover);
  }

  get onmessage(): ((ev: { data: string | Uint8Array }) => void) | null {
    return this.#onmessage;
  }

  /** Setting a handler first hands it whatever arrived before, in order. */
  set onmessage(fn: ((ev: { data: string | Uint8Array }) => void) | null) {
    this.#onmessage = fn;
    while (fn && this.#early.length > 0 && this.#onmessage === fn) {
      fn({ data: this.#early.shift()! });
    }
  }

  /** Bytes accepted by send() and not yet written to the socket. */
  get bufferedAmount(): number {
    return this.#queued;
  }

  send(data: string | Uint8Array): void {
    if (this.readyState !== OPEN) return;
    if (typeof data === "string") this.#frame(OP_TEXT, enc.encode(data));
    else this.#frame(OP_BINARY, data);
  }

  /** Starts the closing handshake; the connection is dropped within a second. */
  close(code = 1000, reason = ""): void {
    if (this.readyState >= CLOSING) return;
    this.readyState = CLOSING;
    this.#sendClose(code, reason);
    this.#closeEvent = { code, reason };
    this.#closeTimer = setTimeout(() => this.#shutdown(), CLOSE_WAIT_MS);
  }

  /** Gives back large buffers of a connection that moved nothing since the last call. */
  trim(): void {
    if (this.#activity > 0) {
      this.#activity = 0;
      return;
    }
    if (!this.#writing && this.#outLen === 0 && this.#out.length > KEEP_IDLE) this.#out = EMPTY;
    if (this.#spare && this.#spare.length > KEEP_IDLE) this.#spare = undefined;
    this.#shrinkRead = true;
  }

  #sendClose(code: number, reason: string): void {
    if (this.#closeSent) return;
    this.#closeSent = true;
    const r = enc.encode(reason).subarray(0, 123);
    const p = new Uint8Array(2 + r.length);
    p[0] = code >> 8;
    p[1] = code & 0xff;
    p.set(r, 2);
    this.#frame(OP_CLOSE, p, true);
  }

  /**
   * Sends a binary message of `n` bytes that `fill` writes straight into the send buffer
   * (at `at` of `dst`): a sealed frame is encrypted in place there, not built and copied.
   */
  sendWith(n: number, fill: (dst: Uint8Array, at: number) => void): void {
    if (this.readyState !== OPEN) return;
    const at = this.#head(OP_BINARY, n, false);
    if (at < 0) return;
    fill(this.#out, at);
    this.#done(at, n);
  }

  /** Appends one final frame to the write buffer and starts writing. */
  #frame(opcode: number, payload: Uint8Array, force = false): void {
    const at = this.#head(opcode, payload.length, force);
    if (at < 0) return;
    this.#out.set(payload, at);
    this.#done(at, payload.length);
  }

  /** Reserves a frame of `n` payload bytes and writes its header; returns where the payload goes (-1: none). */
  #head(opcode: number, n: number, force: boolean): number {
    if (this.readyState !== OPEN && !force) return -1;
    if (this.readyState === CLOSED) return -1;
    const maskLen = this.#client ? 4 : 0;
    const h = (n < 126 ? 2 : n < 65536 ? 4 : 10) + maskLen;
    const at = this.#reserve(h + n);
    const o = this.#out;
    const maskBit = maskLen ? 0x80 : 0;
    o[at] = 0x80 | opcode;
    if (n < 126) {
      o[at + 1] = maskBit | n;
    } else if (n < 65536) {
      o[at + 1] = maskBit | 126;
      o[at + 2] = n >> 8;
      o[at + 3] = n & 0xff;
    } else {
      o[at + 1] = maskBit | 127;
      o.fill(0, at + 2, at + 6); // messages stay far below 4 GiB
      o[at + 6] = n >>> 24;
      o[at + 7] = (n >>> 16) & 0xff;
      o[at + 8] = (n >>> 8) & 0xff;
      o[at + 9] = n & 0xff;
    }
    this.#queued += h;
    this.#activity += h;
    return at + h;
  }

  /** The payload at `at` is in place: mask it (a client) and start writing. */
  #done(at: number, n: number): void {
    if (this.#client) {
      const key = at - 4;
      nextMaskKey(this.#out, key);
      xorMask(this.#out, at, at + n, key);
    }
    this.#queued += n;
    this.#activity += n;
    this.#flush();
  }

  /** Makes room for `n` more bytes in #out; returns where they go. */
  #reserve(n: number): number {
    const need = this.#outLen + n;
    if (need > this.#out.length) {
      let cap = Math.max(1024, this.#out.length * 2);
      while (cap < need) cap *= 2;
      const bigger = new Uint8Array(cap);
      bigger.set(this.#out.subarray(0, this.#outLen));
      this.#out = bigger;
    }
    const at = this.#outLen;
    this.#outLen = need;
    return at;
  }

  async #flush(): Promise<void> {
    if (this.#writing) return;
    this.#writing = true;
    try {
      while (this.#outLen > 0) {
        // Swap buffers: sends during the write fill the other one.
        const buf = this.#out, len = this.#outLen;
        this.#out = this.#spare ?? EMPTY;
        this.#spare = undefined;
        this.#outLen = 0;
        let off = 0;
        while (off < len) off += await this.#conn.write(buf.subarray(off, len));
        this.#queued -= len;
        this.#spare = buf;
      }
    } catch {
      this.#shutdown(1006, "connection lost");
    } finally {
      this.#writing = false;
    }
  }

  async #readLoop(leftover: Uint8Array): Promise<void> {
    let buf = new Uint8Array(Math.max(READ_MIN, leftover.length));
    buf.set(leftover);
    let start = 0;
    let end = leftover.length;
    let fragments: Uint8Array[] = [];
    let fragOpcode = 0;
    let fragSize = 0;
    try {
      for (;;) {
        // Handle every complete frame in buf[start, end).
        for (;;) {
          const avail = end - start;
          if (avail < 2) break;
          const b0 = buf[start], b1 = buf[start + 1];
          if (b0 & 0x70) throw new WsError("reserved bits set");
          const opcode = b0 & 0x0f;
          const fin = (b0 & 0x80) !== 0;
          const masked = (b1 & 0x80) !== 0;
          if (!this.#client && !masked) throw new WsError("unmasked frame from a client");
          let len = b1 & 0x7f;
          let hdr = 2;
          if (len === 126) {
            if (avail < 4) break;
            len = (buf[start + 2] << 8) | buf[start + 3];
            hdr = 4;
          } else if (len === 127) {
            if (avail < 10) break;
            const dv = new DataView(buf.buffer, buf.byteOffset + start + 2, 8);
            if (dv.getUint32(0) !== 0) throw new WsError("frame too large");
            len = dv.getUint32(4);
            hdr = 10;
          }
          if (len > this.#maxMessage) throw new WsError("frame too large");
          if (opcode >= 0x8 && (len > 125 || !fin)) throw new WsError("bad control frame");
          const maskAt = start + hdr;
          if (masked) hdr += 4;
          if (avail < hdr + len) {
            if (hdr + len > buf.length - start) {
              // The frame does not fit where it starts: move it to the front of a big enough buffer.
              if (hdr + len > buf.length) {
                const bigger = new Uint8Array(hdr + len);
                bigger.set(buf.subarray(start, end));
                buf = bigger;
              } else {
                buf.copyWithin(0, start, end);
              }
              end -= start;
              start = 0;
            }
            break;
          }
          const p0 = start + hdr, p1 = p0 + len;
          if (masked) unmask(buf, p0, p1, maskAt);
          start = p1;
          this.#activity += hdr + len;
          if (opcode >= 0x8) {
            const payload = buf.subarray(p0, p1);
            if (opcode === OP_CLOSE) {
              const code = payload.length >= 2 ? (payload[0] << 8) | payload[1] : 1005;
              const reason = payload.length > 2 ? decodeText(payload.subarray(2)) : "";
              this.#closeEvent ??= { code, reason };
              this.#sendClose(code === 1005 ? 1000 : code, "");
              await this.#drainWrites();
              this.#shutdown();
              return;
            }
            if (opcode === OP_PING) this.#frame(OP_PONG, payload);
            else if (opcode !== OP_PONG) throw new WsError(`bad opcode ${opcode}`);
            continue;
          }
          if (opcode === OP_CONT) {
            if (!fragOpcode) throw new WsError("continuation without a start");
            fragSize += len;
            if (fragSize > this.#maxMessage) throw new WsError("message too large");
            fragments.push(buf.slice(p0, p1));
            if (!fin) continue;
            const whole = concatBytes(fragments);
            const op = fragOpcode;
            fragments = [];
            fragOpcode = 0;
            fragSize = 0;
            this.#deliver(op, whole, 0, whole.length, true);
          } else if (opcode !== OP_TEXT && opcode !== OP_BINARY) {
            throw new WsError(`bad opcode ${opcode}`);
          } else if (fragOpcode) {
            throw new WsError("new message inside a fragmented one");
          } else if (!fin) {
            fragOpcode = opcode;
            fragments = [buf.slice(p0, p1)];
            fragSize = len;
          } else {
            this.#deliver(opcode, buf, p0, p1, false);
          }
          if (this.readyState === CLOSED) return;
        }
        if (start === end) {
          start = end = 0;
          if (this.#shrinkRead && buf.length > READ_MIN) buf = new Uint8Array(READ_MIN);
          this.#shrinkRead = false;
        } else if (buf.length - end < READ_MIN / 2) {
          buf.copyWithin(0, start, end);
          end -= start;
          start = 0;
        }
        const room = buf.length - end;
        const n = await this.#conn.read(buf.subarray(end));
        if (n === null) break;
        end += n;
        if (n === room && buf.length < READ_MAX) {
          // The read filled the buffer: this connection is busy, read more at a time.
          const bigger = new Uint8Array(Math.min(READ_MAX, buf.length * 2));
          bigger.set(buf.subarray(start, end));
          buf = bigger;
          end -= start;
          start = 0;
        }
      }
      this.#shutdown(1006, "connection closed by the peer");
    } catch (e) {
      if (!(e instanceof WsError)) {
        this.#shutdown(1006, `connection lost: ${(e as Error).message}`);
        return;
      }
      // Tell the peer why (1009: too big, 1002: protocol error), then drop it.
      const code = /too large/.test(e.message) ? 1009 : 1002;
      const reason = `protocol error: ${e.message}`;
      this.#closeEvent ??= { code, reason };
      this.#sendClose(code, reason);
      await this.#drainWrites();
      this.#shutdown();
    }
  }

  #deliver(opcode: number, buf: Uint8Array, p0: number, p1: number, owned: boolean): void {
    let data: string | Uint8Array;
    if (opcode === OP_TEXT) data = decodeText(buf.subarray(p0, p1));
    else if (owned || this.#borrow) data = buf.subarray(p0, p1);
    else data = buf.slice(p0, p1);
    if (this.#onmessage) {
      this.#onmessage({ data });
    } else {
      // Kept for a handler to come: a borrowed view would not stay valid.
      const borrowed = typeof data !== "string" && this.#borrow && !owned;
      this.#early.push(borrowed ? (data as Uint8Array).slice() : data);
    }
  }

  async #drainWrites(): Promise<void> {
    for (let i = 0; i < 100 && (this.#writing || this.#outLen > 0); i++) {
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  #shutdown(code = 1006, reason = ""): void {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    clearTimeout(this.#closeTimer);
    try {
      this.#conn.close();
    } catch { /* already closed */ }
    this.#out = EMPTY;
    this.#outLen = 0;
    this.#spare = undefined;
    this.#queued = 0;
    const ev = this.#closeEvent ?? { code, reason };
    this.onclose?.(ev);
  }
}

function unmask(buf: Uint8Array, p0: number, p1: number, keyAt: number): void {
  xorMask(buf, p0, p1, keyAt);
}

/** Random mask keys, drawn in bulk: one getRandomValues call per 1024 frames. */
const maskPool = new Uint8Array(4096);
let maskAt = maskPool.length;

/** Writes a fresh, unpredictable 4-byte mask key at `buf[at]`. */
function nextMaskKey(buf: Uint8Array, at: number): void {
  if (maskAt === maskPool.length) {
    crypto.getRandomValues(maskPool);
    maskAt = 0;
  }
  buf.set(maskPool.subarray(maskAt, maskAt + 4), at);
  maskAt += 4;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * XORs `buf[p0..p1)` with the 4-byte key at `buf[keyAt]` (RFC 6455 §5.3), which
 * masks and unmasks alike: bytewise up to a word boundary, then 32 bits at a time.
 */
export function xorMask(buf: Uint8Array, p0: number, p1: number, keyAt: number): void {
  const k = [buf[keyAt], buf[keyAt + 1], buf[keyAt + 2], buf[keyAt + 3]];
  if ((k[0] | k[1] | k[2] | k[3]) === 0) return;
  let i = p0;
  const base = buf.byteOffset;
  if (LITTLE_ENDIAN) {
    while (i < p1 && ((base + i) & 3) !== 0) {
      buf[i] ^= k[(i - p0) & 3];
      i++;
    }
    const words = (p1 - i) >> 2;
    if (words > 0) {
      const ph = (i - p0) & 3;
      const w = (k[ph] | (k[(ph + 1) & 3] << 8) | (k[(ph + 2) & 3] << 16) |
        (k[(ph + 3) & 3] << 24)) >>> 0;
      const u32 = new Uint32Array(buf.buffer, base + i, words);
      for (let j = 0; j < words; j++) u32[j] ^= w;
      i += words * 4;
    }
  }
  for (; i < p1; i++) buf[i] ^= k[(i - p0) & 3];
}

function decodeText(bytes: Uint8Array): string {
  try {
    return dec.decode(bytes);
  } catch {
    throw new WsError("text message is not UTF-8");
  }
}
