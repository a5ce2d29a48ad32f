/**
 * Process groups, for everything the agent runs: each exec and each session
 * leads its own process group (and session), so one signal reaches all of it.
 */

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

/** Why `argv0` cannot run, as a shell says it (126 or 127), or undefined when it can. */
export function notRunnable(
  argv0: string,
  path: string | undefined,
  cwd: string | undefined,
): { message: string; code: 126 | 127 } | undefined {
  const candidates = argv0.includes("/")
    ? [argv0.startsWith("/") || !cwd ? argv0 : `${cwd}/${argv0}`]
    : (path ?? "/usr/local/bin:/usr/bin:/bin").split(":").map((d) =>
      `${d === "" ? cwd ?? "." : d}/${argv0}`
    );
  let denied = false;
  for (const c of candidates) {
    try {
      const st = Deno.statSync(c);
      if (st.isFile && st.mode !== null && (st.mode & 0o111) !== 0) return undefined;
      denied = true;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory)) {
        denied = true;
      }
    }
  }
  return denied
    ? { message: `${argv0}: Permission denied`, code: 126 }
    : { message: `${argv0}: command not found`, code: 127 };
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
  const problem = notRunnable(argv[0], path, cwd);
  if (problem) throw new NotRunnable(problem.message, problem.code);
  return new Deno.Command(setsid, { ...opts, args: argv }).spawn();
}

/** A command that cannot start (not found: 127; not executable: 126). */
export class NotRunnable extends Error {
  constructor(message: string, readonly code: 126 | 127) {
    super(message);
    this.name = "NotRunnable";
  }
}
