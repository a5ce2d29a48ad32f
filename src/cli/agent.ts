/** `tether agent run`: make this machine reachable through a relay. */
import type { Command } from "@commander-js/extra-typings";
import { resolve } from "node:path";
import { parseAuthorizedKeys } from "../protocol/e2e_keys.ts";
import { parseDuration } from "../common/duration.ts";
import { usage } from "../common/errors.ts";
import { defaultAgentStateDir } from "../common/paths.ts";
import { dialTimeoutMs } from "../client/config.ts";
import {
  type Act,
  agentRelay,
  collect,
  globals,
  parsePairs,
  takeEnv,
  untilSignal,
} from "./context.ts";

/**
 * `--ring-bytes`: at least 512 KiB. A client gives credit back a quarter of its window
 * (256 KiB) at a time, so a smaller ring would stop the reading before that credit comes.
 */
function parseSize(text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 524288 || n > 1024 * 1024 * 1024) {
    throw usage(`invalid --ring-bytes '${text}'`, "give a byte count from 524288 to 1073741824");
  }
  return n;
}

/** The absolute path of an existing directory, or a usage error naming the flag. */
export function existingDir(path: string, flag: string): string {
  const abs = resolve(path);
  let ok = false;
  try {
    ok = Deno.statSync(abs).isDirectory;
  } catch { /* below */ }
  if (!ok) throw usage(`${flag} ${path}: not an existing directory`);
  return abs;
}

/** An authorized keys file that exists and parses now: a typo is said at start. */
function authorizedKeysFile(path: string): string {
  const abs = resolve(path);
  let text: string;
  try {
    text = Deno.readTextFileSync(abs);
  } catch (e) {
    throw usage(`--authorized-keys ${path}: ${(e as Error).message}`);
  }
  parseAuthorizedKeys(text, path);
  return abs;
}

export function registerAgent(program: Command, act: Act) {
  const agent = program.command("agent").description("run the agent on a target machine");
  agent.command("run")
    .description("dial the relay and serve commands (enrollment key from TETHER_AGENT_KEY)")
    .option("--name <name>", "machine name (default: the hostname)")
    .option("--label <k=v>", "a label; repeatable", collect, [] as string[])
    .option("--state-dir <dir>", "where the machine identity is kept")
    .option("--session-grace <dur>", "how long a detached session lives", "30s")
    .option("--ring-bytes <n>", "output kept per session for replay and resume", "1048576")
    .option("--workdir <dir>", "where commands and sessions start (default: $HOME)")
    .option(
      "--exec-retention <dur>",
      "how long an ended exec's output and exit status are kept (tether exec --attach)",
      "1h",
    )
    .option(
      "--allow-user <user>",
      "as root: let `tether ssh USER@MACHINE` run commands as USER (repeatable; * for any)",
      collect,
      [] as string[],
    )
    .option("--sftp-server <path>", "the sftp server for `tether ssh -s sftp` and scp/sftp")
    .option("--no-forward", "refuse `tether forward` and `tether proxy` to this machine")
    .option(
      "--authorized-keys <file>",
      "only clients whose key is in FILE (lines from `tether whoami`) may open streams",
    )
    .option("--audit-log <file>", "append a JSON line per command or session started to FILE")
    .action(act(async (opts, cmd) => {
      const g = globals(cmd);
      const graceMs = parseDuration(opts.sessionGrace, "--session-grace");
      const relay = agentRelay(g, "agent", "pass --relay URL or set TETHER_RELAY");
      // Imported here so that a client's start does not evaluate the agent (BENCHMARKS item 4).
      const { Agent } = await import("../agent/agent.ts");
      const a = new Agent({
        insecure: g.insecure,
        relay,
        enrollKey: takeEnv("TETHER_AGENT_KEY"),
        stateDir: opts.stateDir || defaultAgentStateDir(),
        name: opts.name,
        labels: parsePairs(opts.label, "--label"),
        caFile: g.caFile || Deno.env.get("TETHER_CA_FILE"),
        dialTimeoutMs: dialTimeoutMs(g),
        sessions: { graceMs, ringBytes: parseSize(opts.ringBytes) },
        workdir: opts.workdir ? existingDir(opts.workdir, "--workdir") : undefined,
        execRetentionMs: parseDuration(opts.execRetention, "--exec-retention"),
        remote: { allowUsers: opts.allowUser, sftpServer: opts.sftpServer },
        noForward: opts.forward === false,
        authorizedKeys: opts.authorizedKeys ? authorizedKeysFile(opts.authorizedKeys) : undefined,
        auditLog: opts.auditLog,
      });
      console.error(`agent: end-to-end key ${a.fingerprint}`);
      const stop = untilSignal().then(() => a.stop());
      await Promise.race([a.run(), stop]);
      await a.stop();
    }));
}
