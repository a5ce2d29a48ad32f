/**
 * What `tether ci hold` (on the runner) and `tether ci attach` (on a laptop) agree on.
 * They never talk to each other directly: the hold publishes these labels with its
 * machine (visible in `tether machines --json`) and sends these notices to attached
 * clients; `ci attach` reads them back.
 */

/** Label every hold carries; `ci attach` waits only for machines that have it. */
import { HOLD_LABEL, HOLD_LABEL_VALUE } from "../protocol/messages.ts";
/**
 * Default `if:` of the hold step `tether ci inject` adds; see inject.ts's module comment for
 * why not `always()`.
 */
export const DEFAULT_HOLD_CONDITION = "${{ !cancelled() }}";

export { HOLD_LABEL, HOLD_LABEL_VALUE };
/** Label holding the continue file path, so `ci attach` can tell the user what to touch. */
export const CONTINUE_FILE_LABEL = "continue_file";
export const DEFAULT_CONTINUE_FILE = "/tmp/tether-continue";

/** The one stdout line a hold prints once online: this prefix, then a JSON object. */
export const READY_MARKER = "::tether-ready::";

/**
 * Every notice the hold sends as it ends starts with this. `ci attach` detaches when
 * it sees it, rather than reconnecting to a machine that is going away.
 */
export const HOLD_ENDED_NOTICE = "CI hold ended";

/** Defaults of `ci hold` and `ci attach` (README and --help repeat them). */
export const DEFAULT_CONNECT_TIMEOUT = "10m";
export const DEFAULT_SESSION_TTL = "60m";
export const DEFAULT_ATTACH_WAIT = "10m";
/** How long before the session TTL attached clients are warned. */
export const TTL_WARNING_MS = 60_000;

export interface ReadyInfo {
  machine_id: string;
  name: string;
  relay: string;
  continue_file: string;
  /** The command a developer runs to attach. */
  attach: string;
}

/** Is this machine a CI hold? */
export function isHold(m: { labels: Record<string, string> }): boolean {
  return m.labels?.[HOLD_LABEL] === HOLD_LABEL_VALUE;
}

/** The continue file a hold announced (the default for holds that did not say). */
export function continueFileOf(m: { labels: Record<string, string> }): string {
  return m.labels?.[CONTINUE_FILE_LABEL] || DEFAULT_CONTINUE_FILE;
}

/** Quotes one word for a POSIX shell, only when it needs it. */
export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}

/** `1h30m`, `10m`, `45s`, `500ms`: a duration as the flags take it. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))}ms`;
  let s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  return `${h ? `${h}h` : ""}${m ? `${m}m` : ""}${s || (!h && !m) ? `${s}s` : ""}`;
}
