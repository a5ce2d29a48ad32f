/** `tether connect [MACHINE]`: an interactive shell in a session that outlives the connection. */
import type { Command } from "@commander-js/extra-typings";
import { attach, processTerminal } from "../client/attach.ts";
import { resolveClientConfig } from "../client/config.ts";
import { type MachineView, RelayClient, type SessionView } from "../client/relay_client.ts";
import { resolveMachine } from "../client/resolve.ts";
import { formatAge } from "../common/duration.ts";
import { TetherError, usage } from "../common/errors.ts";
import { globals, state } from "./context.ts";
import { listMachines } from "./machines.ts";

export function registerConnect(program: Command) {
  program.command("connect")
    .description("attach to a shell on a machine (Ctrl-D detaches; the session keeps running)")
    .argument("[machine]", "machine id, name, hostname or unique prefix")
    .option("--session <id>", "join this session")
    .option("--new", "start a new session even if one is running")
    .option("--read-only", "watch only: the agent drops your input")
    .option("--list", "list machines (same as `tether machines`)")
    .action(async (machine, opts, cmd) => {
      const g = globals(cmd);
      if (opts.list) {
        await listMachines(g, {});
        return;
      }
      state.failureCode = 255;
      if (opts.session && opts.new) throw usage("--session and --new exclude each other");
      if (!machine) {
        throw new TetherError("interactive_required", "no machine given", {
          hint: "pass a machine name or id, or list them with `tether connect --list`",
        });
      }
      const cfg = resolveClientConfig(g);
      const status = (line: string) => console.error(line);
      const client = await RelayClient.connect(cfg);
      Deno.stderr.writeSync(new TextEncoder().encode(`resolving ${machine} ... `));
      let target: MachineView;
      try {
        target = resolveMachine(await client.machines(), machine);
      } catch (e) {
        status("failed");
        throw e;
      }
      if (!target.online) {
        status("offline");
        throw new TetherError(
          "machine_offline",
          `machine ${target.name} (${target.id.slice(0, 8)}) is offline`,
          {
            hint: `last seen ${
              formatAge(target.heartbeat_age_ms)
            } ago; start its agent or pick another machine`,
          },
        );
      }
      status(`ok (id ${target.id.slice(0, 8)}, online ${formatAge(target.heartbeat_age_ms)})`);

      let session = opts.session;
      if (!session && !opts.new) {
        const live = await client.sessions(target.id);
        if (live.length === 1) session = live[0].id;
        else if (live.length > 1) throw chooseSession(target, live);
      }
      Deno.stderr.writeSync(new TextEncoder().encode("dialing relay ... "));
      const term = processTerminal();
      let announced = false;
      const outcome = await attach(
        cfg,
        client,
        {
          machineId: target.id,
          machineName: target.name,
          session,
          readOnly: opts.readOnly,
        },
        term,
        {
          onStarted(id) {
            announced = true;
            status("ok");
            status(`auth ... ok (session ${id}${session ? ", joined" : ", new"})`);
            status(
              opts.readOnly
                ? "attached read-only — Ctrl-D to disconnect; your input is not sent"
                : "attached — Ctrl-D to disconnect, Ctrl-C is sent to the remote",
            );
          },
        },
      ).catch((e) => {
        if (!announced) status("failed");
        throw e;
      });
      client.close();
      if (outcome.kind === "detach") {
        status(
          `\ndetached from session ${outcome.session} on ${target.name}; it keeps running ` +
            `for the agent's grace window. Reattach: tether connect ${target.name} --session ${outcome.session}`,
        );
        state.exitCode = 0;
      } else {
        status(`\nsession ${outcome.session} on ${target.name} ended (exit ${outcome.code})`);
        state.exitCode = outcome.code;
      }
    });
}

function chooseSession(target: MachineView, live: SessionView[]): TetherError {
  return new TetherError(
    "interactive_required",
    `${target.name} has ${live.length} sessions; say which one`,
    {
      hint: `pass --session ID (${live.map((s) => s.id).join(", ")}) or --new`,
      candidates: live.map((s) => ({
        id: s.id,
        name: `${s.command} (${s.clients} attached)`,
        online: true,
      })),
    },
  );
}
