/** `tether machines`: the workspace's machines, as a table or JSON. */
import type { Command } from "@commander-js/extra-typings";
import { matchesSelector } from "../client/select.ts";
import { formatAge } from "../common/duration.ts";
import { type Act, collect, type Globals, globals, parsePairs, withClient } from "./context.ts";
import { printJson, table } from "./output.ts";
import { resolveMachine } from "../client/resolve.ts";
import { visible } from "../common/text.ts";
import { TetherError, usage } from "../common/errors.ts";
import { KnownMachines, pinName } from "../client/known_machines.ts";
import type { MachineView } from "../client/relay_client.ts";
import { decodeKey, fingerprint } from "../protocol/e2e.ts";

/** The fingerprint of a machine's key as the relay lists it. */
function keyFingerprint(key: string | undefined): string | undefined {
  const pub = key ? decodeKey(key) : undefined;
  return pub ? fingerprint(pub) : undefined;
}

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

  machines.command("trust")
    .description(
      "pin a machine's end-to-end key (SHA256:… from its agent's log or `tether machines`), " +
        "ahead of first use or after it changed",
    )
    .argument("<machine>", "machine id, name, hostname or unique prefix (or a name not yet seen)")
    .argument("<fingerprint>", "the key's fingerprint, SHA256:…")
    .action(act(async (query, fp, _opts, cmd) => {
      const g = globals(cmd);
      if (!/^SHA256:[A-Za-z0-9+/]{43}$/.test(fp)) {
        throw usage(`not a key fingerprint: ${fp}`, "it looks like SHA256: and 43 characters");
      }
      const r = await withClient(g, async (client) => {
        let name = query;
        let pin = query;
        let current: string | undefined;
        try {
          const m = resolveMachine(await client.machines(), query);
          name = m.name;
          pin = pinName(m);
          current = keyFingerprint(m.key);
        } catch (e) {
          // Ahead of time: a machine the relay does not know yet is pinned by the name given.
          if (!(e instanceof TetherError && e.code === "machine_not_found")) throw e;
        }
        const pins = new KnownMachines(client.configDir);
        const before = pins.pinned(pin);
        pins.pin(pin, fp);
        return { name, before, current };
      });
      if (g.json) {
        printJson({
          machine: r.name,
          fingerprint: fp,
          replaced: r.before && r.before !== fp ? r.before : null,
          matches_current: r.current === undefined ? null : r.current === fp,
        });
        return;
      }
      console.log(visible(`pinned ${r.name} to ${fp}`));
      if (r.current !== undefined && r.current !== fp) {
        console.error(visible(
          `warning: ${r.name} presents ${r.current} now; streams to it are refused until it ` +
            `presents ${fp}`,
        ));
      }
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
  const { all, trust } = await withClient(g, async (client) => {
    const all = await client.machines();
    const pins = new KnownMachines(client.configDir);
    const trust = (m: MachineView) => {
      const fp = keyFingerprint(m.key);
      if (!fp) return "new";
      const c = pins.check(m, fp);
      return c.status === "ok" ? "pinned" : c.status;
    };
    return { all, trust };
  });
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
      fingerprint: keyFingerprint(m.key) ?? null,
      key: m.key ?? null,
      // Against this client's pins: never seen, the same key, or another key than pinned.
      trust: trust(m),
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
    ["ID", "NAME", "HOSTNAME", "ONLINE", "HEARTBEAT", "LABELS", "SESSIONS", "KEY"],
    ms.map((m) => [
      m.id.slice(0, 8),
      m.name,
      m.hostname,
      m.online ? "yes" : "no",
      formatAge(m.heartbeat_age_ms),
      Object.entries(m.labels).map(([k, v]) => `${k}=${v}`).join(",") || "-",
      String(m.sessions),
      (keyFingerprint(m.key) ?? "-") + (trust(m) === "changed" ? " (CHANGED)" : ""),
    ]),
  ));
}
