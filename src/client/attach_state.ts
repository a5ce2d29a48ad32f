/**
 * The decisions of an interactive attach (`tether connect`, `exec -t`), with
 * no I/O: attach.ts feeds it what happened and does what it says. So every
 * transition can be tested without a terminal or a relay.
 *
 * ```
 * connecting ──started──► replaying ──output past the replay──► live
 *      │                      │                                   │
 *      │               lost (may pass) ◄──────────────────────────┤
 *      │                      ▼                                   │
 *      │                reconnecting ──started──► replaying/live   │
 *      │                      │ gave up, or a final refusal       │
 *      ▼                      ▼                                   ▼
 *    ended ◄──────────────── ended ◄── exit / timeout        detached ◄── detach key,
 *                                                                  end of input, a signal
 * ```
 */
import { isFinal, TetherError } from "../common/errors.ts";
import { signalStatus } from "../common/signals.ts";
import type { Started, WireError } from "../protocol/messages.ts";
import { stripTerminalQueries } from "./replay_filter.ts";
import { concatBytes } from "../common/bytes.ts";

export type AttachPhase =
  | "connecting"
  | "replaying"
  | "live"
  | "reconnecting"
  | "detached"
  | "ended";

export interface AttachOutcome {
  /** "exit": the remote process ended with `code`; "detach": we left, it runs on. */
  kind: "exit" | "detach";
  code: number;
  session: string;
  /** Set when a signal to this process made us detach (then `code` is 128+n). */
  signal?: Deno.Signal;
}

/** The default detach key: Ctrl-D. */
export const CTRL_D = 0x04;

export interface AttachRules {
  /** exec -t: the session ends when we leave; Ctrl-D and the end of input go to the remote. */
  oneShot: boolean;
  /** The byte that detaches; null: none. Only on a terminal. */
  detachKey: number | null;
  isTerminal: boolean;
  /** For messages: how to reach the session again. */
  machineName: string;
  /** The session to join (none: a new one). */
  session?: string;
}

export class AttachState {
  phase: AttachPhase = "connecting";
  session?: string;
  /** This attachment's id, to resume it. */
  attachId?: string;
  /** The offset just past the last output shown (undefined before the first start). */
  cursor?: number;
  outcome?: AttachOutcome;
  /** Output before this offset is a replay: its terminal queries are removed. */
  private replayEnd = 0;

  constructor(readonly rules: AttachRules) {
    this.session = rules.session;
  }

  /** True once the attach is over (detached or ended). */
  get over(): boolean {
    return this.phase === "detached" || this.phase === "ended";
  }

  /** What the next open asks for: the session, our place in it, from where. */
  openSpec(): { session?: string; resume?: string; offset?: number } {
    return {
      ...(this.session ? { session: this.session } : {}),
      ...(this.attachId ? { resume: this.attachId } : {}),
      ...(this.cursor !== undefined ? { offset: this.cursor } : {}),
    };
  }

  /** The stream started (first time or after a reconnect); returns a line to show, if any. */
  started(msg: Pick<Started, "session" | "attach_id" | "offset" | "end">): string | undefined {
    let notice: string | undefined;
    if (this.cursor !== undefined && msg.offset !== undefined && msg.offset > this.cursor) {
      notice = `[tether: ${msg.offset - this.cursor} bytes of output were lost while away]`;
    }
    this.session = msg.session ?? this.session;
    this.attachId = msg.attach_id;
    this.cursor = msg.offset ?? this.cursor ?? 0;
    this.replayEnd = msg.end ?? 0;
    this.phase = this.cursor < this.replayEnd ? "replaying" : "live";
    return notice;
  }

  /**
   * Output at `offset`: returns the bytes to show (what was shown already is cut; a
   * replay loses its terminal queries, so the local terminal does not answer them into
   * the shell), or null when there is nothing to show.
   */
  output(offset: number, payload: Uint8Array): Uint8Array | null {
    let data = payload;
    let at = offset;
    if (this.cursor !== undefined && offset < this.cursor) {
      const skip = Math.min(payload.length, this.cursor - offset); // already shown
      data = payload.subarray(skip);
      at += skip;
    }
    this.cursor = Math.max(this.cursor ?? 0, offset + payload.length);
    if (at < this.replayEnd && data.length > 0) {
      const cut = Math.min(data.length, this.replayEnd - at);
      const replayed = stripTerminalQueries(data.subarray(0, cut));
      data = cut === data.length ? replayed : concatBytes([replayed, data.subarray(cut)]);
    }
    if (this.phase === "replaying" && this.cursor >= this.replayEnd) this.phase = "live";
    return data.length > 0 ? data : null;
  }

  /** Typed input: what to send to the remote, and whether the detach key came. */
  input(bytes: Uint8Array): Uint8Array {
    const key = this.rules.detachKey;
    if (this.rules.oneShot || !this.rules.isTerminal || key === null) return bytes;
    const at = bytes.indexOf(key);
    if (at < 0) return bytes;
    this.detach(0);
    return bytes.subarray(0, at);
  }

  /** Our input ended: "eof" to pass on (exec -t), or we detach (a script's stdin ended). */
  inputEnded(): "eof" | "detach" {
    if (this.rules.oneShot) return "eof";
    this.detach(0);
    return "detach";
  }

  /** A signal to this process (SIGTERM, SIGHUP, SIGINT): leave, the session runs on. */
  signalled(sig: Deno.Signal): void {
    if (this.over) return;
    this.detach(signalStatus(sig), sig);
  }

  /** The remote process ended. */
  exited(code: number): void {
    if (this.over) return;
    this.phase = "ended";
    this.outcome = { kind: "exit", code, session: this.session ?? "" };
  }

  /**
   * The stream broke. Returns "reconnect" when it may come back; otherwise the error
   * that ends the attach (a final refusal, or an exec -t whose session ended with us).
   */
  lost(err: WireError): "reconnect" | TetherError {
    if (isFinal(err.code)) {
      return this.end(new TetherError(err.code, err.message, { hint: err.hint }));
    }
    if (this.rules.oneShot) {
      return this.end(new TetherError("session_lost", err.message, { hint: err.hint }));
    }
    this.phase = "reconnecting";
    return "reconnect";
  }

  /** A reattach was refused: the error that ends the attach, or undefined to try again. */
  reattachRefused(err: WireError): TetherError | undefined {
    if (err.code === "session_not_found") {
      return this.end(
        new TetherError(
          "session_lost",
          `session ${this.session} ended while we were away (the machine no longer has it)`,
          { hint: `start a new one: tether connect ${this.rules.machineName} --new` },
        ),
      );
    }
    if (isFinal(err.code)) {
      return this.end(new TetherError(err.code, err.message, { hint: err.hint }));
    }
    return undefined;
  }

  /** Reconnecting gave up after `windowMs`. */
  gaveUp(windowMs: number, last: string): TetherError {
    return this.end(
      new TetherError("session_lost", `could not reconnect within ${windowMs / 1000}s: ${last}`, {
        hint: `the session may still be running: tether connect ${this.rules.machineName} ` +
          `--session ${this.session}`,
      }),
    );
  }

  private detach(code: number, signal?: Deno.Signal): void {
    if (this.over) return;
    this.phase = "detached";
    this.outcome = {
      kind: "detach",
      code,
      session: this.session ?? "",
      ...(signal ? { signal } : {}),
    };
  }

  private end(e: TetherError): TetherError {
    this.phase = "ended";
    return e;
  }
}
