/**
 * The client half of an interactive session (`tether connect`, `exec -t`):
 * raw terminal, output written as it arrives and credited back, input sent
 * under the agent's credit, Ctrl-D detaching locally, window size changes
 * forwarded, and — when the connection drops — reconnecting and resuming
 * from the last offset received, so nothing is lost or shown twice.
 */
import { backoff, delay } from "../common/async.ts";
import { BufferPool, writeAll } from "../common/bytes.ts";
import { parseDuration } from "../common/duration.ts";
import { isFinal, TetherError } from "../common/errors.ts";
import { visible } from "../common/text.ts";
import { Credit, Grant, OUTPUT_WINDOW } from "../protocol/flow.ts";
import { CH_STDIN, CH_STDOUT, encodeCredit, MAX_DATA_PAYLOAD } from "../protocol/frames.ts";
import type { Open, RemoteSpec, WireError } from "../protocol/messages.ts";
import type { ClientConfig } from "./config.ts";
import { RelayClient, type StreamAuth } from "./relay_client.ts";
import { type AttachOutcome, AttachState, CTRL_D } from "./attach_state.ts";

export { type AttachOutcome, CTRL_D };

/**
 * Parses `--detach-key`: `ctrl-X` or `^X` for a control character (X a letter or one of
 * `@[\]^_`), or `none` (then only a signal detaches, and Ctrl-D reaches the remote as EOF).
 * Returns the byte, null for none, or undefined when the text is not a key.
 */
export function parseDetachKey(text: string): number | null | undefined {
  const t = text.trim().toLowerCase();
  if (t === "none") return null;
  const m = /^(?:ctrl-|\^)([a-z@[\\\]^_])$/.exec(t);
  return m ? m[1].toUpperCase().charCodeAt(0) & 0x1f : undefined;
}

/** How a detach key is shown: `Ctrl-D`, `Ctrl-]`. */
export function detachKeyName(key: number): string {
  return `Ctrl-${String.fromCharCode(key + 0x40)}`;
}

/** How long a dropped session keeps trying to come back before giving up (default). */
export const RECONNECT_WINDOW_MS = 60_000;

/** The reconnect window: env TETHER_RECONNECT_WINDOW (a duration) or 60 s. */
export function reconnectWindowMs(): number {
  const text = Deno.env.get("TETHER_RECONNECT_WINDOW");
  return text ? parseDuration(text, "TETHER_RECONNECT_WINDOW") : RECONNECT_WINDOW_MS;
}
/** A reattach that gets no answer this long is abandoned and retried on a new connection. */
const OPEN_TIMEOUT_MS = 10_000;

export interface AttachRequest {
  machineId: string;
  machineName: string;
  /** Join this session; otherwise a new one is started. */
  session?: string;
  argv?: string[];
  readOnly?: boolean;
  /** exec -t: the session ends when we leave, and Ctrl-D goes to the remote. */
  oneShot?: boolean;
  /** The byte that detaches (default Ctrl-D); null: none. */
  detachKey?: number | null;
  /** Answers the machine's password challenge, if it has a password. */
  auth?: StreamAuth;
  /** For a new session: working directory and extra environment. */
  cwd?: string;
  env?: Record<string, string>;
  /** exec -t --timeout: end the session and fail with `timeout` after this long. */
  timeoutMs?: number;
  /** tether ssh: how the machine runs argv (shell line, user). */
  remote?: RemoteSpec;
}

/** Signals that end an attach cleanly (terminal restored, session left running). */
const DETACH_SIGNALS: Deno.Signal[] = ["SIGTERM", "SIGHUP", "SIGINT"];

export interface Terminal {
  read(buf: Uint8Array): Promise<number | null>;
  write(data: Uint8Array): Promise<void>;
  /** Status lines (banner, reconnect notices). */
  status(line: string): void;
  isTerminal: boolean;
  size(): { cols: number; rows: number };
  setRaw(raw: boolean): void;
  onResize(cb: () => void): () => void;
}

/** The process's own terminal. */
export function processTerminal(): Terminal {
  const enc = new TextEncoder();
  const isTerminal = Deno.stdin.isTerminal();
  let raw = false;
  return {
    read: (buf) => Deno.stdin.read(buf),
    write: (data) => writeAll(Deno.stdout, data),
    status(line) {
      // Status lines quote the relay's and the agent's words (notices, reasons).
      const text = line.split("\n").map(visible).join(raw ? "\r\n" : "\n");
      Deno.stderr.writeSync(enc.encode(`${text}${raw ? "\r\n" : "\n"}`));
    },
    isTerminal,
    size() {
      try {
        const { columns, rows } = Deno.consoleSize();
        return { cols: columns || 80, rows: rows || 24 };
      } catch {
        return { cols: 80, rows: 24 };
      }
    },
    setRaw(on) {
      if (!isTerminal || raw === on) return;
      Deno.stdin.setRaw(on);
      raw = on;
    },
    onResize(cb) {
      try {
        Deno.addSignalListener("SIGWINCH", cb);
        return () => Deno.removeSignalListener("SIGWINCH", cb);
      } catch {
        return () => {};
      }
    },
  };
}

/**
 * Attaches and runs until the remote process exits, we detach, or the
 * session cannot be recovered (then throws `session_lost`). The decisions are
 * AttachState's (attach_state.ts); this function does the I/O: the terminal,
 * the stream, credit, signals and the reconnect loop.
 */
export async function attach(
  cfg: ClientConfig,
  first: RelayClient,
  req: AttachRequest,
  term: Terminal,
  opts: { onStarted?: (session: string) => void } = {},
): Promise<AttachOutcome> {
  const state = new AttachState({
    oneShot: !!req.oneShot,
    detachKey: req.detachKey === undefined ? CTRL_D : req.detachKey,
    isTerminal: term.isTerminal,
    machineName: req.machineName,
    session: req.session,
  });
  let client = first;
  const pool = new BufferPool(MAX_DATA_PAYLOAD);
  let sid = 0;
  let credit = new Credit(0);
  /** Wakes the main loop: the attach is over, or the stream broke. */
  let wake: (() => void) | undefined;
  const poke = () => wake?.();
  let lost: WireError | undefined;
  let writeChain = Promise.resolve();

  const openStream = (): Promise<"ok" | WireError> =>
    new Promise((resolve) => {
      const size = term.size();
      const spec: Omit<Open, "t" | "sid"> = {
        machine: req.machineId,
        kind: "pty",
        argv: req.argv ?? [],
        stdin: true,
        window: OUTPUT_WINDOW,
        term: Deno.env.get("TERM") || "xterm-256color",
        cols: size.cols,
        rows: size.rows,
        ...state.openSpec(),
        ...(req.readOnly ? { read_only: true } : {}),
        ...(req.oneShot ? { ephemeral: true } : {}),
        ...(req.cwd ? { cwd: req.cwd } : {}),
        ...(req.env ? { env: req.env } : {}),
        ...req.remote,
      };
      const c = client;
      let started = false;
      const streamCredit = new Credit(0);
      let mySid = 0;
      const grant = new Grant(OUTPUT_WINDOW, (n) =>
        c.conn.sendBinary(encodeCredit(mySid, CH_STDOUT, n)));
      mySid = sid = c.open(spec, {
        onStarted(msg) {
          started = true;
          const notice = state.started(msg);
          if (notice) {
            term.status(notice);
          }
          const waiting = credit;
          credit = streamCredit;
          streamCredit.add(msg.window);
          waiting.close(); // wakes the input pump, which then waits on the new stream's credit
          resolve("ok");
        },
        onData(ch, offset, payload) {
          if (ch !== CH_STDOUT) {
            return;
          }
          const n = payload.length;
          const data = state.output(offset, payload);
          if (!data) {
            grant.consumed(n);
            return;
          }
          // The payload is borrowed: kept in a reused buffer until it is written.
          const owned = pool.copy(data);
          const written = () => {
            pool.give(owned);
            grant.consumed(n);
          };
          writeChain = writeChain.then(() =>
            term.write(owned)
          ).then(written, written);
        },
        onCredit(ch, bytes) {
          if (ch === CH_STDIN) streamCredit.add(bytes);
        },
        onExit(msg) {
          writeChain.then(() => {
            state.exited(msg.code);
            poke();
          });
        },
        onError(err) {
          // Input waits on a credit nobody adds to until a stream starts again (sending on
          // the dead stream, or spinning on a closed credit, would be wrong).
          if (credit === streamCredit) credit = new Credit(0);
          streamCredit.close();
          if (!started) {
            resolve(err);
            return;
          }
          lost = err;
          poke();
        },
        onNotice(message) {
          writeChain = writeChain.then(() => term.status(`[tether: ${message}]`));
        },
      }, req.auth);
    });

  const firstOpen = await openStream();
  if (firstOpen !== "ok") {
    throw new TetherError(firstOpen.code, firstOpen.message, { hint: firstOpen.hint });
  }
  opts.onStarted?.(state.session!);

  const sendResize = () => {
    const { cols, rows } = term.size();
    client.send({ t: "resize", sid, cols, rows });
  };
  const offResize = term.onResize(sendResize);
  // Killed from outside (or Ctrl-C on a non-raw stdin): leave like a detach, so the
  // terminal is restored and the session keeps running.
  const signalHandlers = DETACH_SIGNALS.map((sig) => {
    const handler = () => {
      state.signalled(sig);
      poke();
    };
    try {
      Deno.addSignalListener(sig, handler);
    } catch { /* not supported here */ }
    return () => {
      try {
        Deno.removeSignalListener(sig, handler);
      } catch { /* ignore */ }
    };
  });

  // Input: one reader for the whole attach; bytes typed while reconnecting are dropped.
  const pumpInput = async () => {
    const buf = new Uint8Array(16 * 1024);
    for (;;) {
      let n: number | null;
      try {
        n = await term.read(buf);
      } catch {
        n = null;
      }
      if (state.over) return;
      if (n === null) {
        if (state.inputEnded() === "eof") client.send({ t: "eof", sid });
        else poke();
        return;
      }
      const data = state.input(buf.subarray(0, n));
      let off = 0;
      while (off < data.length) {
        const c = credit;
        await c.wait();
        if (state.over) break;
        if (c !== credit || c.available <= 0) continue; // a new stream: wait on its credit
        const m = Math.min(c.available, data.length - off);
        c.take(m);
        client.sendData(sid, CH_STDIN, 0, data.subarray(off, off + m));
        off += m;
      }
      if (state.over) {
        poke();
        return;
      }
    }
  };

  let timedOut = false;
  const timer = req.timeoutMs
    ? setTimeout(() => {
      timedOut = true;
      poke();
    }, req.timeoutMs)
    : undefined;
  let rawSet = false;
  try {
    term.setRaw(true);
    rawSet = true;
    pumpInput();
    for (;;) {
      if (!lost && !state.over && !timedOut) await new Promise<void>((r) => (wake = r));
      if (state.over || timedOut) break;
      if (!lost) continue;
      // The stream broke: reconnect and resume from the last offset we showed.
      const why = lost;
      lost = undefined;
      const next = state.lost(why);
      if (next !== "reconnect") throw next;
      await writeChain;
      term.status(`[tether: connection lost (${why.message}) — reconnecting…]`);
      await reconnect();
      if (state.over) break;
      term.status("[tether: reconnected]");
      sendResize();
    }
  } finally {
    clearTimeout(timer);
    offResize();
    for (const off of signalHandlers) off();
    if (rawSet) term.setRaw(false);
  }
  if (timedOut && !state.outcome) {
    client.closeStream(sid, "detach");
    throw new TetherError(
      "timeout",
      `the command ran past its timeout of ${req.timeoutMs} ms and was ended`,
    );
  }
  const done = state.outcome!;
  if (done.kind === "detach") client.closeStream(sid, "detach");
  return done;

  /** Redials and reattaches until it works, the window closes, or a refusal is final. */
  async function reconnect(): Promise<void> {
    const windowMs = reconnectWindowMs();
    const deadline = Date.now() + windowMs;
    let last = "";
    for (let attempt = 1; Date.now() < deadline && !state.over; attempt++) {
      try {
        // The relay may still be there while the agent went away: then the same
        // connection serves; otherwise dial again.
        if (!client.conn.isOpen) client = await RelayClient.connect(cfg);
        const r = await Promise.race([
          openStream(),
          new Promise<WireError>((res) =>
            setTimeout(
              () => res({ code: "timeout", message: "no answer to the reattach in time" }),
              OPEN_TIMEOUT_MS,
            )
          ),
        ]);
        if (r === "ok") return;
        if (r.code === "timeout") {
          client.closeStream(sid, "lost");
          client.close(); // dial afresh next time
        }
        const refused = state.reattachRefused(r);
        if (refused) throw refused;
        last = r.message;
      } catch (e) {
        if (e instanceof TetherError && isFinal(e.code)) throw e;
        if (e instanceof TetherError && state.over) throw e;
        last = (e as Error).message;
      }
      await delay(backoff(attempt, 250, 2000));
    }
    if (!state.over) throw state.gaveUp(windowMs, last);
  }
}
