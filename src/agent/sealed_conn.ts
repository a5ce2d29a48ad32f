/**
 * The agent's end of an end-to-end stream: what its exec, session attachment or TCP
 * forward sends goes out sealed (protocol/e2e_stream.ts), so the stream's code is the same
 * sealed or not.
 */
import type { Conn, StreamConn } from "../protocol/conn.ts";
import type { Transport } from "../protocol/e2e.ts";
import {
  isDataFrame,
  sealControl,
  type SealedMeta,
  sealedSize,
  sealFrameInto,
} from "../protocol/e2e_stream.ts";
import type { Control } from "../protocol/messages.ts";

export class SealedConn implements StreamConn {
  constructor(
    private readonly conn: Conn,
    readonly sid: number,
    readonly transport: Transport,
    /** Called once the stream's last message (an exit or error) is sent. */
    private readonly ended: () => void = () => {},
  ) {}

  get isOpen(): boolean {
    return this.conn.isOpen;
  }

  drain(highWater?: number): Promise<void> {
    return this.conn.drain(highWater);
  }

  send(msg: Control): void {
    if (!("sid" in msg) || msg.sid !== this.sid) {
      throw new Error(`sealed stream ${this.sid} sent '${msg.t}'`);
    }
    // What the relay may know: a started's window and session, that the stream ended.
    const meta: SealedMeta = msg.t === "started"
      ? { window: msg.window, ...(msg.session ? { session: msg.session } : {}) }
      : msg.t === "exit"
      ? { end: "exit" }
      : msg.t === "error"
      ? { end: msg.code }
      : {};
    this.conn.send(sealControl(this.transport, msg, this.sid, meta));
    if (meta.end !== undefined) this.ended();
  }

  sendBinary(buf: Uint8Array): void {
    if (!isDataFrame(buf)) return this.conn.sendBinary(buf);
    // Sealed straight into the socket's buffer.
    this.conn.sendBinaryWith(
      sealedSize(buf),
      (dst, at) => sealFrameInto(this.transport, buf, dst, at),
    );
  }

  sendBinaryWith(n: number, fill: (dst: Uint8Array, at: number) => void): void {
    const buf = new Uint8Array(n);
    fill(buf, 0);
    this.sendBinary(buf);
  }
}
