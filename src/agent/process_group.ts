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
