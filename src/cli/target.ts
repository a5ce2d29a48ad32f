/** Picking the machine (and for connect, the session) a command acts on. */
import type { MachineView, RelayClient, SessionView, StreamAuth } from "../client/relay_client.ts";
import type { ClientConfig } from "../client/config.ts";
import { machineAuth } from "../client/machine_auth.ts";
import { loadPrompts, selectMachine } from "../client/select.ts";
import { interactiveRequired } from "../client/prompt_gate.ts";
import { formatAge } from "../common/duration.ts";
import type { Globals } from "./context.ts";
import { parsePairs } from "./context.ts";

export interface TargetFlags {
  selector?: string[];
  first?: boolean;
  online?: boolean;
}

/** Resolves MACHINE / `-l` / `--first` / the picker to one machine. */
export async function chooseMachine(
  client: RelayClient,
  g: Globals,
  query: string | undefined,
  flags: TargetFlags,
): Promise<{ machine: MachineView; picked: boolean }> {
  const selector = parsePairs(flags.selector ?? [], "--selector");
  const machines = await client.machines();
  const picked = !query && (Object.keys(selector).length === 0 || !flags.first);
  const machine = await selectMachine(machines, {
    query,
    selector,
    first: flags.first,
    online: flags.online,
    env: g,
  });
  return { machine, picked: picked && !query };
}

/** How commands answer the machine's password challenge (flag, stored, env, prompt). */
export function authFor(
  cfg: ClientConfig,
  client: RelayClient,
  target: MachineView,
  password: string | undefined,
  g: Globals,
): StreamAuth {
  return machineAuth({
    configDir: cfg.configDir,
    machineId: target.id,
    machineName: target.name,
    keyId: client.keyId,
    password,
    env: g,
  });
}

/** Which session to join: the only one, a picked one, or a refusal listing them. */
export async function chooseSession(
  g: Globals,
  target: MachineView,
  live: SessionView[],
): Promise<string> {
  const refusal = interactiveRequired(
    `${target.name} has ${live.length} sessions; say which one`,
    `pass --session ID (${live.map((s) => s.id).join(", ")}) or --new`,
  );
  const now = Date.now();
  return await (await loadPrompts()).pick(
    live.map((s) => ({
      value: s.id,
      cells: [
        s.id,
        s.command,
        `${s.clients} attached`,
        `created ${formatAge(now - Date.parse(s.created))} ago`,
        `idle ${formatAge(s.idle_ms)}`,
      ],
      short: s.id,
    })),
    {
      env: g,
      message: `Pick a session on ${target.name}`,
      headers: ["ID", "COMMAND", "CLIENTS", "CREATED", "IDLE"],
      refusal,
      action: "join",
      noun: "sessions",
    },
  );
}
