/**
 * Choosing the machine a command acts on, from what the user gave: a name
 * (the resolver), a label selector (`-l k=v`, all must match), or nothing
 * (the picker on a TTY). Several matches of a selector take the first online
 * one with `--first`, open the picker on a TTY, and fail otherwise — never a
 * silent pick.
 */
import { TetherError } from "../common/errors.ts";
import { noMachineGiven, type PromptEnv, requirePrompt, selectorAmbiguous } from "./prompt_gate.ts";
import type { MachineView } from "./relay_client.ts";
import { resolveMachine } from "./resolve.ts";

export interface SelectRequest {
  query?: string;
  selector?: Record<string, string>;
  first?: boolean;
  /** `--online`: consider online machines only. */
  online?: boolean;
  env: PromptEnv;
}

/**
 * The prompt library (@inquirer) costs ~50 ms of start-up, so it is loaded
 * only when a prompt will really be shown. The specifier is a literal, so
 * `deno compile` and `deno bundle` still include it.
 */
export function loadPrompts(): Promise<typeof import("./prompts.ts")> {
  return import("./prompts.ts");
}

export function matchesSelector(m: MachineView, selector: Record<string, string>): boolean {
  return Object.entries(selector).every(([k, v]) => m.labels[k] === v);
}

export function selectorText(selector: Record<string, string>): string {
  return Object.entries(selector).map(([k, v]) => `${k}=${v}`).join(",");
}

/** Online first, then by name, then id: the stable order `--first` uses. */
export function byPreference(a: MachineView, b: MachineView): number {
  return Number(b.online) - Number(a.online) || a.name.localeCompare(b.name) ||
    a.id.localeCompare(b.id);
}

/** The machine to use, or a TetherError. The picker shows only where prompting is allowed. */
export async function selectMachine(
  machines: MachineView[],
  req: SelectRequest,
): Promise<MachineView> {
  const pick = async (ms: MachineView[], refusal: TetherError) =>
    (await loadPrompts()).pickMachine(ms, { env: req.env, refusal });
  const selector = req.selector ?? {};
  const hasSelector = Object.keys(selector).length > 0;
  const pool = machines.filter((m) =>
    (!hasSelector || matchesSelector(m, selector)) && (!req.online || m.online)
  );
  if (req.query) return resolveMachine(pool, req.query, { onlineFlag: true });
  if (!hasSelector) {
    requirePrompt(req.env, noMachineGiven());
    return await pick(machines, noMachineGiven());
  }
  const sel = selectorText(selector);
  if (pool.length === 0) {
    throw new TetherError("machine_not_found", `no machine has labels ${sel}`, {
      hint: "see the labels with `tether machines`",
    });
  }
  if (pool.length === 1) return pool[0];
  const sorted = [...pool].sort(byPreference);
  if (req.first) {
    if (!sorted[0].online) {
      throw new TetherError("machine_offline", `every machine with labels ${sel} is offline`, {
        hint: "start one of their agents, or pick another selector",
      });
    }
    return sorted[0];
  }
  const refusal = selectorAmbiguous(sorted, sel);
  requirePrompt(req.env, refusal);
  return await pick(sorted, refusal);
}
