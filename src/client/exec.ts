/**
 * The client half of `tether exec`: opens an exec stream, forwards stdin
 * under the agent's credit, writes each output chunk as soon as it arrives
 * and grants the bytes back once written. Ends with the remote exit status
 * or a TetherError — never with a status it did not receive.
 */
import { TetherError } from "../common/errors.ts";
import { Credit, Grant, OUTPUT_WINDOW } from "../protocol/flow.ts";
import {
  CH_STDERR,
  CH_STDIN,
  CH_STDOUT,
  DATA_FRAME_PREFIX,
  dataFrameInPlace,
  encodeCredit,
  encodeData,
} from "../protocol/frames.ts";
import type { WireError } from "../protocol/messages.ts";
import type { RelayClient, StreamAuth } from "./relay_client.ts";

export interface ExecRequest {
  machineId: string;
  argv: string[];
  cwd?: string;
  env?: Record<string, string>;
  /** Forward our stdin; false gives the remote /dev/null. */
  stdin: boolean;
  timeoutMs?: number;
  /** Smaller stdin reads, so each line a driver writes goes out alone. */
  stream?: boolean;
  /** Answers the machine's password challenge, if it has a password. */
  auth?: StreamAuth;
}

export interface ExecIO {
  stdin: { read(buf: Uint8Array): Promise<number | null> };
  /** Called with each output chunk; resolves once it is written. */
  output(channel: number, chunk: Uint8Array): Promise<void>;
  started?(pid: number | undefined): void;
  /** A problem worth telling the user that does not end the command. */
  warn?(line: string): void;
}

export interface ExecResult {
  code: number;
  signal?: string | null;
}

/** Extra time past --timeout before the client gives up on hearing from the agent. */
const TIMEOUT_BACKSTOP_MS = 10_000;

export function runExec(client: RelayClient, req: ExecRequest, io: ExecIO): {
  done: Promise<ExecResult>;
  signal(sig: string): void;
  abort(): void;
} {
  const credit = new Credit(0);
  const offsets = [0, 0, 0];
  let sid = 0;
  let finished = false;
  let resolveDone!: (r: ExecResult) => void;
  let rejectDone!: (e: TetherError) => void;
  const done = new Promise<ExecResult>((res, rej) => {
    resolveDone = res;
    rejectDone = rej;
  });
  const grant = new Grant(
    OUTPUT_WINDOW,
    (n) => client.conn.sendBinary(encodeCredit(sid, CH_STDOUT, n)),
  );
  // Output is written strictly in arrival order; credit goes back after each write.
  let writeChain = Promise.resolve();
  let backstop: ReturnType<typeof setTimeout> | undefined;

  const finish = (fn: () => void) => {
    if (finished) return;
    finished = true;
    clearTimeout(backstop);
    credit.close();
    writeChain.then(fn, fn);
  };

  sid = client.open({
    machine: req.machineId,
    kind: "exec",
    argv: req.argv,
    cwd: req.cwd,
    env: req.env,
    stdin: req.stdin,
    timeout_ms: req.timeoutMs,
    window: OUTPUT_WINDOW,
  }, {
    onStarted(msg) {
      io.started?.(msg.pid);
      credit.add(msg.window);
      if (req.stdin) pumpStdin();
    },
    onData(channel, offset, payload) {
      if (channel !== CH_STDOUT && channel !== CH_STDERR) return;
      if (offset !== offsets[channel]) {
        failWith({
          code: "internal",
          message: `output gap on ${channel === CH_STDOUT ? "stdout" : "stderr"}: ` +
            `expected offset ${offsets[channel]}, got ${offset}`,
        });
        return;
      }
      offsets[channel] += payload.length;
      writeChain = writeChain.then(() => io.output(channel, payload)).then(() =>
        grant.consumed(payload.length)
      );
    },
    onCredit(channel, bytes) {
      if (channel === CH_STDIN) credit.add(bytes);
    },
    onExit(msg) {
      finish(() => resolveDone({ code: msg.code, signal: msg.signal }));
    },
    onError(err) {
      failWith(err);
    },
  }, req.auth);

  function failWith(err: WireError) {
    client.closeStream(sid);
    finish(() =>
      rejectDone(
        new TetherError(err.code, err.message, { hint: err.hint, candidates: err.candidates }),
      )
    );
  }

  if (req.timeoutMs) {
    backstop = setTimeout(() => {
      failWith({
        code: "timeout",
        message: `no answer from the machine ${TIMEOUT_BACKSTOP_MS / 1000}s past the timeout`,
        hint: "the remote process may still be running; check with `tether exec`",
      });
    }, req.timeoutMs + TIMEOUT_BACKSTOP_MS);
  }

  async function pumpStdin() {
    const size = req.stream ? 16 * 1024 : 64 * 1024; // a pipe or terminal gives at most 64 KiB a read
    let offset = 0;
    // One buffer, with room for the DATA header before what is read; the socket copies
    // each frame, so the buffer takes the next read at once.
    const buf = new Uint8Array(new ArrayBuffer(DATA_FRAME_PREFIX + size), DATA_FRAME_PREFIX, size);
    try {
      for (;;) {
        const n = await io.stdin.read(buf);
        if (finished) return;
        if (n === null) {
          client.conn.send({ t: "eof", sid });
          return;
        }
        let off = 0;
        while (off < n) {
          await credit.wait();
          if (finished) return;
          await client.conn.drain();
          const m = Math.min(credit.available, n - off);
          credit.take(m);
          if (off === 0) {
            client.conn.sendBinary(
              dataFrameInPlace(buf.subarray(0, m), sid, CH_STDIN, offset),
            );
          } else {
            client.conn.sendBinary(encodeData(sid, CH_STDIN, offset, buf.subarray(off, off + m)));
          }
          offset += m;
          off += m;
        }
      }
    } catch (e) {
      if (finished) return;
      // Our stdin failed (closed terminal, EIO): treat as end of input.
      io.warn?.(`stdin: ${(e as Error).message}; treating it as end of input`);
      client.conn.send({ t: "eof", sid });
    }
  }

  return {
    done,
    signal(sig: string) {
      if (!finished) client.conn.send({ t: "signal", sid, signal: sig });
    },
    abort() {
      failWith({ code: "session_lost", message: "interrupted before the command finished" });
    },
  };
}
