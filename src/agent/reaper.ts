/**
 * Work dies with the agent. Everything the agent runs (an exec, a session's
 * shell) leads its own session and process group, so nothing reaches it when
 * the agent itself is killed with SIGKILL or by the OOM killer: it would run
 * on under PID 1, unseen and unstoppable.
 *
 * The reaper is a small `/bin/sh` process, in a session of its own (a signal
 * to the agent's process group does not reach it), that learns each group
 * the agent starts and ends on its stdin (`+PID`, `-PID`). The agent holds
 * the only write end of that pipe, so when the agent dies, for whatever
 * reason, the reaper reads end-of-file and ends what is left: SIGTERM to each
 * group and to every process of each session (jobs a shell moved to groups of
 * their own), SIGKILL a second later. A clean stop says `bye` first.
 *
 * (Linux's PR_SET_PDEATHSIG would reach only the direct child, not what it
 * started; a reaper sees whole sessions.)
 */

const SCRIPT = `
ids=" "
while IFS= read -r line; do
  case $line in
    +*) ids="$ids\${line#+} " ;;
    -*) id=" \${line#-} "
        case $ids in *"$id"*) ids="\${ids%%"$id"*} \${ids#*"$id"}" ;; esac ;;
    bye) exit 0 ;;
  esac
done
[ "$ids" = " " ] && exit 0
sweep() {
  sig=$1
  for id in $ids; do kill -s "$sig" -- "-$id" 2>/dev/null; done
  for f in /proc/[0-9]*/stat; do
    read -r st < "$f" 2>/dev/null || continue
    pid=\${f#/proc/}; pid=\${pid%/stat}
    set -- \${st##*) }
    for id in $ids; do
      if [ "$3" = "$id" ] || [ "$4" = "$id" ]; then kill -s "$sig" "$pid" 2>/dev/null; fi
    done
  done
}
sweep TERM
sleep 1
sweep KILL
`;

export class Reaper {
  private writer?: WritableStreamDefaultWriter<Uint8Array>;
  /** Groups still running, as told to the reaper. */
  private readonly groups = new Set<number>();
  private child?: Deno.ChildProcess;
  private readonly enc = new TextEncoder();

  /** Starts the reaper; without /bin/sh it says why and the agent goes on without one. */
  constructor(log: (line: string) => void) {
    try {
      this.child = new Deno.Command("/bin/sh", {
        args: ["-c", SCRIPT],
        stdin: "piped",
        stdout: "null",
        stderr: "null",
        detached: true,
      }).spawn();
      this.writer = this.child.stdin.getWriter();
      this.child.unref();
      this.child.status.then(() => (this.writer = undefined));
    } catch (e) {
      log(
        `cannot start the reaper (/bin/sh): ${(e as Error).message}; ` +
          "commands would outlive an agent that is killed",
      );
    }
  }

  /** Process group (and session) `pid` now runs on the agent's behalf. */
  add(pid: number): void {
    this.groups.add(pid);
    this.say(`+${pid}`);
  }

  /** Process group `pid` has ended. */
  remove(pid: number): void {
    this.groups.delete(pid);
    this.say(`-${pid}`);
  }

  /**
   * The agent stops: if it ended all its work itself, the reaper just leaves;
   * whatever is still running, the reaper ends (as if the agent had died).
   */
  async close(): Promise<void> {
    const w = this.writer;
    this.writer = undefined;
    if (!w) return;
    if (this.groups.size === 0) await w.write(this.enc.encode("bye\n")).catch(() => {});
    await w.close().catch(() => {});
    await this.child?.status;
  }

  private say(line: string): void {
    this.writer?.write(this.enc.encode(`${line}\n`)).catch(() => {});
  }
}
