/**
 * `tether ci hold`: pause a CI job and make its runner an attachable machine until
 * someone resumes it, or a timeout says nobody will.
 *
 * Decisions (README "GitHub Actions" repeats the user-facing ones):
 *
 * - **Identity.** Each hold enrolls a fresh machine with `TETHER_AGENT_KEY`, kept in a new
 *   temp state dir (`$TMPDIR/tether-hold-*`) that is removed on exit. A runner is a
 *   throwaway VM, so nothing is worth keeping; a re-run gets a new machine id under the
 *   same name (the old one stays listed as offline).
 * - **Labels.** `ci=hold` (what `ci attach` waits for) and `continue_file=PATH` (so
 *   `ci attach` can say what to touch), plus the CI's own (see env.ts) and `--label`s.
 *   The two hold labels cannot be overridden by `--label`.
 * - **Continue file.** The hold resumes (returns 0) as soon as the file appears. A file
 *   already there at start is *not* deleted (it may be anything the user named); the hold
 *   says so and resumes when it is touched (its mtime or inode changes).
 * - **"Someone attached"** means a client reached the runner: an interactive session with
 *   at least one client (`tether ci attach`, `tether connect`, `tether exec -t`), seen
 *   through the agent's `onSessions` hook, or a plain `tether exec` (its `onStream` hook).
 *   Either stops the connect timeout and starts the session TTL.
 * - **Timeouts.** `--connect-timeout` runs from the start of the hold (connecting to the
 *   relay included) until the first attach. From the first attach, `--session-ttl` caps the
 *   rest of the hold: it is not reset by detaching or re-attaching. So a hold lasts at most
 *   connect-timeout + session-ttl. `--on-timeout` (continue → 0, fail → 1) applies to both.
 *   Attached clients are warned `TTL_WARNING_MS` (1 min) before the TTL, or at once when the
 *   TTL is shorter than that.
 * - **Ending.** However the hold ends (continue file, timeout, SIGINT/SIGTERM), attached
 *   clients get a notice starting with `HOLD_ENDED_NOTICE`; the hold waits until they have
 *   detached (at most 1 s), then stops the agent — sessions end (clients still attached get
 *   their exit status) and the connection closes, so the relay shows the machine offline at
 *   once — and removes the state dir.
 * - Configuration errors (no relay, no key, a key the relay refuses) fail the step (1): they
 *   are not timeouts. An unreachable relay is retried until the connect timeout.
 */
import { Agent } from "../agent/agent.ts";
import { within } from "../common/async.ts";
import { signalStatus } from "../common/signals.ts";
import type { SessionInfo } from "../protocol/messages.ts";
import {
  CONTINUE_FILE_LABEL,
  formatDuration,
  HOLD_ENDED_NOTICE,
  HOLD_LABEL,
  HOLD_LABEL_VALUE,
  type ReadyInfo,
  shellQuote,
  TTL_WARNING_MS,
} from "./contract.ts";

export interface HoldConfig {
  relay: string;
  enrollKey?: string;
  caFile?: string;
  dialTimeoutMs?: number;
  /** Allow plain ws:// to a relay that is not on loopback. */
  insecure?: boolean;
  name: string;
  labels: Record<string, string>;
  continueFile: string;
  connectTimeoutMs: number;
  sessionTtlMs: number;
  onTimeout: "continue" | "fail";
  /** How often a reminder line is printed (default 30 s). */
  reminderMs?: number;
  /** How often the continue file is checked (default 250 ms; `--poll`, hidden, for tests). */
  pollMs?: number;
  /** How long a detached session lives (agent default when unset). */
  sessionGraceMs?: number;
  /** Where commands and sessions start: the job's workspace. */
  workdir?: string;
}

export interface HoldIO {
  /** Once, when the machine is first online: the `::tether-ready::` marker and friends. */
  ready(info: ReadyInfo): void;
  /** A human line (stderr). */
  say(line: string): void;
}

export type HoldReason = "continue" | "connect_timeout" | "session_ttl" | "signal";

export interface HoldOutcome {
  code: number;
  reason: HoldReason;
  message: string;
}

/** How long the hold waits for attached clients to leave after its final notice. */
const DETACH_WAIT_MS = 1_000;
/** Bound on stopping the agent and its sessions' processes. */
const STOP_WAIT_MS = 10_000;

/** Runs a hold until it ends; throws only on configuration errors. */
export async function runHold(
  cfg: HoldConfig,
  io: HoldIO,
  signal: Promise<Deno.Signal>,
): Promise<HoldOutcome> {
  const start = Date.now();
  const file = cfg.continueFile;
  const baseline = statOf(file);
  if (baseline) {
    io.say(
      `tether: ${file} already exists (left over?); touch it again to resume`,
    );
  }
  const stateDir = await Deno.makeTempDir({ prefix: "tether-hold-" });

  let finished = false;
  let settle!: (o: HoldOutcome | Error) => void;
  const done = new Promise<HoldOutcome | Error>((r) => (settle = r));
  const finish = (o: HoldOutcome | Error) => {
    if (finished) return;
    finished = true;
    settle(o);
  };

  let online = false;
  let firstAttach: number | undefined;
  let clients = 0;
  let noClients: (() => void) | undefined;
  const timers: ReturnType<typeof setTimeout>[] = [];
  const policy = cfg.onTimeout === "fail"
    ? { code: 1, verb: "failing this step (--on-timeout fail)" }
    : { code: 0, verb: "resuming the workflow" };
  const touch = `touch ${shellQuote(file)}`;
  const attachCmd = `tether ci attach ${shellQuote(cfg.name)}`;

  const agent = new Agent({
    relay: cfg.relay,
    enrollKey: cfg.enrollKey,
    stateDir,
    name: cfg.name,
    labels: { ...cfg.labels, [HOLD_LABEL]: HOLD_LABEL_VALUE, [CONTINUE_FILE_LABEL]: file },
    caFile: cfg.caFile,
    dialTimeoutMs: cfg.dialTimeoutMs,
    insecure: cfg.insecure,
    log: (line) => io.say(`tether: ${line}`),
    sessions: cfg.sessionGraceMs !== undefined ? { graceMs: cfg.sessionGraceMs } : {},
    workdir: cfg.workdir,
    onOnline: (m) => {
      if (online || finished) return;
      online = true;
      io.ready({
        machine_id: m.id,
        name: m.name,
        relay: cfg.relay,
        continue_file: file,
        attach: attachCmd,
      });
      io.say(
        `tether: this job is held. Attach with \`${attachCmd}\` (or \`tether connect ${m.id}\`); ` +
          `resume it with \`${touch}\` on the runner.`,
      );
      io.say(
        `tether: the runner's end-to-end key is ${agent.fingerprint} (tether checks it on attach)`,
      );
      io.say(`tether: ${timeLeft()}`);
    },
    onSessions: (list: SessionInfo[]) => onSessions(list),
    onStream: (kind) => {
      if (kind === "exec" && firstAttach === undefined && !finished) {
        io.say("tether: a command ran on the runner (tether exec)");
        startTtl();
      }
    },
  });

  function timeLeft(): string {
    const now = Date.now();
    if (firstAttach === undefined) {
      const left = cfg.connectTimeoutMs - (now - start);
      return `the hold ends in ${roundUp(left)} if nobody attaches (--connect-timeout)`;
    }
    const left = cfg.sessionTtlMs - (now - firstAttach);
    return `the hold ends in ${roundUp(left)} (--session-ttl ${
      formatDuration(cfg.sessionTtlMs)
    }) unless resumed sooner`;
  }

  function onSessions(list: SessionInfo[]) {
    const before = clients;
    clients = list.reduce((n, s) => n + s.clients, 0);
    if (clients === 0) noClients?.();
    if (finished || clients === before) return;
    if (clients > 0) io.say(`tether: ${clients} client${clients === 1 ? "" : "s"} attached`);
    else io.say("tether: all clients detached; the job stays held");
    if (clients > 0 && firstAttach === undefined) startTtl();
  }

  function startTtl() {
    firstAttach = Date.now();
    clearTimeout(connectTimer);
    const ttl = cfg.sessionTtlMs;
    io.say(`tether: someone attached; ${timeLeft()}`);
    const warnIn = Math.max(0, ttl - TTL_WARNING_MS);
    timers.push(setTimeout(() => {
      const text = `this CI hold ends in ${formatDuration(ttl - warnIn)} (--session-ttl ${
        formatDuration(ttl)
      }); run '${touch}' to resume the workflow now${policy.code ? ", or the job fails then" : ""}`;
      agent.sessions.notifyAll(text);
      io.say(`tether: warned attached clients: ${text}`);
    }, warnIn));
    timers.push(setTimeout(() =>
      finish({
        code: policy.code,
        reason: "session_ttl",
        message: `the hold reached its --session-ttl of ${formatDuration(ttl)}; ${policy.verb}`,
      }), ttl));
  }

  const connectTimer = setTimeout(() => {
    const why = online
      ? `nobody attached within ${formatDuration(cfg.connectTimeoutMs)} (--connect-timeout)`
      : `the relay at ${cfg.relay} could not be reached within ${
        formatDuration(cfg.connectTimeoutMs)
      } (--connect-timeout), so nobody could attach`;
    finish({ code: policy.code, reason: "connect_timeout", message: `${why}; ${policy.verb}` });
  }, cfg.connectTimeoutMs);

  timers.push(setInterval(() => {
    if (continueAppeared(file, baseline)) {
      finish({
        code: 0,
        reason: "continue",
        message: `${file} appeared: resuming the workflow`,
      });
    }
  }, cfg.pollMs ?? 250));

  timers.push(setInterval(() => {
    if (finished) return;
    const what = online
      ? clients > 0
        ? `${clients} client${clients === 1 ? "" : "s"} attached`
        : `waiting; attach with \`${attachCmd}\``
      : `connecting to ${cfg.relay}`;
    io.say(`tether: still holding (${what}); resume with \`${touch}\`; ${timeLeft()}`);
  }, cfg.reminderMs ?? 30_000));

  signal.then((sig) =>
    finish({
      code: signalStatus(sig),
      reason: "signal",
      message: `${sig}: the job was cancelled; ending the hold`,
    })
  );

  const running = agent.run().then(
    () => {},
    (e) => finish(e instanceof Error ? e : new Error(String(e))),
  );

  // Checked once before waiting, so a file created in the very first moments counts too.
  if (continueAppeared(file, baseline)) {
    finish({ code: 0, reason: "continue", message: `${file} appeared: resuming the workflow` });
  }
  const outcome = await done;
  clearTimeout(connectTimer);
  for (const t of timers) clearTimeout(t);

  if (!(outcome instanceof Error)) {
    const notice = `${HOLD_ENDED_NOTICE}: ${
      outcome.reason === "continue"
        ? "the continue file appeared; the workflow resumes"
        : outcome.reason === "signal"
        ? "the job was cancelled"
        : outcome.message
    }`;
    if (agent.sessions.notifyAll(notice) > 0 && clients > 0) {
      await within(DETACH_WAIT_MS, new Promise<void>((r) => (noClients = r)));
    }
  }
  // The hold's machine leaves the registry: its job is over, its name is free again.
  await within(STOP_WAIT_MS, Promise.all([agent.stop({ retire: true }), running]));
  await Deno.remove(stateDir, { recursive: true }).catch(() => {});
  if (outcome instanceof Error) throw outcome;
  return outcome;
}

interface FileStamp {
  mtime: number;
  ino: number | null;
}

function statOf(path: string): FileStamp | undefined {
  try {
    const s = Deno.statSync(path);
    return { mtime: s.mtime?.getTime() ?? 0, ino: s.ino };
  } catch {
    return undefined;
  }
}

/** True when the file exists and is not the one that was already there at start. */
function continueAppeared(path: string, baseline: FileStamp | undefined): boolean {
  const now = statOf(path);
  if (!now) return false;
  return !baseline || now.mtime !== baseline.mtime || now.ino !== baseline.ino;
}

/** A time left, in whole seconds (rounded up) once it is a second or more. */
function roundUp(ms: number): string {
  return formatDuration(ms >= 1000 ? Math.ceil(ms / 1000) * 1000 : ms);
}
