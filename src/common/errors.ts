/** Error codes (README "Common errors", docs/PROTOCOL.md); every failure a user or program sees carries one. */
export const ERROR_CODES = [
  "usage",
  "not_configured",
  "relay_unreachable",
  "unauthenticated",
  "forbidden",
  "machine_not_found",
  "ambiguous_machine",
  "machine_offline",
  "password_required",
  "password_invalid",
  "rate_limited",
  "session_not_found",
  "session_lost",
  "timeout",
  "interactive_required",
  "relay_unavailable",
  "forward_failed",
  "integrity",
  "machine_key_changed",
  "internal",
] as const;

export type ErrorCode = typeof ERROR_CODES[number];

export function isErrorCode(s: unknown): s is ErrorCode {
  return typeof s === "string" && (ERROR_CODES as readonly string[]).includes(s);
}

/**
 * Refusals that retrying cannot change. A client that meets one ends at once
 * with it; an agent stops. Everything else (relay_unreachable,
 * relay_unavailable, rate_limited, machine_offline, session_lost, timeout,
 * internal) may pass, and is retried with capped, jittered backoff where a
 * retry makes sense.
 */
const FINAL: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  "usage",
  "not_configured",
  "unauthenticated",
  "forbidden",
  "machine_not_found",
  "ambiguous_machine",
  "password_required",
  "password_invalid",
  "session_not_found",
  "interactive_required",
  "integrity",
  "machine_key_changed",
]);

export function isFinal(code: ErrorCode): boolean {
  return FINAL.has(code);
}

/** A candidate shown with `ambiguous_machine` and similar errors. */
export interface Candidate {
  id: string;
  name: string;
  online?: boolean;
  [k: string]: unknown;
}

/**
 * The one error type that crosses layers. Deep code throws it; the CLI's top
 * level prints it (two human lines, or one JSON object) and picks the exit code.
 */
export class TetherError extends Error {
  readonly code: ErrorCode;
  readonly hint?: string;
  readonly candidates?: Candidate[];
  /** For `rate_limited`: how long the other side asked us to wait. */
  readonly retryAfterMs?: number;
  /**
   * The exit status the failing command's role implies (255 from exec and connect, as
   * ssh); unset, the CLI exits 2 for `usage` and 1 otherwise.
   */
  readonly status?: number;

  constructor(
    code: ErrorCode,
    message: string,
    opts: {
      hint?: string;
      candidates?: Candidate[];
      cause?: unknown;
      retryAfterMs?: number;
      status?: number;
    } = {},
  ) {
    super(message, { cause: opts.cause });
    this.name = "TetherError";
    this.code = code;
    this.hint = opts.hint;
    this.candidates = opts.candidates;
    this.retryAfterMs = opts.retryAfterMs;
    this.status = opts.status;
  }

  /** This error, failing a command whose role implies exit status `status`. */
  withStatus(status: number): TetherError {
    if (this.code === "usage" || this.status !== undefined) return this;
    return new TetherError(this.code, this.message, {
      hint: this.hint,
      candidates: this.candidates,
      cause: this.cause,
      retryAfterMs: this.retryAfterMs,
      status,
    });
  }

  /** The exit status for this failure. */
  get exitStatus(): number {
    return this.status ?? (this.code === "usage" ? 2 : 1);
  }

  toJSON(): { code: ErrorCode; message: string; hint?: string; candidates?: Candidate[] } {
    const o: { code: ErrorCode; message: string; hint?: string; candidates?: Candidate[] } = {
      code: this.code,
      message: this.message,
    };
    if (this.hint) o.hint = this.hint;
    if (this.candidates) o.candidates = this.candidates;
    return o;
  }
}

export function usage(message: string, hint?: string): TetherError {
  return new TetherError("usage", message, { hint: hint ?? "see --help" });
}

/** Anything thrown, as the `{code, message, hint}` a peer is told. */
export function errorBody(
  e: unknown,
): { code: ErrorCode; message: string; hint?: string; candidates?: Candidate[] } {
  return e instanceof TetherError
    ? e.toJSON()
    : { code: "internal", message: (e as Error)?.message ?? String(e) };
}

/** A machine whose agent is not connected; `lastSeenAgo` (e.g. "5m") says since when. */
export function machineOffline(m: { id: string; name: string }, lastSeenAgo?: string): TetherError {
  return new TetherError("machine_offline", `machine ${m.name} (${m.id.slice(0, 8)}) is offline`, {
    hint: `${lastSeenAgo ? `last seen ${lastSeenAgo} ago; ` : ""}start its agent ` +
      "(`tether agent run`), or pick an online machine (`tether machines`)",
  });
}
