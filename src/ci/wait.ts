/**
 * `tether ci attach MACHINE --wait DUR`: wait for a CI hold to be online.
 *
 * The query goes through the one resolver (exact id, name, hostname, then the part after
 * the last `:` of a name, then a unique prefix), applied to the **online** machines labelled
 * `ci=hold`. Re-runs enroll a new machine under the same name, so offline holds of earlier
 * runs are many and must not make the name ambiguous.
 *
 * What counts as "the job ended" (decision, README repeats it):
 *
 * - A matching hold that appeared after the wait began and has retired (a hold that ends
 *   leaves the registry; the relay still answers for it a while when asked) or is offline
 *   (for `goneConfirmMs`, so an agent reconnecting is not mistaken for an end) came and went:
 *   `machine_offline`, its job ended or resumed before we could attach. Waiting longer
 *   would not bring it back. (The CLI reports the same when the hold goes away between
 *   being found and being attached.)
 * - Matching holds that were **already offline when the wait began** are earlier runs (or
 *   this run's hold, already over): they do not end the wait, because the common flow is to
 *   run `ci attach` right after pushing, while an older hold of the same job is still
 *   listed. They are reported through `onProgress` (`ended`), and if the wait runs out, the
 *   `timeout` error names the newest one and how long ago it went offline.
 * - Several online holds matching (matrix legs share a job key) is `ambiguous_machine` at
 *   once, with the candidates.
 *
 * Every wait is bounded by `waitMs`; a lost relay connection is retried within it.
 */
import { formatAge } from "../common/duration.ts";
import { TetherError } from "../common/errors.ts";
import { formatDuration, isHold } from "./contract.ts";
import type { MachineView } from "../client/relay_client.ts";
import { resolveMachine } from "../client/resolve.ts";

export interface WaitProgress {
  elapsedMs: number;
  /** Number of polls answered so far. */
  polls: number;
  /** The newest matching hold that was already offline when the wait began. */
  ended?: MachineView;
  /** The last relay error, while it is being retried. */
  relayError?: string;
}

export interface WaitOptions {
  waitMs: number;
  pollMs?: number;
  goneConfirmMs?: number;
  onProgress?: (p: WaitProgress) => void;
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
}

/** Does `m` answer to `query` under any rule of the resolver? */
export function answersTo(m: MachineView, query: string): boolean {
  try {
    resolveMachine([m], query);
    return true;
  } catch {
    return false;
  }
}

export async function waitForHold(
  list: () => Promise<MachineView[]>,
  query: string,
  opts: WaitOptions,
): Promise<MachineView> {
  const now = opts.now ?? Date.now;
  const sleep = opts.sleep ?? ((ms) => new Promise<void>((r) => setTimeout(r, ms)));
  const pollMs = opts.pollMs ?? 500;
  const goneConfirmMs = opts.goneConfirmMs ?? 2_000;
  const start = now();
  let known: Set<string> | undefined;
  const offlineSince = new Map<string, number>();
  let ended: MachineView | undefined;
  let polls = 0;
  let relayError: string | undefined;
  let nonHold: MachineView | undefined;

  for (;;) {
    let ms: MachineView[] | undefined;
    try {
      ms = await list();
      relayError = undefined;
    } catch (e) {
      if (!(e instanceof TetherError) || !retryable(e)) throw e;
      relayError = e.message;
    }
    if (ms) {
      polls++;
      const matching = ms.filter((m) => isHold(m) && answersTo(m, query));
      if (known === undefined) {
        // First answer: what is already offline belongs to earlier runs.
        known = new Set(ms.map((m) => m.id));
        ended = newest(matching.filter((m) => !m.online));
      }
      const online = ms.filter((m) => isHold(m) && m.online);
      let hit: MachineView | undefined;
      try {
        hit = resolveMachine(online, query);
      } catch (e) {
        if (!(e instanceof TetherError) || e.code !== "machine_not_found") throw e;
      }
      if (hit) return hit;

      // Nothing online matches. A matching hold that was not there when the wait began
      // came and went in between: its job is over (once it stays offline a moment).
      for (const m of matching) {
        if (known.has(m.id)) continue;
        if (m.retired) throw gone(m); // it left the registry: its job is over
        const since = offlineSince.get(m.id) ?? now();
        offlineSince.set(m.id, since);
        if (now() - since >= goneConfirmMs) throw gone(m);
      }
      nonHold = ms.find((m) => !isHold(m) && m.online && answersTo(m, query));
    }
    const elapsed = now() - start;
    opts.onProgress?.({ elapsedMs: elapsed, polls, ended, relayError });
    if (elapsed >= opts.waitMs) throw timedOut(query, opts.waitMs, ended, nonHold, relayError);
    await sleep(Math.min(pollMs, opts.waitMs - elapsed));
  }
}

/** The error for a hold that went away before we could attach. */
export function gone(m: { id: string; name: string }): TetherError {
  return new TetherError(
    "machine_offline",
    `the CI hold ${m.name} (${m.id.slice(0, 8)}) went offline before we could attach: ` +
      "its job ended or was resumed",
    {
      hint: "re-run the job with its `tether ci hold` step, then run `tether ci attach` again",
    },
  );
}

function timedOut(
  query: string,
  waitMs: number,
  ended: MachineView | undefined,
  nonHold: MachineView | undefined,
  relayError: string | undefined,
): TetherError {
  let hint: string;
  if (relayError) hint = `the relay was unreachable: ${relayError}`;
  else if (ended) {
    hint = `the last hold matching it, ${ended.name} (${ended.id.slice(0, 8)}), went offline ${
      formatAge(ended.heartbeat_age_ms)
    } ago: its job ended; re-run the job with the hold step`;
  } else if (nonHold) {
    hint = `${nonHold.name} (${
      nonHold.id.slice(0, 8)
    }) matches but is not a CI hold (no ci=hold label); use \`tether connect\` for it`;
  } else {
    hint = "check that the job reached its `tether ci hold` step and uses this relay " +
      "(its log shows a ::tether-ready:: line); wait longer with --wait";
  }
  return new TetherError(
    "timeout",
    `no CI hold matching '${query}' came online within ${formatDuration(waitMs)}`,
    { hint },
  );
}

function retryable(e: TetherError): boolean {
  return e.code === "relay_unreachable" || e.code === "session_lost";
}

function newest(ms: MachineView[]): MachineView | undefined {
  return ms.reduce<MachineView | undefined>(
    (best, m) => (!best || m.heartbeat_age_ms < best.heartbeat_age_ms ? m : best),
    undefined,
  );
}
