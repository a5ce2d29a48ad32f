/** A stand-in for a Conn: records what the agent side sends, decoded. */
import type { Conn } from "../../src/protocol/conn.ts";
import { decodeFrame, FRAME_DATA } from "../../src/protocol/frames.ts";
import type { Control } from "../../src/protocol/messages.ts";

export interface Sent {
  controls: Control[];
  /** close() and fail() calls, as [code, reason]. */
  closed: [number, string][];
  /** DATA frames as [channel, offset, text]. */
  data: [number, number, string][];
  credits: [number, number][];
}

export function fakeConn(): { conn: Conn; sent: Sent } {
  const sent: Sent = { controls: [], data: [], credits: [], closed: [] };
  const dec = new TextDecoder();
  const conn = {
    isOpen: true,
    send(msg: Control) {
      sent.controls.push(structuredClone(msg));
    },
    sendBinary(buf: Uint8Array) {
      const f = decodeFrame(buf.slice());
      if (f.type === FRAME_DATA) sent.data.push([f.channel, f.offset, dec.decode(f.payload)]);
      else sent.credits.push([f.channel, f.bytes]);
    },
    drain: () => Promise.resolve(),
    // Heartbeats are Conn's own business (wire_test.ts).
    probeIdleAfter() {},
    wake() {},
    close(code = 1000, reason = "") {
      sent.closed.push([code, reason]);
    },
    fail(code: number, err: { message: string }) {
      sent.closed.push([code, err.message]);
    },
    // As Conn.guard: a protocol error closes the connection (here: recorded as closed).
    guard(fn: () => void) {
      try {
        fn();
      } catch (e) {
        sent.closed.push([4002, (e as Error).message]);
      }
    },
  };
  return { conn: conn as unknown as Conn, sent };
}

/** A view with 16 bytes of room in front, as read loops hand data to a Fanout. */
export function framed(text: string): Uint8Array {
  const bytes = new TextEncoder().encode(text);
  const buf = new Uint8Array(16 + bytes.length);
  buf.set(bytes, 16);
  return buf.subarray(16);
}
