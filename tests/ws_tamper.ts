/**
 * A hostile middle for end-to-end tests: a TCP proxy that understands WebSocket frames
 * (RFC 6455), put between the relay and an agent or a client. It records every message
 * (unmasked) both ways, as a capture of what the relay sees, and can tamper with one DATA
 * frame of a chosen direction: flip a byte, drop it, replay it, put a frame of its own
 * before it, or put a control message of its own before it.
 *
 * "up" is from the dialer (agent or client) to the relay: masked frames; "down" is from
 * the relay to the dialer: unmasked.
 */
import { concatBytes } from "../src/common/bytes.ts";

export type Direction = "up" | "down";
export type Tamper =
  | { mode: "flip" | "drop" | "replay" | "inject"; direction: Direction; nth: number }
  | { mode: "text"; direction: Direction; nth: number; text: (sid: number) => string };

const FRAME_DATA = 1;

export class WsTamperProxy {
  private readonly listener: Deno.TcpListener;
  readonly port: number;
  /** Every message's payload, unmasked, both ways, in arrival order per direction. */
  readonly captured: Record<Direction, Uint8Array[]> = { up: [], down: [] };
  private tamper?: Tamper & { seen: number; done: boolean };
  private readonly conns = new Set<Deno.TcpConn>();
  /** Resolves when the tampering happened. */
  tampered: Promise<void>;
  private markTampered!: () => void;

  constructor(private readonly target: { hostname: string; port: number }) {
    this.listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = (this.listener.addr as Deno.NetAddr).port;
    this.tampered = new Promise((r) => (this.markTampered = r));
    this.accept();
  }

  /** Tampers with the `nth` DATA frame (1-based) seen in `direction` from now on. */
  arm(t: Tamper): void {
    this.tamper = { ...t, seen: 0, done: false };
    this.tampered = new Promise((r) => (this.markTampered = r));
  }

  /** Everything captured in both directions, as one byte string (to search). */
  all(): Uint8Array {
    return concatBytes([...this.captured.up, ...this.captured.down]);
  }

  private async accept(): Promise<void> {
    for await (const inbound of this.listener) {
      let outbound: Deno.TcpConn;
      try {
        outbound = await Deno.connect(this.target);
      } catch {
        inbound.close();
        continue;
      }
      inbound.setNoDelay(true);
      outbound.setNoDelay(true);
      this.conns.add(inbound);
      this.conns.add(outbound);
      const end = () => {
        for (const c of [inbound, outbound]) {
          this.conns.delete(c);
          try {
            c.close();
          } catch { /* closed */ }
        }
      };
      Promise.all([
        this.pump(inbound, outbound, "up").catch(() => {}),
        this.pump(outbound, inbound, "down").catch(() => {}),
      ]).finally(end);
    }
  }

  private async pump(from: Deno.TcpConn, to: Deno.TcpConn, dir: Direction): Promise<void> {
    let buf: Uint8Array = new Uint8Array(0);
    let upgraded = false;
    let raw = false;
    const chunk = new Uint8Array(64 * 1024);
    const write = async (b: Uint8Array) => {
      let off = 0;
      while (off < b.length) off += await to.write(b.subarray(off));
    };
    for (;;) {
      const n = await from.read(chunk);
      if (n === null) {
        try {
          to.closeWrite();
        } catch { /* gone */ }
        return;
      }
      if (raw) {
        await write(chunk.subarray(0, n));
        continue;
      }
      buf = concat(buf, chunk.subarray(0, n));
      if (!upgraded) {
        // The HTTP head goes through as it is; only an upgrade goes on as WebSocket frames
        // (a plain request, for the page or its files, is passed on raw).
        const end = indexOf(buf, "\r\n\r\n");
        if (end < 0) continue;
        const head = new TextDecoder().decode(buf.subarray(0, end)).toLowerCase();
        await write(buf.subarray(0, end + 4));
        buf = buf.subarray(end + 4);
        upgraded = true;
        if (
          dir === "up" ? !head.includes("upgrade: websocket") : !head.startsWith("http/1.1 101")
        ) {
          raw = true;
          if (buf.length) await write(buf);
          continue;
        }
      }
      for (;;) {
        const f = parseFrame(buf);
        if (!f) break;
        buf = buf.subarray(f.length);
        for (const out of this.onFrame(f, dir)) await write(out);
      }
    }
  }

  /** What goes on for one frame: itself, or what the tampering makes of it. */
  private onFrame(f: WsFrame, dir: Direction): Uint8Array[] {
    const payload = f.payload();
    this.captured[dir].push(payload);
    const t = this.tamper;
    const isData = f.opcode === 2 && payload[0] === FRAME_DATA;
    if (!t || t.done || t.direction !== dir || !isData || ++t.seen !== t.nth) return [f.raw];
    t.done = true;
    this.markTampered();
    const sid = new DataView(payload.buffer, payload.byteOffset).getUint32(4, true);
    switch (t.mode) {
      case "flip": {
        const raw = f.raw.slice();
        raw[raw.length - 20] ^= 0x01; // a byte of the payload (masked or not, it flips)
        return [raw];
      }
      case "drop":
        return [];
      case "replay":
        return [f.raw, f.raw];
      case "inject": {
        const forged = payload.slice();
        crypto.getRandomValues(forged.subarray(16));
        return [encodeFrame(2, forged, dir === "up"), f.raw];
      }
      case "text":
        return [encodeFrame(1, new TextEncoder().encode(t.text(sid)), dir === "up"), f.raw];
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }

  close(): void {
    try {
      this.listener.close();
    } catch { /* closed */ }
    for (const c of this.conns) {
      try {
        c.close();
      } catch { /* closed */ }
    }
  }
}

interface WsFrame {
  opcode: number;
  length: number;
  raw: Uint8Array;
  payload(): Uint8Array;
}

function parseFrame(b: Uint8Array): WsFrame | undefined {
  if (b.length < 2) return undefined;
  const opcode = b[0] & 0x0f;
  const masked = (b[1] & 0x80) !== 0;
  let len = b[1] & 0x7f;
  let at = 2;
  if (len === 126) {
    if (b.length < 4) return undefined;
    len = (b[2] << 8) | b[3];
    at = 4;
  } else if (len === 127) {
    if (b.length < 10) return undefined;
    len = Number(new DataView(b.buffer, b.byteOffset + 2, 8).getBigUint64(0));
    at = 10;
  }
  const maskAt = at;
  if (masked) at += 4;
  if (b.length < at + len) return undefined;
  const raw = b.slice(0, at + len);
  return {
    opcode,
    length: at + len,
    raw,
    payload() {
      const p = raw.slice(at);
      if (masked) { for (let i = 0; i < p.length; i++) p[i] ^= raw[maskAt + (i & 3)]; }
      return p;
    },
  };
}

/** One final frame; masked with a zero key (so the payload is as given) when `masked`. */
function encodeFrame(opcode: number, payload: Uint8Array, masked: boolean): Uint8Array {
  const head: number[] = [0x80 | opcode];
  const m = masked ? 0x80 : 0;
  if (payload.length < 126) head.push(m | payload.length);
  else if (payload.length < 65536) head.push(m | 126, payload.length >> 8, payload.length & 0xff);
  else {
    head.push(m | 127);
    const l = new Uint8Array(8);
    new DataView(l.buffer).setBigUint64(0, BigInt(payload.length));
    head.push(...l);
  }
  if (masked) head.push(0, 0, 0, 0);
  return concat(new Uint8Array(head), payload);
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** Where `s` first occurs in `b`, or -1. */
function indexOf(b: Uint8Array, s: string): number {
  const pat = new TextEncoder().encode(s);
  outer: for (let i = 0; i + pat.length <= b.length; i++) {
    for (let j = 0; j < pat.length; j++) if (b[i + j] !== pat[j]) continue outer;
    return i;
  }
  return -1;
}

/** Whether `needle` occurs in `hay`. */
export function contains(hay: Uint8Array, needle: string): boolean {
  return indexOf(hay, needle) >= 0;
}
