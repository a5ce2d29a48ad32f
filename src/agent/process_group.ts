/**
 * Process groups, for everything the agent runs: each exec and each session
 * leads its own process group (and session), so one signal reaches all of it.
 */

import { DEFAULT_PATH, executableByMode, resolveCommand } from "./command_path.ts";

/** Time between SIGTERM and SIGKILL when a process group is ended. */
export const KILL_GRACE_MS = 2_000;

/**
 * Sends `sig` to the whole process group led by `pid`; quiet if it is gone. If there is
 * no such group, to `pid` alone — unless `leaderAlive` is false: a reaped pid may be
 * someone else's by now.
 */
export function killGroup(pid: number, sig: Deno.Signal, leaderAlive = true): void {
  try {
    Deno.kill(-pid, sig);
  } catch {
    if (!leaderAlive) return;
    try {
      Deno.kill(pid, sig);
    } catch { /* already gone */ }
  }
}

/**
 * SIGTERM to the group now, SIGKILL after the grace unless `done` (the leader's exit)
 * settles first. `leaderAlive`: false once the leader was reaped.
 */
export function endGroup(pid: number, done: Promise<unknown>, leaderAlive = true): void {
  killGroup(pid, "SIGTERM", leaderAlive);
  const t = setTimeout(() => killGroup(pid, "SIGKILL", leaderAlive), KILL_GRACE_MS);
  done.finally(() => {
    clearTimeout(t);
    // Children that outlived the leader still hold the group; finish them (the leader's
    // pid alone may be someone else's by now).
    killGroup(pid, "SIGKILL", false);
  });
}

/**
 * The `setsid` program (util-linux, or busybox), looked up once; null where there is none
 * (macOS). See {@link spawnInSession}.
 */
let setsidProgram: string | null | undefined;

function findSetsid(): string | null {
  if (setsidProgram !== undefined) return setsidProgram;
  setsidProgram = null;
  for (const p of ["/usr/bin/setsid", "/bin/setsid"]) {
    try {
      if (Deno.statSync(p).isFile) return (setsidProgram = p);
    } catch { /* not here */ }
  }
  return setsidProgram;
}

/**
 * Starts `argv` as the leader of a new session (and process group), so one signal
 * reaches everything it starts.
 *
 * Deno's `detached: true` does this with setsid() in the child between fork and exec,
 * which makes the runtime fork the agent's whole address space: ~11 ms per command on the
 * 2-core bench machine, against ~3 ms for the vfork-style spawn it uses otherwise
 * (docs/BENCHMARKS.md item 4). So where a `setsid` program exists, the agent spawns that
 * the fast way and it calls setsid() and executes the command in the same process: the
 * pid is the command's, and it leads its own session as before. `setsid` forks only when
 * its caller leads a process group, which a child the agent just spawned never does.
 * Without the program, `detached: true`.
 *
 * The command is looked up first (with the PATH it will run with), so that a missing one
 * fails here with a shell's message and status, as it did when Deno spawned it directly.
 */
export function spawnInSession(
  argv: string[],
  opts: Omit<Deno.CommandOptions, "args" | "detached">,
): Deno.ChildProcess {
  const setsid = findSetsid();
  if (!setsid) {
    return new Deno.Command(argv[0], { ...opts, args: argv.slice(1), detached: true }).spawn();
  }
  const cwd = opts.cwd instanceof URL ? opts.cwd.pathname : opts.cwd;
  const path = opts.env?.PATH ?? (opts.clearEnv ? undefined : Deno.env.get("PATH"));
  try {
    resolveCommand(argv[0], path ?? DEFAULT_PATH, cwd, executableByMode);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new NotRunnable(e.message, 127);
    if (e instanceof Deno.errors.PermissionDenied) throw new NotRunnable(e.message, 126);
    throw e;
  }
  return new Deno.Command(setsid, { ...opts, args: argv }).spawn();
}

/** A command that cannot start (not found: 127; not executable: 126). */
export class NotRunnable extends Error {
  constructor(message: string, readonly code: 126 | 127) {
    super(message);
    this.name = "NotRunnable";
  }
}
