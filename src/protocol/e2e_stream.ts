/**
 * What a stream's transport keys seal, on both ends (client and agent):
 *
 * - DATA frames: the payload becomes ciphertext and a 16-byte tag; the header stays in
 *   the clear (the relay routes by it and counts bytes) but is the associated data,
 *   stream id aside (the relay rewrites it), so a moved offset or channel does not open.
 * - Stream messages (`open`, `started`, `exit`, `resize`, …): the JSON of the message
 *   without its `sid` goes sealed in `{t:"sealed", sid, box}`, with what the relay may
 *   know beside it (`window`, `session`, `end`).
 *
 * One counter per direction runs over both (e2e.ts), so the order of frames and messages
 * in a direction is checked as a whole.
 */
import { DATA_HEADER, FRAME_DATA, writeDataHeader } from "./frames.ts";
import { fromBase64, TAG_BYTES, toBase64, type Transport } from "./e2e.ts";
import type { ErrorCode } from "../common/errors.ts";
import { checkControl, type Control, ProtocolError, type Sealed } from "./messages.ts";

const AD_CONTROL = Uint8Array.of(0xff);

/**
 * The errors the relay itself may end a sealed stream with, in the clear: none claims that
 * anything ran. Any other error of a sealed stream must come sealed from the agent. (The
 * share page gets this list from /s/tether.js.)
 */
export const CLEAR_ERRORS: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  "machine_not_found",
  "machine_offline",
  "session_lost",
  "relay_unavailable",
  "rate_limited",
  "forbidden",
  "integrity",
  "internal",
]);
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One buffer for the associated data of every DATA frame (each use takes it at once). */
const FRAME_AD = new Uint8Array(new ArrayBuffer(12));

/** The associated data of a DATA frame: its header without the stream id. */
function frameAd(header: Uint8Array, at = 0): Uint8Array {
  for (let i = 0; i < 4; i++) FRAME_AD[i] = header[at + i];
  for (let i = 8; i < DATA_HEADER; i++) FRAME_AD[i - 4] = header[at + i];
  return FRAME_AD;
}

/** The size of a DATA frame (header + plaintext) sealed: header + sealed payload. */
export function sealedSize(frame: Uint8Array): number {
  return frame.length + TAG_BYTES;
}

/** Seals a DATA frame into `out` at `at` (sealedSize(frame) bytes): the socket's own buffer. */
export function sealFrameInto(t: Transport, frame: Uint8Array, out: Uint8Array, at: number): void {
  for (let i = 0; i < DATA_HEADER; i++) out[at + i] = frame[i];
  t.sealInto(frameAd(frame), frame.subarray(DATA_HEADER), out, at + DATA_HEADER);
}

/** The size of `payload` sent as a sealed DATA frame. */
export function sealedDataSize(payload: Uint8Array): number {
  return DATA_HEADER + payload.length + TAG_BYTES;
}

/**
 * Writes a sealed DATA frame for `payload` into `out` at `at` (sealedDataSize bytes): the
 * header (writeDataHeader) and the sealed payload, with no frame built in between.
 */
export function sealDataInto(
  t: Transport,
  sid: number,
  channel: number,
  offset: number,
  payload: Uint8Array,
  out: Uint8Array,
  at: number,
): void {
  writeDataHeader(out, at, sid, channel, offset);
  t.sealInto(frameAd(out, at), payload, out, at + DATA_HEADER);
}

/** The plaintext of a sealed DATA frame; throws IntegrityError. */
export function openFrame(t: Transport, raw: Uint8Array): Uint8Array {
  return t.open(frameAd(raw), raw.subarray(DATA_HEADER));
}

/** True for a DATA frame (the only frames sealed: credit is flow control, in the clear). */
export function isDataFrame(raw: Uint8Array): boolean {
  return raw[0] === FRAME_DATA;
}

/** What the relay may see of a sealed message, chosen by the sender. */
export type SealedMeta = Pick<Sealed, "window" | "session" | "end">;

/** Seals one stream message (its `sid` is the envelope's). */
export function sealControl(
  t: Transport,
  msg: Control & { sid?: number },
  sid: number,
  meta: SealedMeta = {},
): Sealed {
  const { sid: _sid, ...inner } = msg;
  const box = t.seal(AD_CONTROL, encoder.encode(JSON.stringify(inner)));
  return { t: "sealed", sid, box: toBase64(box), ...meta };
}

/**
 * Opens a sealed message and checks it as any control message, with the envelope's
 * `sid`. Throws IntegrityError when it does not open, ProtocolError when what opened is
 * not a valid message (the peer itself is broken).
 */
export function openControl(t: Transport, msg: Sealed): Control {
  let box: Uint8Array;
  try {
    box = fromBase64(msg.box);
  } catch {
    throw new ProtocolError("sealed: box is not base64");
  }
  const plain = t.open(AD_CONTROL, box);
  let o: unknown;
  try {
    o = JSON.parse(decoder.decode(plain));
  } catch {
    throw new ProtocolError("sealed: not JSON inside");
  }
  if (!o || typeof o !== "object" || Array.isArray(o)) {
    throw new ProtocolError("sealed: not an object inside");
  }
  return checkControl({ ...o, sid: msg.sid });
}

/** What both ends of a stream's handshake mix in first: the protocol and the machine's id. */
export function e2ePrologue(machineId: string): Uint8Array {
  return encoder.encode(`tether-e2e-v1 ${machineId}`);
}
