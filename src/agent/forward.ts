/**
 * A `tcp` stream on the agent (`tether forward`, `tether proxy`): a TCP connection the agent
 * makes to HOST:PORT as seen from its machine, carried as one stream — what the client sends
 * on stdin (channel 0) is written to the socket, what the socket gives is sent on stdout
 * (channel 1), each direction under its credit window. Half-close travels both ways: the
 * client's `eof` shuts the socket's write side; the socket's end of input is an `eof` to the
 * client. Once both directions ended the stream ends with `exit` 0; a connection that cannot
 * be made or breaks ends it with `forward_failed`.
 *
 * Unlike an exec, nothing outlives the stream: a lost client closes the connection, as a
 * dropped `ssh -L` does.
 */
import { writeAll } from "../common/bytes.ts";
import type { StreamConn } from "../protocol/conn.ts";
import { Credit, Grant, STDIN_WINDOW } from "../protocol/flow.ts";
import {
  CH_STDIN,
  CH_STDOUT,
  DATA_FRAME_PREFIX,
  dataFrameInPlace,
  encodeCredit,
} from "../protocol/frames.ts";
import type { Open, WireError } from "../protocol/messages.ts";
import { parseTarget } from "../protocol/target.ts";
import { inputPool } from "./input_pool.ts";

/** Largest read from the socket: the largest DATA frame (MAX_DATA_PAYLOAD). */
const READ_SIZE = 256 * 1024;
/** How long the agent waits for the TCP connection before it says it failed. */
const CONNECT_TIMEOUT_MS = 10_000;

export class TcpStream {
  private tcp?: Deno.TcpConn;
  /** What the client still takes on stdout. */
  private readonly credit: Credit;
  /** Stdin bytes written to the socket, granted back in batches. */
  private readonly grant: Grant;
  private writes: Promise<void> = Promise.resolve();
  private outOffset = 0;
  private inEnded = false;
  private outEnded = false;
  private ended = false;
  /** Aborts a connection attempt still under way when the stream goes. */
  private readonly connecting = new AbortController();

  constructor(
    private readonly conn: StreamConn,
    private readonly sid: number,
    open: Open,
    private readonly done: () => void,
  ) {
    this.credit = new Credit(open.window);
    this.grant = new Grant(
      STDIN_WINDOW,
      (n) => this.conn.sendBinary(encodeCredit(this.sid, CH_STDIN, n)),
    );
  }

  /** Makes the connection; answers `started` or the failure. */
  async start(target: string | undefined): Promise<void> {
    const addr = target ? parseTarget(target) : undefined;
    if (!addr) {
      return this.fail({ code: "usage", message: `not a HOST:PORT to forward to: '${target}'` });
    }
    const ac = this.connecting;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ac.abort();
    }, CONNECT_TIMEOUT_MS);
    try {
      this.tcp = await Deno.connect({ ...addr, signal: ac.signal });
    } catch (e) {
      if (this.ended) return;
      const why = timedOut
        ? `no answer within ${CONNECT_TIMEOUT_MS / 1000} s`
        : (e as Error).message.replace(/ \(os error \d+\)$/, "");
      return this.fail({
        code: "forward_failed",
        message: `the machine cannot connect to ${target}: ${why}`,
        hint: "check that something listens there, as seen from the machine (not from here)",
      });
    } finally {
      clearTimeout(timer);
    }
    if (this.ended) {
      this.tcp.close();
      return;
    }
    this.tcp.setNoDelay(true);
    this.conn.send({ t: "started", sid: this.sid, window: STDIN_WINDOW });
    this.pump();
  }

  /** Socket → client, as the client's credit allows. */
  private async pump(): Promise<void> {
    const tcp = this.tcp!;
    const buf = new Uint8Array(DATA_FRAME_PREFIX + READ_SIZE);
    try {
      for (;;) {
        await this.credit.wait();
        if (this.ended) return;
        const room = Math.min(READ_SIZE, this.credit.available);
        const into = buf.subarray(DATA_FRAME_PREFIX, DATA_FRAME_PREFIX + room);
        const n = await tcp.read(into);
        if (this.ended) return;
        if (n === null) break;
        const frame = dataFrameInPlace(into.subarray(0, n), this.sid, CH_STDOUT, this.outOffset);
        this.outOffset += n;
        this.credit.take(n);
        this.conn.sendBinary(frame);
      }
      this.conn.send({ t: "eof", sid: this.sid });
      this.outEnded = true;
      this.finishIfDone();
    } catch (e) {
      this.broken(e);
    }
  }

  onStdin(payload: Uint8Array, _offset: number): void {
    const data = inputPool.copy(payload); // a view of the read buffer, valid only now
    this.writes = this.writes.then(async () => {
      if (this.ended || !this.tcp) return;
      await writeAll(this.tcp, data);
      this.grant.consumed(data.length);
    }).catch((e) => this.broken(e)).finally(() => inputPool.give(data));
  }

  onEof(): void {
    this.writes = this.writes.then(async () => {
      if (this.ended || !this.tcp) return;
      await this.tcp.closeWrite();
      this.inEnded = true;
      this.finishIfDone();
    }).catch((e) => this.broken(e));
  }

  onCredit(bytes: number): void {
    this.credit.add(bytes);
  }

  onSignal(_sig: string): void {}
  onResize(_cols: number, _rows: number): void {}

  /** The client left (or the relay link broke): the connection goes with it. */
  abort(): void {
    this.close();
  }

  private finishIfDone(): void {
    if (!this.inEnded || !this.outEnded || this.ended) return;
    this.conn.send({ t: "exit", sid: this.sid, code: 0 });
    this.close();
  }

  private broken(e: unknown): void {
    if (this.ended) return;
    this.fail({
      code: "forward_failed",
      message: `the forwarded connection broke: ${(e as Error).message}`,
    });
  }

  private fail(err: WireError): void {
    if (this.ended) return;
    this.conn.send({ t: "error", sid: this.sid, ...err });
    this.close();
  }

  private close(): void {
    if (this.ended) return;
    this.ended = true;
    this.connecting.abort();
    this.credit.close();
    try {
      this.tcp?.close();
    } catch { /* already closed */ }
    this.done();
  }
}
