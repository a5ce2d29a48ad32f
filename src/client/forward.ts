/**
 * The client half of a `tcp` stream (`tether forward`, `tether proxy`): a local byte stream
 * (an accepted TCP connection, or stdin/stdout) carried to HOST:PORT as seen from the
 * machine. Each direction runs under its credit window; the end of local input is sent as
 * `eof` and the remote's `eof` shuts the local write side, so half-closed protocols work.
 * Resolves when both sides ended; rejects with the stream's error (`forward_failed` when
 * the machine could not connect, `session_lost` when the relay connection went).
 */
import { TetherError } from "../common/errors.ts";
import { Credit, Grant, OUTPUT_WINDOW } from "../protocol/flow.ts";
import { CH_STDIN, CH_STDOUT, DATA_FRAME_PREFIX, encodeCredit } from "../protocol/frames.ts";
import { writeAll } from "../common/bytes.ts";
import type { RelayClient, StreamAuth } from "./relay_client.ts";

/** The local end: what is read is sent, what arrives is written. */
export interface LocalEnd {
  read(buf: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  /** Our sending side is done (the remote sent eof). */
  closeWrite(): Promise<void>;
}

const READ_SIZE = 256 * 1024;

export function forwardStream(
  client: RelayClient,
  opts: { machineId: string; target: string; auth?: StreamAuth },
  local: LocalEnd,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let sid = 0;
    let credit: Credit | undefined;
    let writes: Promise<void> = Promise.resolve();
    let ended = false;
    const grant = new Grant(
      OUTPUT_WINDOW,
      (n) => client.conn.sendBinary(encodeCredit(sid, CH_STDOUT, n)),
    );
    const end = (err?: TetherError) => {
      if (ended) return;
      ended = true;
      credit?.close();
      if (err) reject(err);
      else resolve();
    };
    const abandon = (e: unknown) => {
      if (ended) return;
      client.closeStream(sid, "lost");
      end(e instanceof TetherError ? e : new TetherError("forward_failed", (e as Error).message));
    };
    // Local → machine, as the agent's credit allows.
    const pump = async (c: Credit) => {
      const buf = new Uint8Array(DATA_FRAME_PREFIX + READ_SIZE);
      let offset = 0;
      try {
        for (;;) {
          await c.wait();
          if (ended) return;
          const into = buf.subarray(
            DATA_FRAME_PREFIX,
            DATA_FRAME_PREFIX + Math.min(READ_SIZE, c.available),
          );
          const n = await local.read(into);
          if (ended) return;
          if (n === null) break;
          client.sendData(sid, CH_STDIN, offset, into.subarray(0, n), true);
          offset += n;
          c.take(n);
        }
        client.send({ t: "eof", sid });
      } catch (e) {
        abandon(e);
      }
    };
    sid = client.open({
      machine: opts.machineId,
      kind: "tcp",
      argv: [],
      target: opts.target,
      stdin: true,
      window: OUTPUT_WINDOW,
    }, {
      onStarted(msg) {
        credit = new Credit(msg.window);
        pump(credit);
      },
      onData(channel, _offset, payload) {
        if (channel !== CH_STDOUT || ended) return;
        const data = payload.slice(); // a view of the read buffer, valid only now
        writes = writes.then(async () => {
          if (ended) return;
          await writeAll(local, data);
          grant.consumed(data.length);
        }).catch(abandon);
      },
      onCredit(channel, bytes) {
        if (channel === CH_STDIN) credit?.add(bytes);
      },
      onEof() {
        writes = writes.then(() => ended ? undefined : local.closeWrite()).catch(abandon);
      },
      onExit() {
        writes.then(() => end(), abandon);
      },
      onError(err) {
        end(new TetherError(err.code, err.message, { hint: err.hint }));
      },
    }, opts.auth);
  });
}
