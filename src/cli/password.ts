/** `tether password set` (on the agent's host) and `tether password save MACHINE` (client). */
import { visible } from "../common/text.ts";
import type { Command } from "@commander-js/extra-typings";
import { clearPassword, setPassword } from "../agent/password.ts";
import { savePassword } from "../client/machine_auth.ts";
import { passwordRequired } from "../client/prompt_gate.ts";
import { resolveMachine } from "../client/resolve.ts";
import { loadPrompts } from "../client/select.ts";
import { TetherError } from "../common/errors.ts";
import { defaultAgentStateDir } from "../common/paths.ts";
import { type Act, clientConfig, type Globals, globals, withClient } from "./context.ts";
import { printJson } from "./output.ts";

/** A password from a terminal prompt (asked twice when `confirm`), or from piped stdin. */
async function readPassword(g: Globals, label: string, confirm: boolean): Promise<string> {
  if (!Deno.stdin.isTerminal()) {
    const text = new TextDecoder().decode(await new Response(Deno.stdin.readable).bytes());
    const pw = text.replace(/\r?\n$/, "");
    if (!pw) {
      throw new TetherError("password_required", "no password on stdin", {
        hint: `pipe it in: printf '%s' "$PW" | tether password ${label}`,
      });
    }
    return pw;
  }
  const refusal = passwordRequired();
  const { promptPassword } = await loadPrompts();
  const pw = await promptPassword("New password", { env: g, refusal });
  if (confirm) {
    const again = await promptPassword("Repeat it", { env: g, refusal });
    if (again !== pw) throw new TetherError("password_invalid", "the two passwords differ");
  }
  return pw;
}

export function registerPassword(program: Command, act: Act) {
  const password = program.command("password").description("machine passwords");

  password.command("set")
    .description("set this machine's password (agent host; asked on a TTY or read from stdin)")
    .option("--state-dir <dir>", "the agent's state dir")
    .option("--clear", "remove the password")
    .action(act(async (opts, cmd) => {
      const g = globals(cmd);
      const dir = opts.stateDir || defaultAgentStateDir();
      if (opts.clear) {
        const removed = clearPassword(dir);
        if (g.json) printJson({ state_dir: dir, password: false, removed });
        else console.log(removed ? "password removed" : "no password was set");
        return;
      }
      await setPassword(dir, await readPassword(g, "set", true));
      if (g.json) printJson({ state_dir: dir, password: true });
      else {
        console.log(`password set in ${dir}; every exec and attach must now pass it`);
      }
    }));

  password.command("save")
    .description("store a machine's password for this client (config dir, mode 0600)")
    .argument("<machine>", "machine id, name, hostname or unique prefix")
    .option("--clear", "forget the stored password")
    .action(act(async (machine, opts, cmd) => {
      const g = globals(cmd);
      const cfg = clientConfig(g);
      const target = await withClient(g, async (c) => resolveMachine(await c.machines(), machine));
      const pw = opts.clear ? null : await readPassword(g, `save ${machine}`, false);
      savePassword(cfg.configDir, target.id, pw);
      if (g.json) printJson({ machine: target.id, name: target.name, saved: pw !== null });
      else {console.log(
          visible(
            pw === null
              ? `forgot the password of ${target.name}`
              : `saved the password of ${target.name}`,
          ),
        );}
    }));
}
