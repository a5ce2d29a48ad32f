/**
 * `tether ci hold|attach|inject`: debug a CI job by pausing it on its runner (issue 7).
 * The work lives in its own room, src/ci/ (it uses the agent and the client; neither uses it):
 * hold.ts (the hold), wait.ts and attach.ts (waiting for and attaching to a hold), inject.ts
 * (the workflow edit); this file parses flags and prints.
 */
import { hostname } from "node:os";
import { dirname, join } from "node:path";
import { type Command, Option } from "@commander-js/extra-typings";
import { ciIdentity } from "../ci/env.ts";
import { processTerminal } from "../client/attach.ts";
import {
  connectionInfo,
  holdAwareTerminal,
  type HoldConnectionInfo,
  pickSession,
} from "../ci/attach.ts";
import {
  continueFileOf,
  DEFAULT_ATTACH_WAIT,
  DEFAULT_CONNECT_TIMEOUT,
  DEFAULT_CONTINUE_FILE,
  DEFAULT_HOLD_CONDITION,
  DEFAULT_SESSION_TTL,
  formatDuration,
  HOLD_ENDED_NOTICE,
  READY_MARKER,
  type ReadyInfo,
  shellQuote,
} from "../ci/contract.ts";
import type { InjectResult } from "../ci/inject.ts";
import { gone, waitForHold, type WaitProgress } from "../ci/wait.ts";
import { type ClientConfig, dialTimeoutMs } from "../client/config.ts";
import { type MachineView, RelayClient } from "../client/relay_client.ts";
import { formatAge, parseDuration } from "../common/duration.ts";
import { TetherError, usage } from "../common/errors.ts";
import { visible } from "../common/text.ts";
import { attachWithBanner } from "./attach_banner.ts";
import {
  type Act,
  agentRelay,
  clientConfig,
  collect,
  globals,
  parsePairs,
  takeEnv,
  untilSignal,
} from "./context.ts";
import { printJson, say } from "./output.ts";
import { writeAll } from "../common/bytes.ts";

const enc = new TextEncoder();

export function registerCi(program: Command, act: Act) {
  const ci = program.command("ci").description("pause a CI job and attach to its runner");
  registerHold(ci, act);
  registerAttach(ci, act);
  registerInject(ci, act);
}

// ------------------------------------------------------------------ ci hold

const HOLD_HELP = `
Once online it prints one line \`${READY_MARKER}{"machine_id":…,"name":…,"relay":…}\` on stdout
and how to attach and resume on stderr, then a reminder every 30 s. It returns:
  0  when the continue file appears (touch it, in the session or with \`tether exec\`)
  0  (--on-timeout continue) or 1 (fail) when nobody attached within --connect-timeout, or
     when --session-ttl has passed since the first attach (clients are warned 1 min before)
  130/143 on SIGINT/SIGTERM (the job was cancelled)
"Attached" means an interactive session with a client (ci attach, connect, exec -t); a plain
\`tether exec\` works during the hold but does not stop the connect timeout.`;

const ATTACH_HELP = `
Only online machines labelled ci=hold count; offline holds of earlier runs are ignored (and
named if the wait runs out). A hold that appears and ends before we attach is an error
(machine_offline); the wait running out is \`timeout\`. On a terminal it attaches (joining
the running session, if any) and detaches by itself when the hold ends. Otherwise (no
terminal, --json or --no-interactive) it prints machine_id, name, relay, continue_file,
and the exact connect and resume commands.`;

const INJECT_HELP = `
The step runs \`tether ci hold\` (tether must be on the runner's PATH) with TETHER_RELAY and
TETHER_AGENT_KEY from the repository secrets of those names. N counts steps from 1; 0 holds
before the first step. A job that already has a hold step is an error, as are an N out of
range, an unknown job, several jobs without --job, and a file that is not a workflow; then
nothing is written.`;

function registerHold(ci: Command, act: Act) {
  ci.command("hold")
    .description(
      "pause this CI job: run an agent labelled ci=hold until the continue file appears " +
        "(TETHER_RELAY and TETHER_AGENT_KEY from the environment)",
    )
    .option(
      "--name <name>",
      "machine name (default: WORKFLOW_FILE:JOB on GitHub Actions, else the hostname)",
    )
    .option("--label <k=v>", "an extra label; repeatable", collect, [] as string[])
    .option("--continue-file <file>", "touch this file to resume the job", DEFAULT_CONTINUE_FILE)
    .option(
      "--connect-timeout <dur>",
      "end the hold if nobody attached within this long",
      DEFAULT_CONNECT_TIMEOUT,
    )
    .option(
      "--session-ttl <dur>",
      "once someone attached, end the hold at the latest this long after",
      DEFAULT_SESSION_TTL,
    )
    .addOption(
      new Option("--on-timeout <what>", "after a timeout: continue (exit 0) or fail (exit 1)")
        .choices(["continue", "fail"] as const)
        .default("continue" as const),
    )
    .addOption(
      new Option("--reminder <dur>", "interval of the reminder lines").default("30s").hideHelp(),
    )
    .addOption(
      new Option("--poll <dur>", "how often the continue file is checked").default("250ms")
        .hideHelp(),
    )
    .addHelpText("after", HOLD_HELP)
    .action(act(async (opts, cmd) => {
      const g = globals(cmd);
      const connectTimeoutMs = parseDuration(opts.connectTimeout, "--connect-timeout");
      const sessionTtlMs = parseDuration(opts.sessionTtl, "--session-ttl");
      const reminderMs = Math.max(1000, parseDuration(opts.reminder, "--reminder"));
      const pollMs = Math.max(1, parseDuration(opts.poll, "--poll"));
      const extra = parsePairs(opts.label, "--label");
      const relay = agentRelay(
        g,
        "hold",
        "set TETHER_RELAY (on GitHub Actions: from the repository secret TETHER_RELAY)",
      );
      const enrollKey = takeEnv("TETHER_AGENT_KEY");
      if (!enrollKey) {
        throw new TetherError("not_configured", "no agent key for the hold", {
          hint: "set TETHER_AGENT_KEY to an agent key (on GitHub Actions: from the repository " +
            "secret TETHER_AGENT_KEY; create one with `tether relay keys create --role agent`)",
        });
      }
      const id = ciIdentity((k) => Deno.env.get(k), hostname());
      const name = opts.name || id.name;
      const github = id.provider === "github";
      // The hold (an agent) and inject (a YAML library) load only when used (BENCHMARKS item 4).
      const { runHold } = await import("../ci/hold.ts");
      const outcome = await runHold({
        relay,
        enrollKey,
        caFile: g.caFile || Deno.env.get("TETHER_CA_FILE") || undefined,
        dialTimeoutMs: dialTimeoutMs(g),
        insecure: g.insecure,
        name,
        labels: { ...id.labels, ...extra },
        continueFile: opts.continueFile,
        connectTimeoutMs,
        sessionTtlMs,
        onTimeout: opts.onTimeout,
        reminderMs,
        pollMs,
        // Attached shells and execs start where the job works: its checkout.
        workdir: Deno.env.get("GITHUB_WORKSPACE") || Deno.env.get("CI_PROJECT_DIR") ||
          Deno.cwd(),
      }, {
        ready(info: ReadyInfo) {
          console.log(`${READY_MARKER}${JSON.stringify(info)}`);
          if (github) {
            // An annotation on the run's page, so the way in is not lost in the log.
            console.log(`::notice title=tether ci hold::${
              escapeCommand(
                `${info.name} is held. Attach: ${info.attach} — resume: touch ${
                  shellQuote(info.continue_file)
                }`,
              )
            }`);
          }
        },
        say: (line) => console.error(line),
      }, untilSignal());
      console.error(`tether: ${outcome.message}`);
      return outcome.code;
    }));
}

/** Escapes the data of a GitHub Actions workflow command. */
function escapeCommand(s: string): string {
  return s.replaceAll("%", "%25").replaceAll("\r", "%0D").replaceAll("\n", "%0A");
}

// ------------------------------------------------------------------ ci attach

function registerAttach(ci: Command, act: Act) {
  ci.command("attach")
    .description(
      "wait for a held CI job, then attach to it (TTY) or print how to connect (no TTY, --json)",
    )
    .argument("<machine>", "machine id, name, or job key (`ci.yml:build` answers to `build`)")
    .option("--wait <dur>", "how long to wait for the hold to be online", DEFAULT_ATTACH_WAIT)
    .option("--new", "start a new session instead of joining the hold's running one")
    .addHelpText("after", ATTACH_HELP)
    .action(act(async (query, opts, cmd) => {
      const g = globals(cmd);
      const waitMs = parseDuration(opts.wait, "--wait");
      const cfg = clientConfig(g);
      // Attach only when a person is there: stdin, stdout and stderr on a terminal.
      const interactive = g.interactive && Deno.stdout.isTerminal();
      let client = await RelayClient.connect(cfg);
      const progress = g.json
        ? undefined
        : Deno.stderr.isTerminal()
        ? new Spinner(query, waitMs)
        : new ProgressLines(query, waitMs);
      let target: MachineView;
      const started = Date.now();
      try {
        target = await waitForHold(
          async () => {
            if (!client.conn.isOpen) client = await RelayClient.connect(cfg);
            return await client.machines({ retired: true });
          },
          query,
          { waitMs, onProgress: (p) => progress?.update(p) },
        );
      } finally {
        progress?.stop();
      }
      const info = connectionInfo(target, cfg.relay);
      if (!g.json) {
        const waited = Date.now() - started;
        say(
          `found ${target.name} (id ${target.id.slice(0, 8)})${
            waited >= 1000 ? ` after ${formatDuration(waited)}` : ""
          }`,
        );
      }
      if (!interactive) {
        client.close();
        printConnectionInfo(info, g.json);
        return 0;
      }
      return await attachToHold(cfg, client, target, !!opts.new, info);
    }));
}

async function attachToHold(
  cfg: ClientConfig,
  client: RelayClient,
  target: MachineView,
  fresh: boolean,
  info: HoldConnectionInfo,
): Promise<number> {
  const touch = `touch ${shellQuote(continueFileOf(target))}`;
  const status = say;
  try {
    const session = fresh ? undefined : pickSession(await client.sessions(target.id, "pty"));
    const held = holdAwareTerminal(processTerminal());
    const outcome = await attachWithBanner(cfg, client, target, {
      session,
      term: held.term,
      afterAttached: (say) => say(`Run '${touch}' to resume the workflow`),
    });
    client.close();
    const ended = held.ended();
    if (ended) {
      const why = ended.slice(HOLD_ENDED_NOTICE.length).replace(/^:\s*/, "");
      status(`\nthe CI hold on ${target.name} ended: ${why}; detached`);
      return 0;
    } else if (outcome.kind === "detach") {
      status(
        `\ndetached from session ${outcome.session} on ${target.name}; the job stays held. ` +
          `Reattach: tether ci attach ${shellQuote(target.name)} — resume the job: ${info.resume}`,
      );
      return 0;
    } else {
      status(
        `\nsession ${outcome.session} on ${target.name} ended (exit ${outcome.code}); ` +
          `the job stays held — resume it: ${info.resume}`,
      );
      return outcome.code;
    }
  } catch (e) {
    // Found online a moment ago, offline now: the job ended before we got in.
    if (e instanceof TetherError && e.code === "machine_offline") throw gone(target);
    throw e;
  }
}

function printConnectionInfo(info: HoldConnectionInfo, json: boolean): void {
  if (json) {
    printJson(info);
    return;
  }
  console.log(
    [
      `machine  ${visible(info.name)} (${info.machine_id})`,
      `relay    ${info.relay}`,
      `connect  ${info.connect}`,
      `resume   ${info.resume}`,
      `         (or, attached: touch ${shellQuote(info.continue_file)})`,
    ].join("\n"),
  );
}

const FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏";

/** A one-line spinner on a terminal's stderr: what we wait for, and for how long so far. */
class Spinner {
  private frame = 0;
  private readonly start = Date.now();
  private last: WaitProgress | undefined;
  private readonly timer: ReturnType<typeof setInterval>;

  constructor(private readonly query: string, private readonly waitMs: number) {
    this.timer = setInterval(() => this.draw(), 100);
    this.draw();
  }

  update(p: WaitProgress) {
    this.last = p;
  }

  private draw() {
    const p = this.last;
    const elapsed = formatDuration(Math.floor((Date.now() - this.start) / 1000) * 1000);
    let note = "";
    if (p?.relayError) note = ` · relay unreachable, retrying`;
    else if (p?.ended) {
      note = ` · the last one, ${p.ended.name}, ended ${formatAge(p.ended.heartbeat_age_ms)} ago`;
    }
    const line = `${FRAMES[this.frame++ % FRAMES.length]} waiting for a CI hold (ci=hold) ` +
      `matching '${this.query}' · ${elapsed} of ${formatDuration(this.waitMs)}${note}`;
    Deno.stderr.writeSync(enc.encode(`\r\x1b[2K${line}`));
  }

  stop() {
    clearInterval(this.timer);
    Deno.stderr.writeSync(enc.encode("\r\x1b[2K"));
  }
}

/** Without a terminal: one line when the wait starts, one about an ended hold. */
class ProgressLines {
  private said = false;

  constructor(private readonly query: string, private readonly waitMs: number) {}

  update(p: WaitProgress) {
    if (this.said || p.polls === 0) return;
    this.said = true;
    say(
      `waiting up to ${formatDuration(this.waitMs)} for a CI hold matching '${this.query}'`,
    );
    if (p.ended) {
      say(
        `  (the last one, ${p.ended.name} (${p.ended.id.slice(0, 8)}), went offline ${
          formatAge(p.ended.heartbeat_age_ms)
        } ago: its job has ended; waiting for a new one)`,
      );
    }
  }

  stop() {}
}

// ------------------------------------------------------------------ ci inject

function registerInject(ci: Command, act: Act) {
  ci.command("inject")
    .description(
      "add a `tether ci hold` step after step N of a job in a GitHub Actions workflow, " +
        "keeping comments and layout (to stdout, or -o FILE)",
    )
    .argument("<workflow>", "the workflow file, e.g. .github/workflows/ci.yml")
    .requiredOption(
      "--after-step <n>",
      "hold after this many steps (1-based: 2 = after the second step; 0 = before the first)",
    )
    .option("--job <key>", "the job's key (needed when the workflow has several jobs)")
    .option("-o, --output <file>", "write here (may be the workflow itself) instead of stdout")
    .option(
      "--if <expr>",
      `the step's condition (default ${DEFAULT_HOLD_CONDITION}: after success or failure, ` +
        "not after a cancel); '' for none",
    )
    .addHelpText("after", INJECT_HELP)
    .action(act(async (workflow, opts, cmd) => {
      const g = globals(cmd);
      const { injectHoldStep, parseAfterStep } = await import("../ci/inject.ts");
      const afterStep = parseAfterStep(opts.afterStep);
      let source: string;
      try {
        source = await Deno.readTextFile(workflow);
      } catch (e) {
        const why = e instanceof Deno.errors.NotFound ? "no such file" : (e as Error).message;
        throw usage(`cannot read ${workflow}: ${why}`, "pass the path of a workflow file");
      }
      // Everything that can go wrong is thrown here, before anything is written.
      const r = injectHoldStep(source, {
        afterStep,
        job: opts.job,
        fileName: workflow,
        condition: opts.if,
      });
      const out = opts.output && opts.output !== "-" ? opts.output : undefined;
      if (out) await writeAtomically(out, r.output);
      else if (!g.json) await writeAll(Deno.stdout, enc.encode(r.output));
      if (g.json) {
        printJson({
          job: r.job,
          step: r.stepIndex + 1,
          steps: r.stepCount,
          line: r.line,
          layout_preserved: r.layoutPreserved,
          output: out ?? null,
          ...(out ? {} : { workflow: r.output }),
        });
        return;
      }
      console.error(describeInjection(r, out ?? "stdout"));
    }));
}

function describeInjection(r: InjectResult, where: string): string {
  const at = where === "stdout" ? `line ${r.line} of the output` : `${where}:${r.line}`;
  let s = `tether: added the hold step to job "${r.job}" as step ${
    r.stepIndex + 1
  } of ${r.stepCount} (${at})`;
  if (!r.layoutPreserved) s += "; the file had to be re-serialized, check the diff";
  return s;
}

/** Writes through a temp file and a rename, keeping the mode of a file it replaces. */
async function writeAtomically(path: string, text: string): Promise<void> {
  let mode: number | undefined;
  try {
    mode = (await Deno.stat(path)).mode ?? undefined;
  } catch { /* a new file */ }
  const tmp = join(dirname(path), `.${crypto.randomUUID().slice(0, 8)}.tether-inject.tmp`);
  try {
    await Deno.writeTextFile(tmp, text, mode !== undefined ? { mode: mode & 0o7777 } : {});
    if (mode !== undefined) await Deno.chmod(tmp, mode & 0o7777);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw usage(`cannot write ${path}: ${(e as Error).message}`, "check the path and permissions");
  }
}
