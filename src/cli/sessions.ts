/** `tether sessions [MACHINE]` and `tether sessions kill ID`. */
import type { Command } from "@commander-js/extra-typings";
import type { SessionView } from "../client/relay_client.ts";
import { resolveMachine } from "../client/resolve.ts";
import { formatAge } from "../common/duration.ts";
import { TetherError } from "../common/errors.ts";
import { type Act, collect, globals, parsePairs, withClient } from "./context.ts";
import { matchesSelector } from "../client/select.ts";
import { printJson, table } from "./output.ts";
import { visible } from "../common/text.ts";
import { SHARE_KEY_PREFIX } from "../protocol/share.ts";

/** A session's or an exec's state, as the table shows it. */
function stateOf(s: SessionView): string {
  if (s.kind === "pty") return s.attached ? "attached" : "detached";
  switch (s.state) {
    case "exited":
      return s.signal ? `killed (${s.signal})` : `exited ${s.exit_code}`;
    case "timeout":
      return "timed out";
    case "lost":
      return "lost";
    default:
      return "running";
  }
}

/** How many are attached, and how many of them are browser pages of share links. */
function clientsOf(s: SessionView): string {
  const pages = (s.participants ?? []).filter((p) => p.key.startsWith(SHARE_KEY_PREFIX)).length;
  return pages ? `${s.clients} (${pages} browser)` : String(s.clients);
}

export function registerSessions(program: Command, act: Act) {
  const sessions = program.command("sessions")
    .description("list sessions and execs (all machines, or one), or end one")
    .argument("[machine]", "only this machine's sessions")
    .option(
      "-l, --selector <k=v>",
      "only machines with this label; repeatable",
      collect,
      [] as string[],
    )
    .action(act(async (machine, opts, cmd) => {
      const g = globals(cmd);
      const selector = parsePairs(opts.selector, "--selector");
      const list = await withClient(g, async (client) => {
        const machines = (await client.machines()).filter((m) => matchesSelector(m, selector));
        const machineId = machine ? resolveMachine(machines, machine).id : undefined;
        const wanted = new Set(machines.map((m) => m.id));
        return (await client.sessions(machineId)).filter((s) => wanted.has(s.machine_id));
      });
      if (g.json) {
        printJson(list);
        return;
      }
      if (list.length === 0) {
        console.error("no sessions");
        return;
      }
      const now = Date.now();
      console.log(table(
        ["ID", "MACHINE", "KIND", "CREATED", "CLIENTS", "STATE", "IDLE", "COMMAND"],
        list.map((s) => [
          s.id,
          s.machine,
          s.kind,
          `${formatAge(now - Date.parse(s.created))} ago`,
          clientsOf(s),
          stateOf(s),
          s.kind === "pty" ? formatAge(s.idle_ms) : "-",
          s.command,
        ]),
      ));
    }));

  sessions.command("kill")
    .description("end a session or a running exec, and its processes")
    .argument("<id>", "session id (or a unique prefix)")
    .action(act(async (id, _opts, cmd) => {
      const g = globals(cmd);
      const s = await withClient(g, async (client) => {
        const hits = (await client.sessions()).filter((s) => s.id === id || s.id.startsWith(id));
        if (hits.length !== 1) {
          throw new TetherError(
            "session_not_found",
            hits.length ? `'${id}' matches ${hits.length} sessions` : `no session '${id}'`,
            { hint: "list sessions with `tether sessions`" },
          );
        }
        await client.killSession(hits[0].machine_id, hits[0].id);
        return hits[0];
      });
      if (g.json) printJson({ killed: s.id, machine: s.machine });
      else console.log(visible(`ended session ${s.id} on ${s.machine}`));
    }));
}
