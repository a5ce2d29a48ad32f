/** `tether machines`: the workspace's machines, as a table or JSON. */
import type { Command } from "@commander-js/extra-typings";
import { matchesSelector } from "../client/select.ts";
import { formatAge } from "../common/duration.ts";
import { type Act, collect, type Globals, globals, parsePairs, withClient } from "./context.ts";
import { printJson, table } from "./output.ts";
import { resolveMachine } from "../client/resolve.ts";
import { visible } from "../common/text.ts";

export function registerMachines(program: Command, act: Act) {
  const machines = program.command("machines")
    .description("list machines: id, name, hostname, online, heartbeat age, labels, sessions")
    .option(
      "-l, --selector <k=v>",
      "only machines with this label; repeatable",
      collect,
      [] as string[],
    )
    .action(act(async (opts, cmd) => {
      await listMachines(globals(cmd), parsePairs(opts.selector, "--selector"));
    }));

  machines.command("rm")
    .description("remove an offline machine from the registry (its agent must enroll again)")
    .argument("<machine>", "machine id, name, hostname or unique prefix")
    .action(act(async (query, _opts, cmd) => {
      const g = globals(cmd);
      const r = await withClient(g, async (client) => {
        const target = resolveMachine(await client.machines(), query);
        return await client.removeMachine(target.id);
      });
      if (g.json) printJson({ removed: r.removed, name: r.name });
      else console.log(visible(`removed machine ${r.name} (${r.removed})`));
    }));
}

/** Prints the machines (table or JSON); shared by `machines` and `connect --list`. */
export async function listMachines(g: Globals, selector: Record<string, string>): Promise<void> {
  const all = await withClient(g, (client) => client.machines());
  const ms = all.filter((m) => matchesSelector(m, selector));
  if (g.json) {
    printJson(ms.map((m) => ({
      id: m.id,
      name: m.name,
      hostname: m.hostname,
      online: m.online,
      last_seen: m.last_seen,
      heartbeat_age_ms: m.heartbeat_age_ms,
      labels: m.labels,
      sessions: m.sessions,
      os: m.os,
      arch: m.arch,
      version: m.version,
    })));
    return;
  }
  if (ms.length === 0) {
    console.error(
      all.length === 0
        ? "no machines yet: start an agent with `tether agent run` (or `tether up`)"
        : "no machines match the selector",
    );
    return;
  }
  console.log(table(
    ["ID", "NAME", "HOSTNAME", "ONLINE", "HEARTBEAT", "LABELS", "SESSIONS"],
    ms.map((m) => [
      m.id.slice(0, 8),
      m.name,
      m.hostname,
      m.online ? "yes" : "no",
      formatAge(m.heartbeat_age_ms),
      Object.entries(m.labels).map(([k, v]) => `${k}=${v}`).join(",") || "-",
      String(m.sessions),
    ]),
  ));
}
