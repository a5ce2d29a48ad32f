/**
 * The client half of an interactive session (`tether connect`, `exec -t`):
 * raw terminal, output written as it arrives and credited back, input sent
 * under the agent's credit, Ctrl-D detaching locally, window size changes
 * forwarded, and — when the connection drops — reconnecting and resuming
 * from the last offset received, so nothing is lost or shown twice.
 */
import { backoff, delay } from "../common/async.ts";
import { BufferPool, concatBytes, writeAll } from "../common/bytes.ts";
import { parseDuration } from "../common/duration.ts";
import { isFinal, TetherError } from "../common/errors.ts";
import { signalStatus } from "../common/signals.ts";
import { visible } from "../common/text.ts";
import { Credit, Grant, OUTPUT_WINDOW } from "../protocol/flow.ts";
import {
  CH_STDIN,
  CH_STDOUT,
  encodeCredit,
  encodeData,
  MAX_DATA_PAYLOAD,
} from "../protocol/frames.ts";
import type { Open, WireError } from "../protocol/messages.ts";
import type { ClientConfig } from "./config.ts";
import { RelayClient, type StreamAuth } from "./relay_client.ts";
import { stripTerminalQueries } from "./replay_filter.ts";

/** The default detach key: Ctrl-D. */
export const CTRL_D = 0x04;

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
}

export interface AttachOutcome {
  /** "exit": the remote process ended with `code`; "detach": we left, it runs on. */
  kind: "exit" | "detach";
  code: number;
  session: string;
  /** Set when a signal to this process made us detach (then `code` is 128+n). */
  signal?: Deno.Signal;
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
 * session cannot be recovered (then throws `session_lost`).
 */
export async function attach(
  cfg: ClientConfig,
  first: RelayClient,
  req: AttachRequest,
  term: Terminal,
  opts: { onStarted?: (session: string) => void } = {},
): Promise<AttachOutcome> {
  let client = first;
  const pool = new BufferPool(MAX_DATA_PAYLOAD);
  let sid = 0;
  let session = req.session;
  let attachId: string | undefined;
  let cursor: number | undefined;
  let credit = new Credit(0);
  let outcome: AttachOutcome | undefined;
  let finish!: () => void;
  const finished = new Promise<void>((r) => (finish = r));
  let lost: WireError | undefined;
  let wakeLost: (() => void) | undefined;
  let rawSet = false;
  let writeChain = Promise.resolve();
  /** Output before this offset is a replay: its terminal queries are removed. */
  let replayEnd = 0;

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
        ...(session ? { session } : {}),
        ...(attachId ? { resume: attachId } : {}),
        ...(cursor !== undefined ? { offset: cursor } : {}),
        ...(req.readOnly ? { read_only: true } : {}),
        ...(req.oneShot ? { ephemeral: true } : {}),
        ...(req.cwd ? { cwd: req.cwd } : {}),
        ...(req.env ? { env: req.env } : {}),
      };
      const c = client;
      let started = false;
      const streamCredit = new Credit(0);
      const grant = new Grant(OUTPUT_WINDOW, (n) =>
        c.conn.sendBinary(encodeCredit(sid, CH_STDOUT, n)));
      sid = c.open(spec, {
        onStarted(msg) {
          started = true;
          session = msg.session;
          attachId = msg.attach_id;
          if (cursor !== undefined && msg.offset !== undefined && msg.offset > cursor) {
            term.status(`[tether: ${msg.offset - cursor} bytes of output were lost while away]`);
          }
          cursor = msg.offset ?? cursor ?? 0;
          replayEnd = msg.end ?? 0;
          credit = streamCredit;
          streamCredit.add(msg.window);
          resolve("ok");
        },
        onData(ch, offset, payload) {
          if (ch !== CH_STDOUT) {
            return;
          }
          let data = payload;
          let at = offset;
          if (cursor !== undefined && offset < cursor) {
            const skip = Math.min(payload.length, cursor - offset); // already shown
            data = payload.subarray(skip);
            at += skip;
          }
          cursor = offset + payload.length;
          if (at < replayEnd && data.length > 0) {
            const cut = Math.min(data.length, replayEnd - at);
            const replayed = stripTerminalQueries(data.subarray(0, cut));
            data = cut === data.length ? replayed : concatBytes([replayed, data.subarray(cut)]);
          }
          const n = payload.length;
          if (data.length === 0) {
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
            outcome = { kind: "exit", code: msg.code, session: session ?? "" };
            finish();
          });
        },
        onError(err) {
          streamCredit.close();
          if (!started) {
            resolve(err);
            return;
          }
          lost = err;
          wakeLost?.();
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
  opts.onStarted?.(session!);

  const sendResize = () => {
    const { cols, rows } = term.size();
    client.conn.send({ t: "resize", sid, cols, rows });
  };
  const offResize = term.onResize(sendResize);
  // Killed from outside (or Ctrl-C on a non-raw stdin): leave like a detach, so the
  // terminal is restored and the session keeps running.
  const signalHandlers = DETACH_SIGNALS.map((sig) => {
    const handler = () => {
      if (outcome) return;
      outcome = { kind: "detach", code: signalStatus(sig), session: session ?? "", signal: sig };
      finish();
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
      if (outcome) return;
      if (n === null) {
        if (req.oneShot) client.conn.send({ t: "eof", sid });
        else {
          // End of a non-terminal stdin: leave the session running.
          outcome = { kind: "detach", code: 0, session: session ?? "" };
          finish();
        }
        return;
      }
      let data = buf.subarray(0, n);
      let detach = false;
      const detachKey = req.detachKey === undefined ? CTRL_D : req.detachKey;
      if (!req.oneShot && term.isTerminal && detachKey !== null) {
        const at = data.indexOf(detachKey);
        if (at >= 0) {
          data = data.subarray(0, at);
          detach = true;
        }
      }
      let off = 0;
      while (off < data.length && !lost) {
        await credit.wait();
        if (lost || outcome) break;
        const m = Math.min(credit.available, data.length - off);
        credit.take(m);
        client.conn.sendBinary(encodeData(sid, CH_STDIN, 0, data.subarray(off, off + m)));
        off += m;
      }
      if (detach) {
        outcome = { kind: "detach", code: 0, session: session ?? "" };
        finish();
        return;
      }
    }
  };

  let timedOut = false;
  const timer = req.timeoutMs
    ? setTimeout(() => {
      timedOut = true;
      outcome = { kind: "detach", code: 255, session: session ?? "" };
      finish();
    }, req.timeoutMs)
    : undefined;
  try {
    term.setRaw(true);
    rawSet = true;
    pumpInput();
    for (;;) {
      if (!lost && !outcome) {
        await Promise.race([finished, new Promise<void>((r) => (wakeLost = r))]);
      }
      if (outcome) break;
      if (!lost) continue;
      // The stream broke: reconnect and resume from the last offset we showed.
      const why = lost;
      lost = undefined;
      // A refusal such as a revoked key is final: redialing would only be refused again.
      if (isFinal(why.code)) throw new TetherError(why.code, why.message, { hint: why.hint });
      if (req.oneShot) {
        throw new TetherError("session_lost", why.message, { hint: why.hint });
      }
      await writeChain;
      term.status(`[tether: connection lost (${why.message}) — reconnecting…]`);
      const recovered = await reconnect();
      if (recovered !== "ok") throw recovered;
      term.status("[tether: reconnected]");
      sendResize();
    }
  } finally {
    clearTimeout(timer);
    offResize();
    for (const off of signalHandlers) off();
    if (rawSet) term.setRaw(false);
  }
  if (timedOut) {
    client.closeStream(sid, "detach");
    throw new TetherError(
      "timeout",
      `the command ran past its timeout of ${req.timeoutMs} ms and was ended`,
    );
  }
  const done = outcome as AttachOutcome;
  if (done.kind === "detach") client.closeStream(sid, "detach");
  return done;

  /** Redials and reattaches until it works, the window closes, or a refusal is final. */
  async function reconnect(): Promise<"ok" | TetherError> {
    const deadline = Date.now() + reconnectWindowMs();
    let last = "";
    for (let attempt = 1; Date.now() < deadline && !outcome; attempt++) {
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
        if (r !== "ok" && r.code === "timeout") {
          client.closeStream(sid, "lost");
          client.close(); // dial afresh next time
        }
        if (r === "ok") return "ok";
        if (r.code === "session_not_found") {
          return new TetherError(
            "session_lost",
            `session ${session} ended while we were away (the machine no longer has it)`,
            { hint: `start a new one: tether connect ${req.machineName} --new` },
          );
        }
        if (isFinal(r.code)) return new TetherError(r.code, r.message, { hint: r.hint });
        last = r.message;
      } catch (e) {
        if (e instanceof TetherError && isFinal(e.code)) return e;
        last = (e as Error).message;
      }
      await delay(backoff(attempt, 250, 2000));
    }
    return new TetherError(
      "session_lost",
      `could not reconnect within ${reconnectWindowMs() / 1000}s: ${last}`,
      {
        hint:
          `the session may still be running: tether connect ${req.machineName} --session ${session}`,
      },
    );
  }
}
