/**
 * Client-side pieces of `tether ci attach`: the terminal wrapper that detaches when the
 * hold says it is ending, the choice of session to join, and the connection info printed
 * instead of attaching (no TTY, or `--json`).
 */
import type { Terminal } from "../client/attach.ts";
import { continueFileOf, HOLD_ENDED_NOTICE, shellQuote } from "./contract.ts";
import type { MachineView, SessionView } from "../client/relay_client.ts";

/**
 * Wraps a terminal so that a hold's final notice ends the attach as a detach: input reads
 * return end-of-file once the notice has been shown. Without this the client would see the
 * machine vanish and spend a minute trying to reconnect to it.
 */
export function holdAwareTerminal(inner: Terminal): {
  term: Terminal;
  /** The hold's final notice, once it came. */
  ended(): string | undefined;
} {
  let notice: string | undefined;
  let wake!: () => void;
  const endedP = new Promise<null>((r) => (wake = () => r(null)));
  const term: Terminal = {
    read: (buf) =>
      notice !== undefined ? Promise.resolve(null) : Promise.race([
        inner.read(buf),
        endedP,
      ]),
    write: (data) => inner.write(data),
    status(line) {
      inner.status(line);
      const at = line.indexOf(HOLD_ENDED_NOTICE);
      if (at >= 0 && notice === undefined) {
        notice = line.slice(at).replace(/\]$/, "");
        wake();
      }
    },
    isTerminal: inner.isTerminal,
    size: () => inner.size(),
    setRaw: (raw) => inner.setRaw(raw),
    onResize: (cb) => inner.onResize(cb),
  };
  return { term, ended: () => notice };
}

/**
 * The session to join: the one with the most clients (so a second developer joins the
 * first one's shell), then the oldest; undefined (a new session) when there is none.
 */
export function pickSession(live: SessionView[]): string | undefined {
  const sorted = [...live].sort((a, b) =>
    b.clients - a.clients || a.created.localeCompare(b.created)
  );
  return sorted[0]?.id;
}

/** What `ci attach --json` prints (and, as lines, without a TTY). */
export interface HoldConnectionInfo {
  machine_id: string;
  name: string;
  hostname: string;
  relay: string;
  labels: Record<string, string>;
  continue_file: string;
  /** The exact command that attaches (a full machine id, so never ambiguous). */
  connect: string;
  /** A command that resumes the job from outside the session. */
  resume: string;
}

export function connectionInfo(m: MachineView, relay: string): HoldConnectionInfo {
  const file = continueFileOf(m);
  const base = `tether --relay ${shellQuote(relay)}`;
  return {
    machine_id: m.id,
    name: m.name,
    hostname: m.hostname,
    relay,
    labels: m.labels,
    continue_file: file,
    connect: `${base} connect ${m.id}`,
    resume: `${base} exec ${m.id} -- touch ${shellQuote(file)}`,
  };
}
