/** `tether connect [MACHINE]`: an interactive shell in a session that outlives the connection. */
import type { Command } from "@commander-js/extra-typings";
import { parseDetachKey } from "../client/attach.ts";
import { RelayClient } from "../client/relay_client.ts";
import { noMachineGiven, requirePrompt } from "../client/prompt_gate.ts";
import { machineLabel } from "../client/prompt_picker.ts";
import { loadPrompts } from "../client/select.ts";
import { formatAge } from "../common/duration.ts";
import { machineOffline, TetherError, usage } from "../common/errors.ts";
import { type Act, clientConfig, collect, globals, parsePairs } from "./context.ts";
import { authFor, chooseMachine, chooseSession } from "./target.ts";
import { attachWithBanner } from "./attach_banner.ts";
import { listMachines } from "./machines.ts";
import { say } from "./output.ts";

export function registerConnect(program: Command, act: Act) {
  program.command("connect")
    .description(
      "attach to a shell on a machine (Ctrl-D detaches, or --detach-key; the session keeps running)",
    )
    .argument("[machine]", "machine id, name, hostname or unique prefix")
    .option("--session <id>", "join this session")
    .option("--new", "start a new session even if one is running")
    .option("--read-only", "watch only: the agent drops your input")
    .option("--list", "list machines (same as `tether machines`)")
    .option("-t, --tty", "attach even though stdin is not a terminal (its end detaches)")
    .option(
      "-l, --selector <k=v>",
      "pick by label; repeatable, all must match",
      collect,
      [] as string[],
    )
    .option("--first", "with -l: take the first online match instead of asking")
    .option("--online", "consider online machines only when resolving the name")
    .option("-y, --yes", "do not ask for confirmation after picking a machine")
    .option("--password <password>", "the machine's password (also: stored, TETHER_PASSWORD)")
    .option(
      "--detach-key <key>",
      "the key that detaches: ctrl-X or ^X (e.g. ctrl-]), or none to send Ctrl-D to the " +
        "remote as EOF (then leave by ending the remote shell)",
      "ctrl-d",
    )
    .action(act(async (machine, opts, cmd) => {
      const g = globals(cmd);
      if (opts.list) {
        await listMachines(g, parsePairs(opts.selector, "--selector"));
        return;
      }
      if (opts.session && opts.new) throw usage("--session and --new exclude each other");
      const detachKey = parseDetachKey(opts.detachKey);
      if (detachKey === undefined) {
        throw usage(
          `invalid --detach-key '${opts.detachKey}'`,
          "use ctrl-X or ^X with a letter or one of @[\\]^_ (e.g. ctrl-]), or none",
        );
      }
      if (g.json) {
        throw new TetherError(
          "interactive_required",
          "connect is interactive and has no JSON form",
          {
            hint:
              "use `tether exec --json` or `--events` for programs, or `tether connect --list --json`",
          },
        );
      }
      if (!Deno.stdin.isTerminal() && !opts.tty) {
        // Typing blind into a shell and reporting success is no use to a program.
        throw new TetherError("interactive_required", "connect needs a terminal on stdin", {
          hint: "programs drive a remote process with `tether exec --stream MACHINE -- CMD`; " +
            "pass -t to attach anyway (the end of stdin detaches)",
        });
      }
      // Fail before dialing when a picker would be needed and cannot be shown.
      if (!machine && opts.selector.length === 0) requirePrompt(g, noMachineGiven());
      const cfg = clientConfig(g);
      const status = say;
      const client = await RelayClient.connect(cfg);
      const chosen = await chooseMachine(client, g, machine, opts);
      const target = chosen.machine;
      if (chosen.picked && !opts.yes) {
        const ok = await (await loadPrompts()).confirm(`Attach to ${machineLabel(target)}?`, {
          env: g,
          default: true,
        });
        if (!ok) {
          client.close();
          status("not attaching");
          return 1;
        }
      }
      say(`resolving ${machine ?? target.name} ... `, "");
      if (!target.online) {
        status("offline");
        throw machineOffline(target, formatAge(target.heartbeat_age_ms));
      }
      status(`ok (id ${target.id.slice(0, 8)}, online ${formatAge(target.heartbeat_age_ms)})`);

      let session = opts.session;
      if (!session && !opts.new) {
        const live = await client.sessions(target.id, "pty");
        if (live.length === 1) session = live[0].id;
        else if (live.length > 1) session = await chooseSession(g, target, live);
      }
      const outcome = await attachWithBanner(cfg, client, target, {
        session,
        readOnly: opts.readOnly,
        detachKey,
        auth: authFor(cfg, client, target, opts.password, g),
      });
      client.close();
      if (outcome.signal) {
        status(
          `\n${outcome.signal}: detached from session ${outcome.session} on ${target.name}; ` +
            `it keeps running. Reattach: tether connect ${target.name} --session ${outcome.session}`,
        );
        return outcome.code;
      } else if (outcome.kind === "detach") {
        status(
          `\ndetached from session ${outcome.session} on ${target.name}; it keeps running ` +
            `for the agent's grace window. Reattach: tether connect ${target.name} --session ${outcome.session}`,
        );
        return 0;
      }
      status(`\nsession ${outcome.session} on ${target.name} ended (exit ${outcome.code})`);
      return outcome.code;
    }, { failure: 255 }));
}
