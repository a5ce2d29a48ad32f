/**
 * The client half of `tether exec`: opens an exec stream (or watches an
 * exec that runs already), forwards stdin under the agent's credit, writes
 * each output chunk as soon as it arrives and grants the bytes back once
 * written. Ends with the remote exit status or a TetherError — never with a
 * status it did not receive.
 *
 * The command lives on the agent, not in this connection: when a connection
 * on the way drops (ours to the relay, or the agent's), the stream is
 * resumed on a new one within the reconnect window, byte-exact both ways:
 * output from the offsets already written, stdin from the offset the agent
 * says it has taken (the bytes it has not confirmed are kept until it does).
 */
import { backoff, delay } from "../common/async.ts";
import { BufferPool } from "../common/bytes.ts";
import { isFinal, TetherError } from "../common/errors.ts";
import { Credit, Grant, OUTPUT_WINDOW } from "../protocol/flow.ts";
import {
  CH_STDERR,
  CH_STDIN,
  CH_STDOUT,
  DATA_FRAME_PREFIX,
  encodeCredit,
  MAX_DATA_PAYLOAD,
} from "../protocol/frames.ts";
import type { Open, RemoteSpec, WireError } from "../protocol/messages.ts";
import { reconnectWindowMs } from "./attach.ts";
import type { RelayClient, StreamAuth } from "./relay_client.ts";
import { ReadAhead } from "./stdin.ts";

export interface ExecRequest {
  machineId: string;
  /** For messages (how to reattach). */
  machineName: string;
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
  /** Watch an exec that runs (or ran) already, from these offsets, instead of starting one. */
  attach?: { id: string; offset?: number; errOffset?: number };
  /** Leave the command running once it started (exec --detach). */
  detach?: boolean;
  /** tether ssh: how the machine runs argv (shell line, subsystem, user). */
  remote?: RemoteSpec;
}

export interface ExecIO {
  stdin: { read(buf: Uint8Array): Promise<number | null> };
  /** Called with each output chunk; resolves once it is written. */
  output(channel: number, chunk: Uint8Array): Promise<void>;
  started?(info: { pid?: number; id: string }): void;
  /** Output the machine no longer had: `bytes` on `channel` before what follows. */
  dropped?(channel: number, bytes: number): void;
  /** A problem worth telling the user that does not end the command. */
  warn?(line: string): void;
}

export interface ExecResult {
  code: number;
  signal?: string | null;
  /** With `detach`: the command runs on. */
  detached?: boolean;
  /** The exec's id (`exec --attach ID`). */
  id: string;
}

/** Extra time past --timeout before the client gives up on hearing from the agent. */
const TIMEOUT_BACKSTOP_MS = 10_000;
/** A reattach that gets no answer this long is abandoned and tried again on a new connection. */
const OPEN_TIMEOUT_MS = 10_000;

export interface ExecRun {
  done: Promise<ExecResult>;
  /** Sends a signal to the command's process group. */
  signal(sig: string): void;
  /** Stops watching and ends the command (its status is not waited for). */
  kill(): void;
  /** Stops watching; the command runs on. Resolves with its id once known. */
  detach(): string | undefined;
}

/**
 * Runs (or watches) one exec. `redial` gives a new relay connection when the
 * one in use has ended.
 */
export function runExec(
  first: RelayClient,
  redial: () => Promise<RelayClient>,
  req: ExecRequest,
  io: ExecIO,
): ExecRun {
  let client = first;
  const pool = new BufferPool(MAX_DATA_PAYLOAD);
  let sid = 0;
  /** Bumped for every open: handlers of an earlier one are ignored. */
  let attempt = 0;
  let id = req.attach?.id;
  let attachId: string | undefined;
  let started = false;
  /** The current stream has started (false while reconnecting). */
  let live = false;
  /** A signal asked us to leave before the command had started. */
  let detachAsked = false;
  let finished = false;
  /** Next offset expected on each channel (index by channel number). */
  const offsets = [0, req.attach?.offset ?? 0, req.attach?.errOffset ?? 0];
  // stdin: what was sent and is not yet confirmed (credited) by the agent, for a resume.
  let credit = new Credit(0);
  let stdinSent = 0;
  let stdinCredited = 0;
  const unacked: { offset: number; data: Uint8Array }[] = [];
  let eofSent = false;
  let pumping = false;
  let resolveDone!: (r: ExecResult) => void;
  let rejectDone!: (e: TetherError) => void;
  const done = new Promise<ExecResult>((res, rej) => {
    resolveDone = res;
    rejectDone = rej;
  });
  // Output is written strictly in arrival order; credit goes back after each write.
  let writeChain = Promise.resolve();
  let backstop: ReturnType<typeof setTimeout> | undefined;
  /** A loss not yet handled: kept until the main loop takes it (it may come at any moment). */
  let pendingLost: WireError | undefined;
  let wakeLost: (() => void) | undefined;
  const noteLost = (err: WireError) => {
    pendingLost = err;
    wakeLost?.();
  };

  /** Our own output failed: whatever the command's end, that is how this exec ends. */
  let outputFailure: WireError | undefined;
  const finish = (fn: () => void) => {
    if (finished) return;
    finished = true;
    clearTimeout(backstop);
    credit.close();
    // An exit that arrived while its last output was still being written is not a success
    // if that write fails: the status is settled once the writes are.
    const settle = () =>
      outputFailure
        ? rejectDone(
          new TetherError(outputFailure.code, outputFailure.message, {
            hint: outputFailure.hint,
          }),
        )
        : fn();
    writeChain.then(settle, settle);
  };
  const fail = (err: WireError) => {
    client.closeStream(sid, "detach");
    finish(() =>
      rejectDone(
        new TetherError(err.code, err.message, { hint: err.hint, candidates: err.candidates }),
      )
    );
  };

  /** Opens (or reopens) the stream; resolves when it started or failed to. */
  function open(): Promise<"ok" | WireError> {
    const mine = ++attempt;
    const c = client;
    const streamCredit = new Credit(0);
    let mySid = 0;
    const grant = new Grant(
      OUTPUT_WINDOW,
      (n) => c.conn.sendBinary(encodeCredit(mySid, CH_STDOUT, n)),
    );
    const spec: Omit<Open, "t" | "sid"> = id
      ? {
        machine: req.machineId,
        kind: "exec",
        argv: [],
        session: id,
        ...(attachId ? { resume: attachId } : {}),
        offset: offsets[CH_STDOUT],
        err_offset: offsets[CH_STDERR],
        stdin: req.stdin && !req.attach,
        window: OUTPUT_WINDOW,
      }
      : {
        machine: req.machineId,
        kind: "exec",
        argv: req.argv,
        cwd: req.cwd,
        env: req.env,
        stdin: req.stdin && !req.detach,
        timeout_ms: req.timeoutMs,
        window: OUTPUT_WINDOW,
        ...req.remote,
      };
    return new Promise((resolve) => {
      let opened = false;
      mySid = sid = c.open(spec, {
        onStarted(msg) {
          if (mine !== attempt) return;
          opened = true;
          const first = !started;
          started = true;
          live = true;
          id = msg.session ?? id;
          attachId = msg.attach_id;
          credit.close();
          credit = streamCredit;
          streamCredit.add(msg.window);
          if (first) io.started?.({ pid: msg.pid, id: id ?? "" });
          noteStart(CH_STDOUT, msg.offset);
          noteStart(CH_STDERR, msg.err_offset);
          if (req.detach) {
            resolve("ok");
            return;
          }
          resendStdin(msg.stdin_offset ?? 0);
          if (req.stdin && !req.attach && !pumping && !eofSent) pumpStdin();
          resolve("ok");
        },
        onData(channel, offset, payload) {
          // A detaching client leaves the output to whoever attaches.
          if (mine !== attempt || req.detach || finished) return;
          if (channel !== CH_STDOUT && channel !== CH_STDERR) return;
          const want = offsets[channel];
          if (offset > want) io.dropped?.(channel, offset - want);
          const skip = offset < want ? Math.min(payload.length, want - offset) : 0;
          offsets[channel] = Math.max(want, offset + payload.length);
          const n = payload.length;
          // The payload is borrowed: kept in a reused buffer until it is written.
          const data = pool.copy(payload.subarray(skip));
          writeChain = writeChain.then(() => data.length ? io.output(channel, data) : undefined)
            .then(() => {
              pool.give(data);
              grant.consumed(n);
            }, (e) => {
              // Our own output failed (a full disk, a closed file): say so, and leave the
              // command running, its output kept for an attach.
              writeChain = Promise.resolve();
              outputFailure ??= {
                code: "internal",
                message: `cannot write the command's output here: ${(e as Error).message}`,
                hint: `it runs on; watch it elsewhere: tether exec --attach ${id}`,
              };
              fail(outputFailure);
            });
        },
        onCredit(channel, bytes) {
          if (mine !== attempt || channel !== CH_STDIN) return;
          streamCredit.add(bytes);
          stdinCredited += bytes;
          while (unacked.length && unacked[0].offset + unacked[0].data.length <= stdinCredited) {
            pool.give(unacked.shift()!.data);
          }
        },
        onExit(msg) {
          if (mine !== attempt) return;
          // A detaching client does not wait for the end: the status is kept for an attach.
          if (req.detach) return;
          finish(() => resolveDone({ code: msg.code, signal: msg.signal, id: id ?? "" }));
        },
        onError(err) {
          if (mine !== attempt) return;
          // The stdin pump waits on a credit nobody adds to until a stream starts again
          // (sending on the dead stream, or spinning on a closed credit, would be wrong).
          if (credit === streamCredit) credit = new Credit(0);
          streamCredit.close();
          live = false;
          if (!opened) resolve(err);
          else if (err.resumable && !isFinal(err.code) && !req.detach) noteLost(err);
          else fail(err);
        },
      }, req.auth);
    });
  }

  function noteStart(channel: number, at: number | undefined) {
    if (at === undefined) return;
    if (at > offsets[channel]) io.dropped?.(channel, at - offsets[channel]);
    offsets[channel] = Math.max(offsets[channel], at);
  }

  /** After a resume: what the agent had not taken yet goes again, then the EOF if it went. */
  function resendStdin(from: number) {
    for (const u of unacked) {
      const end = u.offset + u.data.length;
      if (end <= from) continue;
      const part = u.data.subarray(Math.max(0, from - u.offset));
      const at = Math.max(from, u.offset);
      credit.take(part.length);
      client.sendData(sid, CH_STDIN, at, part);
    }
    if (eofSent) client.send({ t: "eof", sid });
  }

  async function pumpStdin() {
    pumping = true;
    // A pipe or terminal gives at most 64 KiB a read; a socket (rsync, scp) may give more.
    const size = req.stream ? 16 * 1024 : MAX_DATA_PAYLOAD;
    // Buffers with room for the DATA header before what is read; the socket copies each
    // frame. A bulk stdin is read one chunk ahead, so its next read overlaps this send.
    // (The pump runs once per command: across a resume it waits for the new credit.)
    const reader = new ReadAhead(io.stdin, size, DATA_FRAME_PREFIX, !req.stream);
    try {
      for (;;) {
        const buf = await reader.next();
        if (finished) return;
        if (buf === null) {
          eofSent = true;
          client.send({ t: "eof", sid });
          return;
        }
        const n = buf.length;
        let off = 0;
        while (off < n) {
          const c = credit;
          await c.wait();
          if (finished) return;
          if (c !== credit) continue; // the stream was resumed: the resend covered the rest
          await client.conn.drain();
          const m = Math.min(credit.available, n - off);
          if (m <= 0) continue;
          credit.take(m);
          // Kept until the agent confirms it: a resume sends it again.
          unacked.push({ offset: stdinSent, data: pool.copy(buf.subarray(off, off + m)) });
          if (off === 0 && m === n) {
            client.sendData(sid, CH_STDIN, stdinSent, buf.subarray(0, m), true);
          } else {
            client.sendData(sid, CH_STDIN, stdinSent, buf.subarray(off, off + m));
          }
          stdinSent += m;
          off += m;
        }
      }
    } catch (e) {
      if (finished) return;
      // Our stdin failed (closed terminal, EIO): treat as end of input.
      io.warn?.(`stdin: ${(e as Error).message}; treating it as end of input`);
      eofSent = true;
      client.send({ t: "eof", sid });
    } finally {
      pumping = false;
    }
  }

  /** Reopens the stream after a lost connection, until the window closes or a refusal is final. */
  async function resume(why: WireError): Promise<void> {
    const deadline = Date.now() + reconnectWindowMs();
    io.warn?.(`${why.message}; reconnecting…`);
    let last = why.message;
    for (let n = 1; Date.now() < deadline && !finished; n++) {
      try {
        if (!client.conn.isOpen) client = await redial();
        const r = await Promise.race([
          open(),
          delay(OPEN_TIMEOUT_MS).then((): WireError => ({
            code: "timeout",
            message: "no answer to the reattach in time",
          })),
        ]);
        if (r === "ok") {
          io.warn?.("reconnected");
          return;
        }
        if (r.code === "timeout") {
          attempt++; // whatever that open brings later is ignored
          client.closeStream(sid, "lost");
          client.close();
        } else if (
          r.code === "session_not_found" || isFinal(r.code) ||
          (r.code === "session_lost" && !r.resumable)
        ) {
          // The machine is back but does not have the command, or refuses: final.
          return fail(
            r.code === "session_not_found"
              ? {
                code: "session_lost",
                message: `exec ${id} is gone from the machine (${r.message})`,
                hint: "its exit status is unknown; the agent may have restarted",
              }
              : r,
          );
        }
        last = r.message;
      } catch (e) {
        if (e instanceof TetherError && isFinal(e.code)) return fail(e.toJSON());
        last = (e as Error).message;
      }
      await delay(backoff(n, 250, 2000));
    }
    if (!finished) {
      fail({
        code: "session_lost",
        message: `could not reconnect within ${reconnectWindowMs() / 1000}s: ${last}`,
        hint: `the command may still be running: tether exec --attach ${id}`,
      });
    }
  }

  (async () => {
    const r = await open();
    if (r !== "ok") return fail(r);
    if (req.detach || detachAsked) {
      client.closeStream(sid, "detach");
      finish(() => resolveDone({ code: 0, detached: true, id: id ?? "" }));
      return;
    }
    if (req.timeoutMs) {
      backstop = setTimeout(() => {
        fail({
          code: "timeout",
          message: `no answer from the machine ${TIMEOUT_BACKSTOP_MS / 1000}s past the timeout`,
          hint: `the remote process may still be running: tether exec --attach ${id}`,
        });
      }, req.timeoutMs + TIMEOUT_BACKSTOP_MS);
    }
    while (!finished) {
      if (!pendingLost) {
        await new Promise<void>((r) => {
          wakeLost = r;
          done.then(() => r(), () => r());
        });
      }
      const lost = pendingLost;
      pendingLost = undefined;
      if (!lost || finished) return;
      await resume(lost);
    }
  })();

  return {
    done,
    signal(sig: string) {
      if (!finished) client.send({ t: "signal", sid, signal: sig });
    },
    kill() {
      if (finished) return;
      // While reconnecting there is no stream to tell: the command may run on.
      const told = live;
      client.closeStream(sid, "kill");
      finish(() =>
        rejectDone(
          told
            ? new TetherError("session_lost", "interrupted: the command was ended", {
              hint: "its exit status was not waited for",
            })
            : new TetherError("session_lost", "interrupted while reconnecting", {
              hint: `the command may still run: tether exec --attach ${id} (or sessions kill)`,
            }),
        )
      );
    },
    detach() {
      if (!finished && !started) detachAsked = true; // done once it started
      if (!finished && started) {
        client.closeStream(sid, "detach");
        finish(() => resolveDone({ code: 0, detached: true, id: id ?? "" }));
      }
      return id;
    },
  };
}
