/**
 * Binary frames: the hot path. Everything that carries bytes of a stream or
 * grants flow-control credit is a binary WebSocket message with a fixed
 * little-endian header; control messages are JSON text (see messages.ts).
 *
 *   DATA   [u8 type=1][u8 channel][u16 0][u32 sid][u32 offset_hi][u32 offset_lo][payload…]
 *   CREDIT [u8 type=2][u8 channel][u16 0][u32 sid][u32 bytes]
 *
 * `offset` is the absolute byte offset of the payload's first byte within its
 * channel, so a reader that reconnects can ask for "everything after N".
 */
import { ProtocolError } from "./messages.ts";
import { TAG_BYTES } from "./e2e.ts";

export const FRAME_DATA = 1;
export const FRAME_CREDIT = 2;

/** Channels of a stream. PTY output travels on STDOUT. */
export const CH_STDIN = 0;
export const CH_STDOUT = 1;
export const CH_STDERR = 2;

export const DATA_HEADER = 16;
export const CREDIT_SIZE = 12;

/** Largest payload one DATA frame may carry. */
export const MAX_DATA_PAYLOAD = 256 * 1024;
/** Largest binary message accepted on any connection: a full payload, sealed (e2e.ts). */
export const MAX_BINARY_MESSAGE = DATA_HEADER + MAX_DATA_PAYLOAD + TAG_BYTES;

const TWO32 = 0x1_0000_0000;

export type Frame =
  | { type: typeof FRAME_DATA; channel: number; sid: number; offset: number; payload: Uint8Array }
  | { type: typeof FRAME_CREDIT; channel: number; sid: number; bytes: number };

/** Builds a DATA frame in a new buffer; copies `payload` once, behind the header. */
export function encodeData(
  sid: number,
  channel: number,
  offset: number,
  payload: Uint8Array,
): Uint8Array {
  const out = new Uint8Array(DATA_HEADER + payload.length);
  writeDataHeader(out, 0, sid, channel, offset);
  out.set(payload, DATA_HEADER);
  return out;
}

/**
 * Writes a DATA header into `out` at `at`, byte by byte (no view made): type, channel, two
 * zero bytes, then sid, the offset's high and low 32 bits, each little-endian.
 */
export function writeDataHeader(
  out: Uint8Array,
  at: number,
  sid: number,
  channel: number,
  offset: number,
): void {
  const hi = Math.floor(offset / TWO32), lo = offset % TWO32;
  out[at] = FRAME_DATA;
  out[at + 1] = channel;
  out[at + 2] = 0;
  out[at + 3] = 0;
  for (let i = 0; i < 4; i++) {
    out[at + 4 + i] = (sid >>> (8 * i)) & 0xff;
    out[at + 8 + i] = (hi >>> (8 * i)) & 0xff;
    out[at + 12 + i] = (lo >>> (8 * i)) & 0xff;
  }
}

/** Where the payload starts in a buffer meant for `dataFrameInPlace`. */
export const DATA_FRAME_PREFIX = DATA_HEADER;

/**
 * The no-copy path: `payload` was read straight into a buffer at offset
 * ≥ DATA_FRAME_PREFIX, whose bytes before it are free. Writes the DATA header
 * there and returns the whole frame, a view of the same buffer.
 */
export function dataFrameInPlace(
  payload: Uint8Array,
  sid: number,
  channel: number,
  offset: number,
): Uint8Array {
  if (payload.byteOffset < DATA_FRAME_PREFIX) throw new RangeError("no headroom before payload");
  const frame = new Uint8Array(
    payload.buffer,
    payload.byteOffset - DATA_HEADER,
    DATA_HEADER + payload.length,
  );
  writeDataHeader(frame, 0, sid, channel, offset);
  return frame;
}

export function encodeCredit(sid: number, channel: number, bytes: number): Uint8Array {
  const out = new Uint8Array(CREDIT_SIZE);
  const dv = new DataView(out.buffer);
  dv.setUint8(0, FRAME_CREDIT);
  dv.setUint8(1, channel);
  dv.setUint32(4, sid, true);
  dv.setUint32(8, bytes, true);
  return out;
}

/** Parses a binary message; throws ProtocolError on anything malformed. */
export function decodeFrame(buf: Uint8Array): Frame {
  if (buf.length < CREDIT_SIZE) throw new ProtocolError(`binary frame too short (${buf.length})`);
  if (buf.length > MAX_BINARY_MESSAGE) {
    throw new ProtocolError(`binary frame too large (${buf.length} > ${MAX_BINARY_MESSAGE})`);
  }
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const type = dv.getUint8(0);
  const channel = dv.getUint8(1);
  if (channel > CH_STDERR) throw new ProtocolError(`bad channel ${channel}`);
  if (dv.getUint16(2, true) !== 0) throw new ProtocolError("reserved header bits set");
  const sid = dv.getUint32(4, true);
  if (type === FRAME_DATA) {
    if (buf.length < DATA_HEADER) throw new ProtocolError("data frame too short");
    const offset = dv.getUint32(8, true) * TWO32 + dv.getUint32(12, true);
    if (offset > Number.MAX_SAFE_INTEGER) throw new ProtocolError("offset out of range");
    return { type, channel, sid, offset, payload: buf.subarray(DATA_HEADER) };
  }
  if (type === FRAME_CREDIT) {
    if (buf.length !== CREDIT_SIZE) throw new ProtocolError("credit frame has wrong size");
    return { type, channel, sid, bytes: dv.getUint32(8, true) };
  }
  throw new ProtocolError(`unknown frame type ${type}`);
}

/** Rewrites the stream id of an encoded frame in place (the relay's routing step). */
export function setFrameSid(buf: Uint8Array, sid: number): void {
  new DataView(buf.buffer, buf.byteOffset, buf.byteLength).setUint32(4, sid, true);
}
